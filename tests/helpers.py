"""Helpers shared by test modules: composed Hydra configs, in-process studies and the CLI.

Fixtures live in ``tests/conftest.py``; these are plain functions and constants.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

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


#: The in-process executors, as overrides: the fault tests run a study with each (the work
#: pool's tests, which need Prefect workers, are in tests/flows/test_parallel.py).
EXECUTORS = {
    "inline": [],
    "local2": ["executor=local", "parallel=2"],
}


def stop(proc: subprocess.Popen, log: Any = None) -> None:
    """Terminate a subprocess started by a fixture (kill it after 30 s), close its log."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    if log is not None:
        log.close()
