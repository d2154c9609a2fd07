"""The output files for people: results.csv, best.yaml, best_vs_cost.png."""

from __future__ import annotations

import io
import logging
import os
import stat
import sys

import pytest

from flows import write_outputs
from flows._outputs import progress_line, trial_rows
from flows._progress import FILE_ONLY, ConsoleFilter, LogFileFilter, ProgressBar
from flows.records import TrialRecord, read_record

RECORDS = [
    {
        "number": i,
        "state": "complete",
        "objective": float(i),
        "costs": {"prep": 1.0, "train": 2.0},
        "cached": ["prep"] if i else [],
        "params": {"prep": {"x0": 0.1 * i}, "train": {"x1": 0.2}},
    }
    for i in range(3)
]


def _recs(raws: list[dict]) -> list[TrialRecord]:
    """Journal records from their JSON (as a journal of any version holds them)."""
    return [read_record(r) for r in raws]


@pytest.fixture
def umask():
    """Set the process umask for one test (single-threaded here), then restore it."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_get_the_mode_a_plain_open_gives(tmp_path, umask, mask, mode):
    umask(mask)
    with open(tmp_path / "plain", "w"):
        pass
    paths = write_outputs(tmp_path / "out", "s", _recs(RECORDS), "maximize", 3.0)
    assert sorted(p.name for p in paths.values()) == [
        "best.yaml",
        "best_vs_cost.png",
        "results.csv",
    ]
    for path in paths.values():
        assert (
            stat.S_IMODE(path.stat().st_mode)
            == mode
            == stat.S_IMODE((tmp_path / "plain").stat().st_mode)
        ), path.name
    # Written atomically: no temporary file is left next to them.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        p.name for p in paths.values()
    )


def test_rewritten_outputs_follow_the_current_umask(tmp_path, umask):
    umask(0o077)
    write_outputs(tmp_path, "s", _recs(RECORDS[:1]), "maximize", None)
    umask(0o022)
    paths = write_outputs(tmp_path, "s", _recs(RECORDS), "maximize", None)
    assert {stat.S_IMODE(p.stat().st_mode) for p in paths.values()} == {0o644}
    assert (paths["csv"]).read_text().count("\n") == len(RECORDS) + 1


def test_best_yaml_shows_the_recommended_trial_beside_the_best_observed(tmp_path):
    import yaml

    from eeipu import Trial
    from flows._outputs import best_markdown, recommended_record

    def picked(params):  # what Optimizer.recommend returns: a trial and its posterior mean
        return Trial(number=7, params=params), 1.5

    recommended = recommended_record(_recs(RECORDS), picked(RECORDS[1]["params"]))
    assert recommended is not None and recommended.model_dump() == {
        "trial": 1,
        "objective": 1.0,
        "posterior_mean": 1.5,
        "params": RECORDS[1]["params"],
    }
    paths = write_outputs(tmp_path, "s", _recs(RECORDS), "maximize", None, recommended)
    summary = yaml.safe_load(paths["yaml"].read_text())
    assert summary["best"]["trial"] == 2 and summary["best"]["objective"] == 2.0
    assert summary["recommended"] == {
        "trial": 1,
        "posterior_mean": 1.5,
        "objective": 1.0,
        "params": RECORDS[1]["params"],
    }
    # no recommendation, or one that matches no complete record: the best only
    for rec in (None, picked({"prep": {"x0": 9.0}})):
        assert recommended_record(_recs(RECORDS), rec) is None
    paths = write_outputs(tmp_path, "s", _recs(RECORDS), "maximize", None, None)
    assert "recommended" not in yaml.safe_load(paths["yaml"].read_text())
    md = best_markdown("s", read_record(RECORDS[2]), 9.0, 3, recommended)
    assert "**Recommended**" in md and "trial 1, posterior mean 1.5, observed 1" in md


FAILED = {
    "number": 3,
    "state": "failed",
    "objective": None,
    "costs": {"prep": 0.01, "train": 2.5},
    "cached": ["prep"],
    "params": {"prep": {"x0": 0.3}, "train": {"x1": 0.9}},
    "error": "stage 'train' failed (key abc): ValueError: lr too high\nsee the docs",
    "reason": "ValueError: lr too high\nsee the docs",
    "failed_stage": "train",
    "metrics": {},
}


def test_results_csv_has_the_reason_and_every_metric(tmp_path):
    import csv

    records = [{**r, "metrics": {"f1": r["objective"], "acc": 0.5}} for r in RECORDS]
    records.append(FAILED)
    rows = list(
        csv.DictReader(write_outputs(tmp_path, "s", _recs(records), "maximize", None)["csv"].open())
    )
    assert [row["reason"] for row in rows] == [
        "",
        "",
        "",
        "train: ValueError: lr too high see the docs",
    ]
    assert [row["metric.acc"] for row in rows] == ["0.5", "0.5", "0.5", ""]
    assert [row["metric.f1"] for row in rows[:3]] == ["0.0", "1.0", "2.0"]
    # A record journaled before reasons were kept gives its error.
    old = {k: v for k, v in FAILED.items() if k not in ("reason", "failed_stage")}
    rows = trial_rows([read_record(old)], "maximize")
    assert (
        rows[0]["reason"] == "stage 'train' failed (key abc): ValueError: lr too high see the docs"
    )


def test_progress_line_names_what_was_loaded_why_it_failed_and_the_real_percentage():
    line = progress_line(read_record(FAILED), 1.0, 6.077, 4.0)
    assert "| cached prep " in line and "objective     FAILED" in line
    assert "spent 6.077/4 (152%)" in line
    assert line.endswith("| train: ValueError: lr too high see the docs")
    assert "\n" not in line
    ok = progress_line(read_record({**RECORDS[1], "cached": ["prep", "train"]}), 1.0, 2.0, 4.0)
    assert "| cached prep,train " in ok and ok.endswith("(50%)")


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_draws_one_updating_line_on_a_terminal_only():
    clock = iter([100.0, 110.0, 110.0, 130.0]).__next__
    assert not ProgressBar.wanted(io.StringIO(), True)
    assert not ProgressBar.wanted(_Tty(), False)
    assert ProgressBar.wanted(_Tty(), True)
    out = _Tty()
    bar = ProgressBar(out, 40.0, max_trials=12, spent=4.0, n_trials=1, clock=clock)
    bar.update(3, 14.0, -2.5)  # 10 s for 10 budget units and 2 trials
    assert out.getvalue() == (
        "\r\x1b[K[#######-------------]  35% | 3/12 trials | spent 14/40 | best -2.5 | ETA 0:26"
    )
    bar.write("trial   3 | ...")  # above the bar, which is drawn again below it
    assert out.getvalue().endswith("\r\x1b[Ktrial   3 | ...\n" + bar._shown)
    bar.update(11, 52.0, -1.0)  # overspent: the real percentage, nothing left to wait for
    assert out.getvalue().endswith(
        "[####################] 130% | 11/12 trials | spent 52/40 | best -1 | ETA 0:00"
    )
    bar.close()
    assert out.getvalue().endswith("\r\x1b[K")


def test_console_filter_leaves_tracebacks_and_progress_lines_to_the_log_file():
    def record(name, level, exc=None, **extra):
        rec = logging.LogRecord(name, level, __file__, 1, "msg", None, exc)
        rec.__dict__.update(extra)
        return rec

    try:
        raise RuntimeError("boom")
    except RuntimeError:
        exc_info = sys.exc_info()
    console, log_file = ConsoleFilter(), LogFileFilter()
    task_failed = record("prefect.task_runs", logging.ERROR, exc_info)
    assert not console.filter(task_failed) and not log_file.filter(task_failed)
    assert not console.filter(record("prefect.flow_runs", logging.ERROR))
    assert log_file.filter(record("prefect.flow_runs", logging.ERROR))  # one line: kept
    assert console.filter(record("prefect.task_runs", logging.WARNING))
    assert console.filter(record("eeipu", logging.WARNING))
    progress = record("eeipu", logging.INFO, **FILE_ONLY)
    assert not console.filter(progress) and log_file.filter(progress)
