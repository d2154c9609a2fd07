"""Failing stages and bad results: retried, recorded as failed with their cost, avoided."""

from __future__ import annotations

import math

import pytest

from tests.helpers import EXECUTOR_CASES, EXECUTORS, journal, run_study


@pytest.mark.slow
@pytest.mark.parametrize("executor", EXECUTOR_CASES)
def test_flaky_stage_is_retried_and_nan_objective_is_a_failed_trial(
    prefect_harness, tmp_path, executor
):
    flaky = tmp_path / "flaky"
    flaky.mkdir()
    result = run_study(
        tmp_path,
        *EXECUTORS[executor],
        "study=faults",
        "budget=45",
        "n_init=4",
        "retries=1",
        "pipeline.target=tests.flows.crashy.faulty_pipeline",
        f"+pipeline.kwargs.flaky_dir={flaky}",
        "+pipeline.kwargs.nan_above=0.0",
    )
    records = journal(tmp_path, "faults")
    # Every `train` computation failed once (a marker per key) and the retry healed it.
    computed = {
        r["keys"]["train"]
        for r in records
        if r["state"] == "complete" and "train" not in r["cached"]
    }
    assert computed and computed <= {p.name for p in flaky.iterdir()}
    assert not [r for r in records if r["error"] and "flaky" in r["error"]]
    # A NaN objective is a failed trial with its cost counted; the study went on.
    bad = [r for r in records if r["state"] == "failed"]
    assert bad and all(r["error"] == "objective is nan" for r in bad)
    # ... blamed on the last stage, whose output it is.
    assert all(r["reason"] == "objective is nan" and r["failed_stage"] == "finetune" for r in bad)
    assert all(r["objective"] is None and math.isfinite(sum(r["costs"].values())) for r in bad)
    assert all(r["params"]["finetune"]["x0"] > 0.0 for r in bad)
    assert records[-1]["number"] > bad[0]["number"]
    assert result.spent >= 45.0
    assert math.isclose(result.spent, sum(sum(r["costs"].values()) for r in records))


@pytest.mark.parametrize("executor", EXECUTOR_CASES)
def test_a_stage_failing_every_time_stops_the_study_after_n_in_a_row(
    prefect_harness, tmp_path, executor
):
    from flows.study import StudyFailed

    try:
        run_study(
            tmp_path,
            *EXECUTORS[executor],
            "study=always",
            "max_failures_in_a_row=3",
            "+pipeline.kwargs.fail_stage=prep",
            "+pipeline.kwargs.fail_above=-100",
        )
    except StudyFailed as exc:
        message = str(exc)
    else:
        raise AssertionError("the study should have stopped")
    assert "3 trials failed in a row (max_failures_in_a_row)" in message
    assert "injected failure" in message and "\n" not in message
    # Trials in flight when the third failure came are told too (they were running).
    records = journal(tmp_path, "always")
    states = [r["state"] for r in records]
    assert set(states) == {"failed"}
    # Each says where and why, with the stage function's traceback.
    for r in records:
        assert r["failed_stage"] == "prep"
        assert r["reason"].startswith("RuntimeError: injected failure: x0=")
        assert "raise RuntimeError" in r["traceback"]
    slots = 2 if executor == "local2" else 1
    assert 3 <= len(states) <= 3 + slots - 1
