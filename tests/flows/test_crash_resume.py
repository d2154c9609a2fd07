"""Fault injection: SIGKILL the controller at seeded random points, resume each time.

Checks after every kill and at the end: the journal is valid (trials 0..n-1, each a whole
JSON record), no told trial is lost or changed or duplicated, no stage whose result was
stored is ever computed again, and the finished study equals one that never crashed: the
same trials with the same parameters, objectives and costs.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.flows.test_tune import FAST, ROOT


def _args(tmp: Path, name: str) -> list[str]:
    cache = tmp / name / "cache"
    return [
        *FAST,
        "budget=70",
        "n_init=4",
        f"study={name}",
        f"storage.url={cache}",
        "pipeline.target=tests.flows.crashy.crashy_pipeline",
        f"+pipeline.kwargs.log={tmp / name / 'computed.jsonl'}",
        f"+pipeline.kwargs.cache={cache}",
        f"hydra.run.dir={tmp / name / 'out'}",
    ]


def _start(tmp: Path, name: str, env: dict, attempt: int) -> subprocess.Popen:
    out = open(tmp / name / f"attempt-{attempt}.log", "w")  # noqa: SIM115 (closed by the OS)
    return subprocess.Popen(
        [sys.executable, "-m", "flows.tune", *_args(tmp, name)],
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ, **env},
        cwd=ROOT,
    )


def _records(tmp: Path, name: str) -> list[dict]:
    folder = tmp / name / "cache" / "studies" / name / "trials"
    records = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    assert [r["number"] for r in records] == list(range(len(records))), "journal has a gap"
    return records


def _computed(tmp: Path, name: str) -> list[dict]:
    log = tmp / name / "computed.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()]


def _essence(records: list[dict]) -> list[tuple]:
    return [
        (
            r["number"],
            r["state"],
            json.dumps(r["params"], sort_keys=True),
            r["objective"],
            json.dumps(r["costs"], sort_keys=True),
            tuple(r["cached"]),
        )
        for r in records
    ]


def test_sigkill_at_random_points_then_resume_equals_an_uninterrupted_run(tmp_path, api_env):
    (tmp_path / "ref").mkdir()
    (tmp_path / "crash").mkdir()
    env = {**api_env, "PYTHONPATH": str(ROOT)}

    reference = _start(tmp_path, "ref", env, 0)
    assert reference.wait(timeout=240) == 0, (tmp_path / "ref" / "attempt-0.log").read_text()
    ref = _records(tmp_path, "ref")
    assert len(ref) >= 8

    rng = random.Random(20261127)
    targets = sorted(rng.sample(range(1, len(ref) - 1), 5))
    kills, snapshots = [], []
    for attempt, target in enumerate(targets):
        proc = _start(tmp_path, "crash", env, attempt)
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            if len(list((tmp_path / "crash").glob("cache/studies/*/trials/*.json"))) >= target:
                break
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 1.5))  # anywhere: mid-ask, mid-stage, mid-write
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills.append(time.time())
        proc.wait(timeout=30)
        snapshots.append(_records(tmp_path, "crash"))
    assert len(kills) >= 5, "the study finished before every kill landed; slow it down"

    final = _start(tmp_path, "crash", env, len(targets))
    log = tmp_path / "crash" / f"attempt-{len(targets)}.log"
    assert final.wait(timeout=240) == 0, log.read_text()
    records = _records(tmp_path, "crash")

    # Nothing told before a crash was lost, changed or told twice.
    for snap in snapshots:
        assert _essence(records[: len(snap)]) == _essence(snap)
    # No stored stage was computed again, in any attempt.
    computed = _computed(tmp_path, "crash")
    assert not [c for c in computed if c["stored"]]
    # The finished study is the study that never crashed.
    assert _essence(records) == _essence(ref)
    # ... and the resumed attempts really re-ran interrupted trials from their stored stages.
    assert any(
        "was interrupted; re-running it" in p.read_text()
        for p in (tmp_path / "crash").glob("attempt-*.log")
    )
