"""Warm workers: two ``python -m flows.worker`` processes (Prefect task workers) run the
trials of a ``parallel=2`` study with ``executor=task_workers``, each trial a background
task run that the controller submits with ``apply_async``."""

from __future__ import annotations

import collections
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from tests.helpers import OPTIMIZER_FAST, ROOT, composed, stop

pytestmark = pytest.mark.slow


def _start_worker(api_url: str, log_path: Path) -> tuple[subprocess.Popen, IO[bytes]]:
    """``python -m flows.worker --limit 1`` against ``api_url``, its output in ``log_path``."""
    env = {
        **os.environ,
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "INFO",  # "Subscribing to runs of task(s)" tells it is up
        "PYTHONPATH": str(ROOT),
    }
    log = open(log_path, "wb")  # noqa: SIM115 (the caller closes it, with stop())
    cmd = [sys.executable, "-m", "flows.worker", "--limit", "1"]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    return proc, log


@pytest.fixture
def warm_workers(prefect_harness: str, tmp_path: Path) -> Iterator[list[int]]:
    """Two warm workers talking to the session's server; yields their process ids once
    both have subscribed."""
    logs = [tmp_path / f"worker-{i}.log" for i in range(2)]
    procs = [_start_worker(prefect_harness, log_path) for log_path in logs]
    try:
        deadline = time.time() + 120
        while not all("Subscribing to runs" in p.read_text(errors="replace") for p in logs):
            assert time.time() < deadline, "the workers did not subscribe within 120 s"
            assert all(proc.poll() is None for proc, _ in procs), "a worker exited"
            time.sleep(0.2)
        yield [p.pid for p, _ in procs]
    finally:
        for proc, log in procs:
            stop(proc, log)
        for i, log_path in enumerate(logs):  # shown by pytest when the test fails
            print(f"--- worker {i} log (tail)\n{log_path.read_text(errors='replace')[-3000:]}")


def test_warm_workers_run_trials_in_parallel_and_each_runs_several(
    prefect_harness, warm_workers, tmp_path, monkeypatch
):
    from flows.executors import TaskWorkerExecutor
    from flows.tune import run

    # The controller learns that a trial finished from its published outcome alone: with
    # the task runs never read, the study still runs to its end.
    monkeypatch.setattr(TaskWorkerExecutor, "state_seconds", 1e9)

    cache = tmp_path / "cache"
    cfg = composed(
        "n_init=3",
        *OPTIMIZER_FAST,
        "pipeline.target=stages.testing:slept_synthetic_pipeline",
        "+pipeline.kwargs.scale=0.1",  # stages take real time, so trials can overlap
        f"storage.url={cache}",
        "study=warm",
        "budget=40",
        "parallel=2",
        "executor=task_workers",
    )
    cfg["output_dir"] = str(tmp_path / "out")
    result = run(cfg)

    folder = cache / "studies" / "warm" / "trials"
    records = sorted(
        (json.loads(p.read_text()) for p in folder.glob("*.json")), key=lambda r: r["number"]
    )
    # The journal is complete: every trial told once, numbered in telling order.
    assert result.n_trials == len(records) >= 6
    assert [r["number"] for r in records] == list(range(len(records)))
    assert sorted(r["asked_as"] for r in records) == list(range(len(records)))
    assert all(r["state"] == "complete" for r in records), [r["error"] for r in records]
    assert all(r["task_run_id"] for r in records)
    # Both workers ran trials, and each in its own long-lived process: the same process ids
    # come back trial after trial (a process worker would start one per trial).
    ran_on = collections.Counter(int(r["worker"].rsplit(":", 1)[1]) for r in records)
    assert set(ran_on) == set(warm_workers), (ran_on, warm_workers)
    assert all(n >= 2 for n in ran_on.values()), ran_on
    # Each record says when its worker ran it: after the controller submitted it, for at
    # least its stages' seconds, and before the controller told it.
    for r in records:
        assert r["submitted_at"] <= r["started_at"] <= r["finished_at"] <= r["told_at"], r
        assert r["finished_at"] - r["started_at"] >= sum(r["seconds"].values())
    # Trials really overlapped in time.
    spans = sorted((r["asked_at"], r["told_at"]) for r in records)
    assert any(b[0] < a[1] for a, b in itertools.pairwise(spans))
    # No stage key was computed twice: each computed (not cached) key appears once.
    computed = [r["keys"][s] for r in records for s in r["costs"] if s not in r["cached"]]
    assert len(computed) == len(set(computed)), "a stage key was computed twice"
    assert (tmp_path / "out" / "results.csv").exists()


@pytest.mark.extended  # make test-extended: a variant of the warm workers test
def test_a_trial_no_worker_takes_is_reported_and_runs_once_one_starts(
    prefect_harness, tmp_path, monkeypatch, capfd
):
    """No task worker is up when the study starts: the waiting trial is reported once,
    with how to start a worker, and the study goes on when one starts."""
    from flows.executors import TaskWorkerExecutor
    from flows.tune import run

    monkeypatch.setattr(TaskWorkerExecutor, "waiting_warn_seconds", 2.0)
    cfg = composed(
        "n_init=2",
        *OPTIMIZER_FAST,
        "pipeline.target=stages.testing:slept_synthetic_pipeline",
        "+pipeline.kwargs.scale=0.01",
        f"storage.url={tmp_path / 'cache'}",
        "study=late",
        "budget=1000",
        "max_trials=2",
        "parallel=1",
        "executor=task_workers",
    )
    cfg["output_dir"] = str(tmp_path / "out")
    started = []
    # The worker starts 8 s into the study, well after the 2 s warning.
    timer = threading.Timer(
        8.0, lambda: started.append(_start_worker(prefect_harness, tmp_path / "worker.log"))
    )
    timer.start()
    try:
        result = run(cfg)
    finally:
        timer.cancel()
        for proc, log in started:
            stop(proc, log)
    assert started, "the study ended before the worker started"
    assert result.n_trials == 2
    err = capfd.readouterr().err
    waited = [line for line in err.splitlines() if "has waited 2 s without starting" in line]
    assert len(waited) == 1, err[-3000:]
    assert (
        waited[0].startswith("trial 0: its task run ") and "`eeipu worker --limit N`" in waited[0]
    )


def test_a_warm_trial_runs_its_subflow_without_a_heartbeat(prefect_harness, tmp_path):
    """A flow run's heartbeat thread holds it up to 1 s at exit; a warm worker's trial
    subflow runs without one (the task run carrying it is what the controller watches),
    as the controller's in-process trials do, whatever the worker's settings say."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from eeipu import SearchSpace
    from flows import StudyConfig
    from flows.executors import warm_trial_task

    log = tmp_path / "heartbeat.jsonl"
    cfg = StudyConfig.from_mapping(
        composed(
            "pipeline.target=tests.flows.crashy.heartbeat_probe_pipeline",
            f"+pipeline.kwargs.log={log}",
            f"storage.url={tmp_path / 'cache'}",
            "study=hb",
        )
    )
    space = SearchSpace.from_dict(cfg.pipeline.space)
    params = space.decode([0.5] * space.dim)  # the middle of the space
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 30}):
        out = warm_trial_task.fn(cfg.model_dump(mode="json"), 0, params)
    assert out.error is None
    assert [json.loads(line) for line in log.read_text().splitlines()] == [None]


def test_the_controller_saves_the_result_storage_block_before_any_trial(prefect_harness, tmp_path):
    """Workers starting their first trials at once must find the store's block saved (a
    save by each of them is a duplicate-key insert on the server): the executor saves it."""
    from prefect import get_client

    from flows import StudyConfig
    from flows.executors import TaskWorkerExecutor
    from flows.runtime import StudyContext
    from stages import Store

    cache = tmp_path / "cache"
    cfg = StudyConfig.from_mapping(
        composed(f"storage.url={cache}", "study=blk", "parallel=2", "executor=task_workers")
    )

    def documents() -> list:
        with get_client(sync_client=True) as client:
            return [
                d for d in client.read_block_documents() if d.data.get("url") == Store(cache).url
            ]

    assert documents() == []
    executor = TaskWorkerExecutor(StudyContext.build(cfg))
    try:
        assert [d.block_type.slug for d in documents()] == ["eeipu-store"]
    finally:
        executor.close()
