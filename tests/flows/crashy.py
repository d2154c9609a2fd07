"""A synthetic pipeline for fault-injection tests: every computation is logged.

Each stage sleeps a little (so a kill lands inside trials), then runs the synthetic stage.
Before computing, it appends one JSON line to ``log``: the stage, its Merkle key, the time
and whether that key was already committed in the store. A stored stage that is computed
again shows up as ``"stored": true``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from typing import Any

from prefect.context import TaskRunContext

from stages import Pipeline, merkle_key
from stages.testing import synthetic_pipeline


def crashy_pipeline(log: str, cache: str, sleep: float = 0.15, seed: int = 0) -> Pipeline:
    base = synthetic_pipeline(seed=seed)
    stages = [replace(s, func=_logged(s.name, s.func, log, cache, sleep)) for s in base.stages]
    return Pipeline(stages, load_cost=base.load_cost)


def _running_key() -> str:
    """The Merkle key of the stage task running now (its policy holds the stage identity)."""
    ctx = TaskRunContext.get()
    policy = ctx.task.cache_policy
    params, input_keys = ctx.parameters["params"], ctx.parameters["input_keys"]
    return merkle_key(policy.stage_name, policy.version, params, input_keys)


def _logged(name: str, func: Any, log: str, cache: str, sleep: float) -> Any:
    def run(**kwargs: Any) -> Any:
        key = _running_key()
        line = {
            "stage": name,
            "key": key,
            "t": time.time(),
            "pid": os.getpid(),
            "stored": os.path.exists(os.path.join(cache, "meta", f"{key}.json")),
        }
        with open(log, "a") as f:
            f.write(json.dumps(line) + "\n")
            f.flush()
            os.fsync(f.fileno())
        time.sleep(sleep)
        return func(**kwargs)

    run.__name__ = run.__qualname__ = f"crashy_{name}"
    return run


def faulty_pipeline(flaky_dir: str, nan_above: float = 4.0, seed: int = 0) -> Pipeline:
    """The synthetic pipeline with two faults: the first attempt of every ``train``
    computation raises (a flaky stage that a retry heals), and the objective is NaN
    whenever ``finetune.x0 > nan_above`` (a bad result)."""
    base = synthetic_pipeline(seed=seed)
    train, finetune = base.stages[1], base.stages[2]

    def flaky(**kwargs: Any) -> Any:
        key = _running_key()
        marker = os.path.join(flaky_dir, key)
        if not os.path.exists(marker):
            open(marker, "w").close()
            raise ConnectionError(f"flaky: first attempt of {key[:8]}")
        return train.func(**kwargs)

    def nan_sink(**kwargs: Any) -> Any:
        out = finetune.func(**kwargs)
        return replace(out, value=float("nan")) if kwargs["x0"] > nan_above else out

    stages = [base.stages[0], replace(train, func=flaky), replace(finetune, func=nan_sink)]
    return Pipeline(stages, load_cost=base.load_cost)


def heartbeat_probe_pipeline(log: str, seed: int = 0) -> Pipeline:
    """The synthetic pipeline whose first stage appends the flow-run heartbeat frequency
    in force while it runs (a JSON line) to ``log``."""
    from prefect.settings import get_current_settings

    base = synthetic_pipeline(seed=seed)
    first = base.stages[0]

    def probed(**kwargs: Any) -> Any:
        with open(log, "a") as f:
            f.write(json.dumps(get_current_settings().flows.heartbeat_frequency) + "\n")
        return first.func(**kwargs)

    return Pipeline([replace(first, func=probed), *base.stages[1:]], load_cost=base.load_cost)
