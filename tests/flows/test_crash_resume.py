"""Fault injection: SIGKILL the controller at seeded random points, resume each time.

Checks after every kill and at the end: the journal is valid (trials 0..n-1, each a whole
JSON record), no told trial is lost or changed or duplicated, no stage whose result was
stored is ever computed again, and the finished study equals one that never crashed: the
same trials with the same parameters, objectives and costs.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import FAST, ROOT


def _args(tmp: Path, name: str, extra: list[str]) -> list[str]:
    cache = tmp / name / "cache"
    return [
        *extra,
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


def _start(
    tmp: Path, name: str, env: dict, attempt: int, extra: list[str] = ()
) -> subprocess.Popen:
    out = open(tmp / name / f"attempt-{attempt}.log", "w")  # noqa: SIM115 (closed by the OS)
    return subprocess.Popen(
        [sys.executable, "-m", "flows.tune", *_args(tmp, name, list(extra))],
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


@pytest.mark.slow
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


@pytest.mark.extended  # make test-extended: a variant of the sequential SIGKILL test
def test_sigkill_of_a_parallel_study_loses_nothing_and_recomputes_nothing(tmp_path, api_env):
    """Two trials in flight on the controller's threads (``executor=local``): kills land
    with trials running; each resume re-runs the trials in flight, adopting what they
    stored. Trials finish in any order, so the run is not compared with a reference."""
    name = "par"
    (tmp_path / name).mkdir()
    env = {**api_env, "PYTHONPATH": str(ROOT)}
    extra = ["executor=local", "parallel=2"]
    rng = random.Random(20261129)
    snapshots, kills = [], 0
    for attempt, target in enumerate((2, 5, 8)):
        proc = _start(tmp_path, name, env, attempt, extra)
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            if len(list((tmp_path / name).glob("cache/studies/*/trials/*.json"))) >= target:
                break
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 1.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=30)
        snapshots.append(_records(tmp_path, name))
    assert kills == 3, "the study finished before every kill landed; slow it down"

    final = _start(tmp_path, name, env, 3, extra)
    log = tmp_path / name / "attempt-3.log"
    assert final.wait(timeout=240) == 0, log.read_text()
    records = _records(tmp_path, name)
    for snap in snapshots:
        assert _essence(records[: len(snap)]) == _essence(snap)
    assert not [c for c in _computed(tmp_path, name) if c["stored"]]
    assert len({r["trial_id"] for r in records}) == len(records)
    assert sum(sum(r["costs"].values()) for r in records) >= 70
    logs = [p.read_text() for p in (tmp_path / name).glob("attempt-*.log")]
    assert any("was interrupted; re-running it" in text for text in logs)
    # Two trials really ran at once.
    spans = sorted((r["asked_at"], r["told_at"]) for r in records)
    assert any(b[0] < a[1] for a, b in itertools.pairwise(spans))
