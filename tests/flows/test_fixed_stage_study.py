"""End to end: a pipeline whose first and last stages have no hyperparameters (a fixed
loading and a fixed evaluation stage) runs as a study on the real Prefect engine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from stages import Pipeline, stage
from tests.helpers import journal, run_study


def fixed_pipeline(log: str) -> Pipeline:
    """load (no parameters) -> train (``w``, ``depth``) -> evaluate (no parameters); every
    computation appends its stage's name to ``log``."""

    def computed(name: str) -> None:
        with open(log, "a") as f:
            f.write(json.dumps({"stage": name}) + "\n")

    @stage()
    def load() -> list[float]:
        computed("load")
        return [0.1 * i for i in range(20)]

    @stage(
        inputs=["load"],
        output="model",
        space={
            "w": {"type": "float", "low": 0.0, "high": 2.0},
            "depth": {"type": "int", "low": 1, "high": 6},
        },
    )
    def train(load: list[float], w: float, depth: int) -> dict[str, Any]:
        computed("train")
        return {"w": w, "depth": depth, "n": len(load)}

    @stage(inputs=["model"])
    def evaluate(model: dict[str, Any]) -> float:
        computed("evaluate")
        return -((model["w"] - 1.2) ** 2) - 0.05 * (model["depth"] - 4) ** 2

    return Pipeline([load, train, evaluate])


def _computed(path: Path) -> list[str]:
    return [json.loads(line)["stage"] for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_study_with_fixed_first_and_last_stages(prefect_harness, tmp_path):
    log = tmp_path / "computed.jsonl"
    result = run_study(
        tmp_path,
        "study=fixed",
        "pipeline.target=tests.flows.test_fixed_stage_study.fixed_pipeline",
        f"+pipeline.kwargs.log={log}",
        "pipeline.space=null",
        "budget=10000",
        "max_trials=12",
    )
    records = journal(tmp_path, "fixed")
    assert result.n_trials == len(records) == 12
    assert all(r["state"] == "complete" for r in records)
    assert all(r["params"]["load"] == {} and r["params"]["evaluate"] == {} for r in records)
    assert len({json.dumps(r["params"]["train"], sort_keys=True) for r in records}) == 12
    # load computed once, then loaded by every later trial; evaluate ran in every trial.
    assert records[0]["cached"] == []
    assert all(r["cached"] == ["load"] for r in records[1:])
    assert all(set(r["costs"]) == {"load", "train", "evaluate"} for r in records)
    assert _computed(log).count("load") == 1
    assert _computed(log).count("evaluate") == _computed(log).count("train") == 12
    for r in records:
        train = r["params"]["train"]
        assert r["objective"] == -((train["w"] - 1.2) ** 2) - 0.05 * (train["depth"] - 4) ** 2
