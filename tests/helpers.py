"""Helpers shared by test modules: composed Hydra configs, in-process studies and the CLI.

Fixtures live in ``tests/conftest.py``; these are plain functions and constants.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir

from flows.conf import CONFIG_DIR

ROOT = Path(__file__).resolve().parents[1]
CONF = str(CONFIG_DIR)
# Small optimizer settings: tests check the machinery, not the quality of the proposals.
OPTIMIZER_FAST = [
    "+optimizer.options.num_restarts=2",
    "+optimizer.options.raw_samples=32",
    "+optimizer.options.prefix_raw_samples=16",
    "+optimizer.options.prefix_restarts=1",
    "+optimizer.options.mc_samples=128",
    "+optimizer.options.maxiter=30",
]
FAST = ["budget=40", "n_init=3", *OPTIMIZER_FAST]
#: ``optimizer=ei`` after OPTIMIZER_FAST: without the prefix-pool options, which ei does not use.
EI = ["optimizer=ei", "~optimizer.options.prefix_raw_samples", "~optimizer.options.prefix_restarts"]


def composed(*overrides: str, config: str = "config") -> dict:
    """The shipped Hydra config ``config`` with ``overrides``, resolved to plain containers."""
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config, overrides=list(overrides), return_hydra_config=False)
    cfg = OmegaConf.to_container(cfg, resolve=False)
    cfg["output_dir"] = None  # ${hydra:...} only resolves inside a Hydra run
    return OmegaConf.to_container(OmegaConf.create(cfg), resolve=True)


#: The two ways users start a study: the console command and the module.
ENTRY_POINTS = {
    "eeipu tune": [str(Path(sys.executable).parent / "eeipu"), "tune"],
    "python -m flows.tune": [sys.executable, "-m", "flows.tune"],
}


def cli(
    *args: str,
    env: dict | None = None,
    cwd: Path | None = None,
    timeout: int = 300,
    entry: str = "python -m flows.tune",
) -> subprocess.CompletedProcess[str]:
    """Run the study CLI (one of :data:`ENTRY_POINTS`) in a subprocess, output captured."""
    return subprocess.run(
        [*ENTRY_POINTS[entry], *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd or ROOT,
        timeout=timeout,
    )


def run_study(tmp_path: Path, *overrides: str) -> Any:
    """Run a fast study in this process, its cache and outputs under ``tmp_path``."""
    from flows.tune import run

    cfg = composed(*FAST, f"storage.url={tmp_path / 'cache'}", *overrides)
    cfg["output_dir"] = str(tmp_path / "out" / cfg["study"])
    return run(cfg)


def journal(tmp_path: Path, study: str) -> list[dict]:
    """The trial records of ``study`` in the cache of :func:`run_study`, by trial number."""
    folder = tmp_path / "cache" / "studies" / study / "trials"
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def check_prefix_reuse(config: dict, runs: list[tuple[dict, list[str]]]) -> list[dict]:
    """Run each ``(params, cached)`` of ``runs`` through the trial subflow, in order and on one
    cache, and check that the trial loads exactly the stages ``cached`` (any order), scores in
    [0, 1] and costs a finite, non-negative time per stage. Returns the trials' outcomes as
    JSON (``flows.records.TrialOutcome``: ``objective``, ``keys``, ...)."""
    from flows.trial import trial_flow

    results = []
    for number, (params, cached) in enumerate(runs):
        r = trial_flow(config, number, params)
        assert r.cached == sorted(cached), (number, r.cached)
        assert math.isfinite(r.objective) and 0.0 <= r.objective <= 1.0
        # A load costs its (small) measured time, not the stage's.
        assert all(math.isfinite(v) and v >= 0 for v in r.costs.values())
        results.append(r.model_dump(mode="json", by_alias=True))
    return results


def check_smoke_study(
    result: Any, tmp_path: Path, study: str, stages: set[str], n_trials: int
) -> list[dict]:
    """Check a real pipeline's smoke study, run with its cache in ``tmp_path / "cache"`` and
    its outputs in ``tmp_path / "out"``, capped at ``n_trials`` by ``max_trials``: every trial
    complete with a cost for each of ``stages`` and an objective in [0, 1], the spent budget
    their costs' sum, and the outputs written. Returns the trial records."""
    import pytest

    records = journal(tmp_path, study)
    # n_trials whatever this machine's speed (the budget is in wall seconds).
    assert result.n_trials == len(records) == n_trials
    assert result.spent == pytest.approx(sum(sum(r["costs"].values()) for r in records))
    for r in records:
        assert r["state"] == "complete"
        assert set(r["costs"]) == stages
        assert 0.0 <= r["objective"] <= 1.0
    assert 0.0 <= result.best_objective <= 1.0
    out = tmp_path / "out"
    assert (out / "results.csv").read_text().count("\n") == len(records) + 1
    assert "objective:" in (out / "best.yaml").read_text()
    assert (out / "best_vs_cost.png").read_bytes()[:4] == b"\x89PNG"
    return records


#: The in-process executors, as overrides: the fault tests run a study with each (the work
#: pool's tests, which need Prefect workers, are in tests/flows/test_parallel.py).
EXECUTORS = {
    "inline": [],
    "local2": ["executor=local", "parallel=2"],
}
# The fault tests' executors: inline in `make test`, local2 (the same check on the local
# executor, whose own tests are in tests/flows/test_executors.py) in `make test-extended`.
EXECUTOR_CASES = [pytest.param("inline"), pytest.param("local2", marks=pytest.mark.extended)]


def stop(proc: subprocess.Popen, log: Any = None) -> None:
    """Terminate a subprocess started by a fixture (kill it after 30 s), close its log."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    if log is not None:
        log.close()
