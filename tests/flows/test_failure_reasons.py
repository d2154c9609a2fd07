"""Every failure explained, once: the stage and reason of a failed trial in its progress line,
the journal and results.csv, its traceback in the journal and the run's log file (not on the
console); every metric the last stage returns kept; why a study stopped."""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import replace
from typing import Any

import pytest

from stages import Pipeline, Store
from stages.testing import synthetic_pipeline
from tests.helpers import FAST, cli, journal, run_study


def scored_pipeline(marker: str, seed: int = 0) -> Pipeline:
    """The synthetic pipeline whose last stage returns ``{"f1": .., "acc": ..}`` (metric
    ``f1``) and raises while the file ``marker`` exists."""
    base = synthetic_pipeline(seed=seed)
    finetune = base.stages[-1]

    def scored(**kwargs: Any) -> Any:
        if os.path.exists(marker):
            raise RuntimeError(f"marker {os.path.basename(marker)} is present")
        out = finetune.func(**kwargs)
        return replace(out, value={"f1": out.value, "acc": 0.5 + kwargs["x0"] / 100})

    scored.__name__ = scored.__qualname__ = "scored_finetune"
    return Pipeline([*base.stages[:-1], replace(finetune, func=scored)], metric="f1")


def _rows(tmp_path, study: str) -> list[dict[str, str]]:
    with open(tmp_path / "out" / study / "results.csv") as f:
        return list(csv.DictReader(f))


class _Said(logging.Handler):
    """The study's lines as its logger keeps them for the log file (first lines only).
    Read there, not from stderr: a capturing stream would outlive its test in the
    console handler that Prefect's test server sets up when it starts."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self) -> list[str]:
        lines = [r.getMessage().splitlines()[0] for r in self.records]
        self.records.clear()
        return lines


@pytest.fixture
def said():
    log = logging.getLogger("eeipu")
    handler, level = _Said(), log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    yield handler
    log.removeHandler(handler)
    log.setLevel(level)


def test_failed_trial_names_stage_reason_and_loaded_stages(prefect_harness, tmp_path, said):
    marker = tmp_path / "marker"
    scored = [
        "pipeline.target=tests.flows.test_failure_reasons.scored_pipeline",
        f"+pipeline.kwargs.marker={marker}",
        "max_trials=2",
    ]
    run_study(tmp_path, "study=ok", *scored)
    first = journal(tmp_path, "ok")
    # The sink's every metric is kept, the objective's among them.
    assert all(set(r["metrics"]) == {"f1", "acc"} for r in first)
    assert all(r["metrics"]["f1"] == r["objective"] for r in first)
    assert [float(row["metric.acc"]) for row in _rows(tmp_path, "ok")] == [
        r["metrics"]["acc"] for r in first
    ]
    assert any("stopped: max_trials=2 reached" in ln for ln in said.lines())

    # A study with the same seed asks the same warm-up trials: with the sink's entries gone
    # and the marker present, each loads prep and train, then its sink fails.
    store = Store(str(tmp_path / "cache"))
    for r in first:
        store.delete(r["keys"]["finetune"])
    marker.touch()
    run_study(tmp_path, "study=broken", *scored)
    records = journal(tmp_path, "broken")
    assert [r["state"] for r in records] == ["failed", "failed"]
    for r in records:
        assert r["failed_stage"] == "finetune"
        assert r["reason"] == "RuntimeError: marker marker is present"
        assert r["cached"] == ["prep", "train"]
        assert r["traceback"].startswith("Traceback (most recent call last)")
        assert 'raise RuntimeError(f"marker' in r["traceback"]
    assert [row["reason"] for row in _rows(tmp_path, "broken")] == [
        "finetune: RuntimeError: marker marker is present"
    ] * 2
    lines = [ln for ln in said.lines() if ln.startswith("trial")]
    assert len(lines) == 2
    for line in lines:
        assert "cached prep,train " in line
        assert line.endswith("| finetune: RuntimeError: marker marker is present")


@pytest.mark.slow
def test_nan_objective_is_blamed_on_the_last_stage(prefect_harness, tmp_path, said):
    run_study(
        tmp_path,
        "study=nanobj",
        "max_trials=3",
        "pipeline.target=tests.flows.crashy.faulty_pipeline",
        f"+pipeline.kwargs.flaky_dir={tmp_path}",
        "+pipeline.kwargs.nan_above=-100.0",
        "retries=1",
    )
    records = journal(tmp_path, "nanobj")
    assert [r["state"] for r in records] == ["failed"] * 3
    assert all(r["reason"] == "objective is nan" for r in records)
    assert all(r["failed_stage"] == "finetune" for r in records)
    lines = [ln for ln in said.lines() if ln.startswith("trial")]
    assert len(lines) == 3 and all(ln.endswith("| finetune: objective is nan") for ln in lines)


@pytest.mark.slow
def test_cli_failed_trials_are_one_line_each_and_tracebacks_go_to_tune_log(tmp_path, api_env):
    proc = cli(
        *FAST,
        "study=loud",
        "+pipeline.kwargs.fail_stage=train",
        "+pipeline.kwargs.fail_above=0.5",
        f"storage.url={tmp_path / 'cache'}",
        env=api_env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    console = proc.stdout + proc.stderr
    records = journal(tmp_path, "loud")
    failed = [r for r in records if r["state"] == "failed"]
    assert failed, "the study should have met the injected failure"
    # The console: one line per failed trial, with its stage and reason; no traceback.
    assert "Traceback" not in console
    assert console.count("injected failure") == len(failed)
    for r in failed:
        line = next(ln for ln in console.splitlines() if ln.startswith(f"trial {r['number']:>3} |"))
        assert "| train: RuntimeError: injected failure: x0=" in line
    # The run's log file: every progress line, and each failed trial's traceback once.
    log = (tmp_path / "outputs" / "loud" / "tune.log").read_text()
    assert all(f"trial {r['number']:>3} | cost" in log for r in records)
    assert log.count("Traceback (most recent call last)") == len(failed)
    assert log.count('raise RuntimeError(f"injected failure') == len(failed)
    # Why it stopped, and what it really spent against the budget.
    spent = sum(sum(r["costs"].values()) for r in records)
    done = next(ln for ln in console.splitlines() if ln.startswith("done:"))
    assert f"({100 * spent / 40:.0f}%); stopped: budget 40 spent;" in done
