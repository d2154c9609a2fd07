"""charge_overhead=true: each trial also costs its ask() and orchestration wall time, with
every executor, and a resumed study replays it."""

from __future__ import annotations

import csv

import pytest

from tests.helpers import EXECUTOR_CASES, EXECUTORS, journal, run_study


@pytest.mark.parametrize("executor", EXECUTOR_CASES)
def test_overhead_is_charged_recorded_and_replayed(prefect_harness, tmp_path, executor):
    args = [f"study=oh-{executor}", "charge_overhead=true", "max_trials=5", *EXECUTORS[executor]]
    result = run_study(tmp_path, *args)
    records = journal(tmp_path, f"oh-{executor}")
    assert len(records) == 5
    for r in records:
        wall = r["told_at"] - r["asked_at"]
        # the ask, plus the trial's wall time outside its (simulated) stage costs
        assert r["ask_seconds"] <= r["overhead"] <= r["ask_seconds"] + wall + 1e-6
        assert r["overhead"] > 0
    spent = sum(sum(r["costs"].values()) + r["overhead"] for r in records)
    assert result.spent == pytest.approx(spent)
    with open(tmp_path / "out" / f"oh-{executor}" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(row["cost.overhead"]) for row in rows] == pytest.approx(
        [r["overhead"] for r in records]
    )
    assert float(rows[-1]["cumulative_cost"]) == pytest.approx(spent, abs=1e-5)
    # The same command again resumes the finished study: the journal's overheads count.
    again = run_study(tmp_path, *args)
    assert again.spent == pytest.approx(result.spent)


def test_overhead_is_off_by_default(prefect_harness, tmp_path):
    result = run_study(tmp_path, "study=plain", "max_trials=3")
    records = journal(tmp_path, "plain")
    assert all(r["overhead"] == 0.0 for r in records)
    assert result.spent == pytest.approx(sum(sum(r["costs"].values()) for r in records))
