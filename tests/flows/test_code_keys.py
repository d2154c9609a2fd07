"""Code-aware cache keys through the CLI: an edited stage function recomputes that stage
and its descendants, and only those; ``pipeline.kwargs`` and ``pipeline.fixed`` join the
keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows import ConfigError, StudyConfig
from flows.runtime import build_pipeline
from tests.helpers import ROOT, cli, composed

USER_PIPELINE = """
from stages import Pipeline, Reported, stage

F = {"type": "float", "low": 0.0, "high": 1.0}


@stage(space={"a": F})
def prep(a):
    return Reported(a, cost=5.0)


@stage(inputs=["prep"], space={"b": F})
def train(prep, b):
    return Reported(prep + b, cost=2.0)


@stage(inputs=["train"], space={"c": F})
def evaluate(train, c):
    return Reported(train * c, cost=1.0)


def make():
    return Pipeline([prep, train, evaluate], load_cost=0.01)
"""


def _study(folder: Path, study: str, api_env: dict) -> list[dict]:
    run = cli(
        f"study={study}",
        "pipeline.name=user",
        "pipeline.target=userpipe:make",
        "pipeline.space=null",
        "n_init=3",
        "max_trials=3",
        "budget=100",
        f"storage.url={folder / 'cache'}",
        f"output_dir={folder / 'out' / study}",
        cwd=folder,
        env={**api_env, "PYTHONPATH": str(ROOT)},
    )
    assert run.returncode == 0, run.stderr
    trials = sorted((folder / "cache" / "studies" / study / "trials").glob("*.json"))
    return [json.loads(p.read_text()) for p in trials]


@pytest.mark.slow
def test_an_edited_stage_is_recomputed_with_its_descendants_and_only_those(tmp_path, api_env):
    source = tmp_path / "userpipe.py"
    source.write_text(USER_PIPELINE)
    first = _study(tmp_path, "first", api_env)
    assert [r["cached"] for r in first] == [[], [], []]
    # The same seed asks the same warm-up configurations: all of them load now.
    again = _study(tmp_path, "again", api_env)
    assert [sorted(r["cached"]) for r in again] == [["evaluate", "prep", "train"]] * 3
    assert [r["objective"] for r in again] == [r["objective"] for r in first]
    # A comment does not count as an edit ...
    source.write_text(
        USER_PIPELINE.replace(
            "    return Reported(prep + b", "    # add\n    return Reported(prep + b"
        )
    )
    comment = _study(tmp_path, "comment", api_env)
    assert [sorted(r["cached"]) for r in comment] == [["evaluate", "prep", "train"]] * 3
    # ... an edit of `train` does: it and `evaluate` run again, `prep` still loads.
    source.write_text(USER_PIPELINE.replace("prep + b", "prep - b"))
    edited = _study(tmp_path, "edited", api_env)
    assert [r["cached"] for r in edited] == [["prep"]] * 3
    assert [r["costs"]["train"] for r in edited] == [2.0] * 3
    for new, old in zip(edited, first, strict=True):
        p = new["params"]
        assert new["objective"] == pytest.approx(
            (p["prep"]["a"] - p["train"]["b"]) * p["evaluate"]["c"]
        )
        assert new["objective"] != pytest.approx(old["objective"])


def test_pipeline_kwargs_and_fixed_values_join_the_keys():
    params = {
        "prep": {"x0": 1.0, "x1": 2.0},
        "train": {"x1": 0.5, "x2": 0.5},
        "finetune": {"x0": 0.0, "x1": 0.0},
    }
    base = build_pipeline(StudyConfig.from_mapping(composed()))
    other_kwargs = build_pipeline(
        StudyConfig.from_mapping(composed("+pipeline.kwargs.load_cost=0.02"))
    )
    pinned = build_pipeline(StudyConfig.from_mapping(composed("+pipeline.fixed.train.x0=0.5")))
    assert "x0" not in pinned.space_dict()["train"] and pinned["train"].fixed == {"x0": 0.5}
    tuned = {**params, "train": {**params["train"], "x0": 0.5}}
    assert pinned.keys(params) == base.keys(tuned)  # a pinned value is the same computation
    kp, kb = other_kwargs.keys(tuned), base.keys(tuned)
    assert all(kp[s] != kb[s] for s in kb)  # other factory arguments: no shared entry
    user = build_pipeline(StudyConfig.from_mapping(composed(*USER, "+pipeline.fixed.train.b=1")))
    assert user["train"].fixed == {"b": 1.0} and user.space_dict()["train"] == {}
    pinned_int = build_pipeline(StudyConfig.from_mapping(composed("+pipeline.fixed.train.x0=1")))
    assert pinned_int["train"].fixed == {"x0": 1.0}  # coerced to the declared float


def user_pipeline():
    """USER_PIPELINE's stages, importable by ``pipeline.target``."""
    namespace: dict = {}
    exec(USER_PIPELINE, namespace)
    return namespace["make"]()


USER = ["pipeline.target=tests.flows.test_code_keys:user_pipeline", "pipeline.space=null"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["+pipeline.fixed.ghost.x=1"], "`pipeline.fixed` names unknown stage(s) ['ghost']"),
        (["+pipeline.fixed.train.x0=abc"], "`pipeline.fixed.train.x0`: value 'abc' does not fit"),
        ([*USER, "+pipeline.fixed.train.b=abc"], "`pipeline.fixed.train.b`: value 'abc' does not"),
        ([*USER, "+pipeline.fixed.train.bb=1"], "stage 'train' fixes parameter 'bb', which its"),
        (["+pipeline.fixed=3"], "`pipeline.fixed` must map stage -> parameter -> value"),
    ],
)
def test_bad_fixed_values_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError) as info:
        build_pipeline(StudyConfig.from_mapping(composed(*overrides)))
    assert message in str(info.value) and "\n" not in str(info.value)
