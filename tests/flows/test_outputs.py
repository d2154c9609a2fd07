"""The output files for people: results.csv, best.yaml, best_vs_cost.png."""

from __future__ import annotations

import os
import stat

import pytest

from flows import write_outputs

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
    paths = write_outputs(tmp_path / "out", "s", RECORDS, "maximize", 3.0)
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
    write_outputs(tmp_path, "s", RECORDS[:1], "maximize", None)
    umask(0o022)
    paths = write_outputs(tmp_path, "s", RECORDS, "maximize", None)
    assert {stat.S_IMODE(p.stat().st_mode) for p in paths.values()} == {0o644}
    assert (paths["csv"]).read_text().count("\n") == len(RECORDS) + 1


def test_best_yaml_shows_the_recommended_trial_beside_the_best_observed(tmp_path):
    import yaml

    from eeipu import Trial
    from flows._outputs import best_markdown, recommended_record

    def picked(params):  # what Optimizer.recommend returns: a trial and its posterior mean
        return Trial(number=7, params=params), 1.5

    recommended = recommended_record(RECORDS, picked(RECORDS[1]["params"]))
    assert recommended == {
        "trial": 1,
        "objective": 1.0,
        "posterior_mean": 1.5,
        "params": RECORDS[1]["params"],
    }
    paths = write_outputs(tmp_path, "s", RECORDS, "maximize", None, recommended)
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
        assert recommended_record(RECORDS, rec) is None
    paths = write_outputs(tmp_path, "s", RECORDS, "maximize", None, None)
    assert "recommended" not in yaml.safe_load(paths["yaml"].read_text())
    md = best_markdown("s", RECORDS[2], 9.0, 3, recommended)
    assert "**Recommended**" in md and "trial 1, posterior mean 1.5, observed 1" in md
