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
import yaml

HEAVY = ("torch", "prefect")


def _tune(
    tmp_path: Path, *overrides: str, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run ``python -X importtime -m flows.tune`` in ``tmp_path``; the process and the
    top-level packages it imported."""
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), **(env or {})}
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


@pytest.mark.slow
def test_a_finished_study_is_answered_from_its_journal_and_outputs(tmp_path, api_env):
    args = ["study=fin", "budget=200", "n_init=2", "max_trials=2", "progress=true"]
    args += [f"storage.url={tmp_path / 'cache'}"]
    first, _ = _tune(tmp_path, *args, env=api_env)
    assert first.returncode == 0, _said(first)[-3000:]
    out = tmp_path / "outputs" / "fin"
    outputs = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.glob("best*")}
    outputs["results.csv"] = ((out / "results.csv").read_bytes(), 0)

    def done(proc: subprocess.CompletedProcess[str]) -> list[str]:
        return [line for line in _said(proc).splitlines() if line.startswith("done:")]

    # Nothing left to run, outputs up to date: no torch, no Prefect, nothing rewritten.
    down = {**api_env, "PREFECT_API_URL": "http://127.0.0.1:9/api"}
    again, imported = _tune(tmp_path, *args, env=down)
    assert again.returncode == 0, _said(again)[-3000:]
    assert (
        "study 'fin': nothing left to run (max_trials=2 reached); its outputs in "
        f"{out} are up to date" in _said(again)
    )
    assert done(again) == done(first)
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))
    for p in out.glob("best*"):
        assert (p.read_bytes(), p.stat().st_mtime_ns) == outputs[p.name], p.name

    # Another search space: the full way refuses it, as it refuses any other study.
    other, _ = _tune(tmp_path, *args, "pipeline.space.train.x1.high=0.5", env=down)
    assert other.returncode == 2
    assert "already exists" in _said(other) and "with a different space" in _said(other)

    # Outputs that are not the journal's (best.yaml without its recommended section, as an
    # older `eeipu show` left it): the full way writes them again.
    best = yaml.safe_load((out / "best.yaml").read_text())
    del best["recommended"]
    (out / "best.yaml").write_text(yaml.safe_dump(best, sort_keys=False))
    redone, _ = _tune(tmp_path, *args, env=down)
    assert redone.returncode == 0, _said(redone)[-3000:]
    assert "up to date" not in _said(redone) and done(redone) == done(first)
    assert "recommended" in yaml.safe_load((out / "best.yaml").read_text())


def test_the_early_server_is_taken_over_or_stopped(monkeypatch):
    """``early_server`` launches the temporary server before the imports of torch and
    Prefect's engine; ``prefect_api``'s start takes that one over (no second launch), and one
    that nobody took (bad input found after the launch) is stopped on the way out."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows import _interrupt

    launched: list[subprocess.Popen] = []

    def launch() -> tuple[str, object]:
        # A stand-in guard: like the real one, it runs until its stdin closes.
        guard = subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
        )
        launched.append(guard)
        _interrupt._watch.guard = guard
        return f"http://127.0.0.1:{len(launched)}/api", open(os.devnull, "rb")

    monkeypatch.setattr(_interrupt, "_launch_server", launch)
    monkeypatch.setattr(_interrupt, "_wait_healthy", lambda url, guard, timeout: True)
    with temporary_settings(updates={PREFECT_API_URL: None}):
        with pytest.raises(ValueError), _interrupt.early_server():
            raise ValueError("bad input found after the launch")
        assert launched[0].wait(10) == 0 and _interrupt._watch.guard is None

        with _interrupt.early_server():
            assert _interrupt._start_server() == "http://127.0.0.1:2/api"
            assert len(launched) == 2 and launched[1].poll() is None  # taken over, running
            _interrupt._stop_server(wait=5.0)
        assert launched[1].wait(10) == 0
