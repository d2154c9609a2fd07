"""Pipeline construction rules and Merkle cache keys (no Prefect needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eeipu.testing import SyntheticProblem
from stages import Pipeline, PipelineError, Reported, Stage, merkle_key, stage
from stages.testing import synthetic_pipeline

ROOT = Path(__file__).resolve().parents[2]
FLOAT = {"type": "float", "low": 0.0, "high": 1.0}


def _fn(**kwargs):
    return 0.0


def _src():
    return 1


def _diamond(version_c: str = "1") -> Pipeline:
    # a -> b, a -> c, (b, c) -> d
    return Pipeline(
        [
            Stage(lambda x: 1.0, "a", space={"x": FLOAT}),
            Stage(lambda a, y: a + y, "b", inputs=("a",), space={"y": FLOAT}),
            Stage(lambda a, z: a * z, "c", inputs=("a",), version=version_c, space={"z": FLOAT}),
            Stage(lambda b, c, w: b + c + w, "d", inputs=("b", "c"), space={"w": FLOAT}),
        ]
    )


DIAMOND_PARAMS = {"a": {"x": 0.1}, "b": {"y": 0.2}, "c": {"z": 0.3}, "d": {"w": 0.4}}


# ---------------------------------------------------------------------- construction
def test_stage_decorator_and_space_dict_in_topological_order():
    @stage(space={"k": {"type": "int", "low": 1, "high": 9}})
    def prep(k):
        return k

    @stage(inputs=["prep"], space={"lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True}})
    def train(prep, lr):
        return {"auroc": prep * lr}

    pipe = Pipeline([train, prep], metric="auroc")
    assert pipe.stage_names == ["prep", "train"]
    assert list(pipe.space_dict()) == ["prep", "train"]
    assert pipe.space_dict()["train"]["lr"]["log"] is True
    assert pipe.sink.name == "train"
    assert pipe.objective({"auroc": 0.5}) == 0.5
    assert prep(k=3) == 3  # a stage stays a plain callable


def test_empty_pipeline_is_rejected():
    with pytest.raises(PipelineError, match="at least one stage"):
        Pipeline([])


def test_duplicate_names_are_rejected():
    with pytest.raises(PipelineError, match=r"stage names must be unique, but 'a' appears 2"):
        Pipeline([Stage(_src, "a"), Stage(_src, "a", output="other")])


def test_duplicate_outputs_are_rejected():
    with pytest.raises(PipelineError, match=r"output 'data' is produced by stages 'a' and 'b'"):
        Pipeline([Stage(_src, "a", output="data"), Stage(_src, "b", output="data")])


def test_missing_input_is_rejected():
    with pytest.raises(PipelineError, match=r"stage 'train' reads 'data', which no stage produces"):
        Pipeline([Stage(_src, "prep"), Stage(lambda data: data, "train", inputs=("data",))])


def test_cycle_is_rejected_and_named():
    stages = [
        Stage(lambda c: c, "a", inputs=("c",)),
        Stage(lambda a: a, "b", inputs=("a",)),
        Stage(lambda b: b, "c", inputs=("b",)),
    ]
    with pytest.raises(PipelineError, match=r"cycle: (\w -> ){3}\w"):
        Pipeline(stages)


def test_self_loop_is_a_cycle():
    with pytest.raises(PipelineError, match=r"cycle: a -> a"):
        Pipeline([Stage(lambda a: a, "a", inputs=("a",))])


def test_space_parameter_the_function_does_not_accept_is_rejected():
    def train(data, lr):
        return 0.0

    with pytest.raises(PipelineError, match=r"stage 'train' names parameter 'momentum'.*train\("):
        Stage(train, "train", inputs=("data",), space={"lr": FLOAT, "momentum": FLOAT})


def test_input_the_function_does_not_accept_is_rejected():
    with pytest.raises(PipelineError, match=r"stage 'b' reads input 'a'.*does not accept"):
        Stage(lambda x: x, "b", inputs=("a",), space={"x": FLOAT})


def test_required_argument_that_is_neither_input_nor_parameter_is_rejected():
    with pytest.raises(PipelineError, match=r"requires argument 'seed'"):
        Stage(lambda seed, x: x, "a", space={"x": FLOAT})


def test_var_keyword_function_accepts_any_space():
    Stage(_fn, "a", space={"anything": FLOAT})


def test_bad_parameter_type_is_rejected():
    with pytest.raises(PipelineError, match=r"type='bool'.*stage 'a', parameter 'x'"):
        Stage(_fn, "a", space={"x": {"type": "bool"}})


def test_two_sinks_are_rejected():
    with pytest.raises(PipelineError, match=r"exactly one stage.*\['b', 'c'\]"):
        Pipeline([Stage(_src, "a"), Stage(lambda a: a, "b", inputs=("a",)), Stage(_src, "c")])


def test_inputs_given_as_a_string_are_rejected():
    with pytest.raises(PipelineError, match=r"inputs=\['data'\]"):
        Stage(lambda data: data, "b", inputs="data")


def test_objective_needs_the_named_metric():
    pipe = Pipeline([Stage(_src, "a")], metric="auroc")
    with pytest.raises(ValueError, match="no metric 'auroc'"):
        pipe.objective({"acc": 1.0})
    with pytest.raises(ValueError, match="metric="):
        Pipeline([Stage(_src, "a")]).objective({"acc": 1.0})


def test_reported_cost_must_be_finite_and_nonnegative():
    assert Reported(1, cost=2).cost == 2.0
    with pytest.raises(ValueError, match="finite and >= 0"):
        Reported(1, cost=float("nan"))


# ---------------------------------------------------------------------- keys
def test_key_of_a_chain_is_the_hyperparameter_prefix():
    pipe = synthetic_pipeline()
    p = {s: {x: 0.5 for x in sec} for s, sec in pipe.space_dict().items()}
    q = {**p, "finetune": {x: 0.25 for x in p["finetune"]}}
    kp, kq = pipe.keys(p), pipe.keys(q)
    assert kp["prep"] == kq["prep"] and kp["train"] == kq["train"]
    assert kp["finetune"] != kq["finetune"]
    prep, train = pipe["prep"], pipe["train"]
    assert prep.identity.startswith("code:") and prep.identity != train.identity
    expected_prep = merkle_key("prep", prep.identity, p["prep"], [])
    assert kp["prep"] == expected_prep
    assert kp["train"] == merkle_key("train", train.identity, p["train"], [expected_prep])


@pytest.mark.parametrize(
    ("change", "changed"),
    [
        ({"a": {"x": 0.9}}, {"a", "b", "c", "d"}),
        ({"b": {"y": 0.9}}, {"b", "d"}),
        ({"c": {"z": 0.9}}, {"c", "d"}),
        ({"d": {"w": 0.9}}, {"d"}),
    ],
)
def test_a_parameter_change_changes_that_stage_and_its_descendants_only(change, changed):
    pipe = _diamond()
    before = pipe.keys(DIAMOND_PARAMS)
    after = pipe.keys({**DIAMOND_PARAMS, **change})
    assert {s for s in before if before[s] != after[s]} == changed
    (stage_name,) = change
    assert changed == {stage_name} | pipe.descendants(stage_name)


def test_a_version_change_changes_that_stage_and_its_descendants_only():
    before = _diamond().keys(DIAMOND_PARAMS)
    after = _diamond(version_c="2").keys(DIAMOND_PARAMS)
    assert {s for s in before if before[s] != after[s]} == {"c", "d"}


def test_keys_ignore_number_spelling_and_extra_stages():
    pipe = Pipeline([Stage(lambda k, x: x, "a", space={"k": {"type": "int"}, "x": FLOAT})])
    base = pipe.key("a", {"a": {"k": 3, "x": 1}})
    assert pipe.key("a", {"a": {"k": 3.0, "x": 1.0}, "zzz": {"q": 1}}) == base


def test_keys_reject_missing_or_unknown_parameters():
    pipe = _diamond()
    with pytest.raises(ValueError, match=r"stage 'b'.*missing=\['y'\]"):
        pipe.key("d", {**DIAMOND_PARAMS, "b": {}})
    with pytest.raises(ValueError, match=r"unknown=\['q'\]"):
        pipe.key("a", {"a": {"x": 0.1, "q": 1}})
    # Only upstream stages are needed.
    assert pipe.key("b", {"a": {"x": 0.1}, "b": {"y": 0.2}}) == pipe.keys(DIAMOND_PARAMS)["b"]


def test_keys_are_identical_in_another_process():
    problem = SyntheticProblem(seed=3)
    pipe = synthetic_pipeline(problem)
    params = {s: {x: 0.1 + i for i, x in enumerate(sec)} for s, sec in pipe.space_dict().items()}
    code = (
        "import json, sys\n"
        "from eeipu.testing import SyntheticProblem\n"
        "from stages.testing import synthetic_pipeline\n"
        "params = json.loads(sys.argv[1])\n"
        "print(json.dumps(synthetic_pipeline(SyntheticProblem(seed=3)).keys(params)))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}  # a different str hash seed
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(params)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == pipe.keys(params)
