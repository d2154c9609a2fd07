"""Answers that need neither torch nor Prefect import neither (issue 29, item 5): a config
error, and a finished study's re-run whose outputs are up to date. Each is a real ``eeipu
tune`` subprocess under ``python -X importtime``, which lists every module it imported (no
wall-clock assertion: the machine's load decides those; ``benchmarks/bench_cli.py`` times
them)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "prefect")


def _tune(tmp_path: Path, *overrides: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run ``python -X importtime -m flows.tune`` in ``tmp_path``; the process and the
    top-level packages it imported."""
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "flows.tune", *overrides],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    imported = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    return done, imported


def _said(done: subprocess.CompletedProcess[str]) -> str:
    return "\n".join(
        line for line in (done.stdout + done.stderr).splitlines() if not line.startswith("import ")
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["budget=-1"], "error: `budget` must be a positive number, but got -1"),
        (["optimizer.method=nope"], "error: `optimizer.method` must be one of"),
        (["+optimizer.options.prefix_start=3"], "did you mean 'prefix_starts'?"),
        (["pipeline.space.train.x1.high=-1"], "`low < high` must hold"),
    ],
)
def test_a_config_error_imports_neither_torch_nor_prefect(tmp_path, overrides, message):
    done, imported = _tune(tmp_path, *overrides)
    assert done.returncode == 2, _said(done)
    assert message in _said(done)
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))
