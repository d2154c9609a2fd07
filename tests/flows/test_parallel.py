"""Parallel trials: a process work pool with two Prefect workers, the moto S3 server as the
shared cache, and a study with ``parallel=2`` whose controller submits trials with
``run_deployment``. The controller and the workers talk to a Prefect server on PostgreSQL, as
users run one beyond a laptop: the SQLite-backed test server answers 503 ("database is
locked") under two workers."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import OPTIMIZER_FAST, ROOT, composed, stop

FAST = ["n_init=3", *OPTIMIZER_FAST]

pytestmark = pytest.mark.slow


# What a Prefect server and its clients log when it fails a request (on SQLite: 503, "database
# is locked"): the server's access log line, the client's retry message and error, the lock.
SERVER_TROUBLE = re.compile(
    r'HTTP/1\.1" 5\d\d\b|status code 5\d\d\b|Server error \'5\d\d|database is locked'
)


@pytest.fixture
def on_postgres(postgres_server) -> Iterator[str]:
    """The in-process controller (``run(cfg)``) talks to the workers' server on PostgreSQL."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: postgres_server.api_url}):
        yield postgres_server.api_url


def assert_no_server_errors(postgres_server, *logs: Path) -> None:
    """No 5xx answer (503 included) and no locked database in the server's log (the whole
    session's so far) nor in ``logs`` (the workers', the controller's)."""
    for path in (postgres_server.log, *logs):
        found = SERVER_TROUBLE.findall(path.read_text(errors="replace"))
        assert not found, f"{path}: {len(found)} x {sorted(set(found))}"


@pytest.fixture
def workers(postgres_server, s3_bucket: str, tmp_path: Path) -> Iterator[tuple[str, list]]:
    """Two process workers on a fresh pool, talking to the server on PostgreSQL, with the S3
    credentials and endpoint of ``s3_bucket`` in their environment."""
    pool = f"pool-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "PREFECT_API_URL": postgres_server.api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        # Poll the pool every second (default 10 s): trials here take seconds.
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PYTHONPATH": str(ROOT),  # test pipelines (tests.flows.crashy)
    }
    prefect = str(Path(sys.executable).with_name("prefect"))
    procs = []
    for i in range(2):
        log = open(tmp_path / f"worker-{i}.log", "wb")  # noqa: SIM115 (closed below)
        cmd = [prefect, "worker", "start", "--pool", pool, "--type", "process", "--limit", "1"]
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        procs.append((proc, log))
    try:
        yield pool, [p.pid for p, _ in procs]
    finally:
        for proc, log in procs:
            stop(proc, log)
        for i in range(2):  # shown by pytest when the test fails
            text = (tmp_path / f"worker-{i}.log").read_text(errors="replace")
            print(f"--- worker {i} log (tail)\n{text[-3000:]}")


def test_two_workers_share_an_s3_cache_without_computing_a_key_twice(
    on_postgres, postgres_server, s3_bucket, workers, tmp_path
):
    from flows.tune import run
    from stages import Store

    pool, pids = workers
    url = f"s3://{s3_bucket}/cache"
    cfg = composed(
        *FAST,
        "storage=s3",
        f"storage.url={url}",
        "study=par",
        "budget=32",
        "parallel=2",
        f"work_pool={pool}",
    )
    cfg["output_dir"] = str(tmp_path / "out")
    result = run(cfg)

    store = Store(url)
    names = store.list_files("studies/par/trials")
    records = [json.loads(store.read_file(f"studies/par/trials/{n}")) for n in names]
    records.sort(key=lambda r: r["number"])
    # The journal is complete: every trial told once, numbered in telling order.
    assert result.n_trials == len(records) >= 5
    assert [r["number"] for r in records] == list(range(len(records)))
    assert sorted(r["asked_as"] for r in records) == list(range(len(records)))
    assert all(r["state"] == "complete" for r in records)
    assert result.spent == pytest.approx(sum(sum(r["costs"].values()) for r in records))
    # Both workers ran trials (a process worker's runs are its child processes).
    ran_on = {int(r["worker"].rsplit(":", 1)[1]) for r in records}
    assert ran_on == set(pids), (ran_on, pids)
    # Trials really overlapped in time.
    spans = sorted((r["asked_at"], r["told_at"]) for r in records)
    assert any(b[0] < a[1] for a, b in itertools.pairwise(spans))
    # No stage key was computed twice: each computed (not cached) key appears once.
    computed = [r["keys"][s] for r in records for s in r["costs"] if s not in r["cached"]]
    assert len(computed) == len(set(computed)), "a stage key was computed twice"
    assert any(r["cached"] for r in records), "no trial reused a cached prefix"
    assert (tmp_path / "out" / "results.csv").exists()
    assert_no_server_errors(postgres_server, *tmp_path.glob("worker-*.log"))


@pytest.mark.extended  # make test-extended: a variant of test_eviction.py, test_faults.py
def test_work_pool_study_evicts_and_stops_after_failures_in_a_row(
    on_postgres, postgres_server, s3_bucket, workers, tmp_path
):
    """The loop's features with trials on the work pool: ``storage.max_bytes`` eviction
    (entries of trials in flight are protected) and ``max_failures_in_a_row``."""
    from flows.study import StudyFailed
    from flows.tune import run
    from stages import Store

    pool, _ = workers
    url = f"s3://{s3_bucket}/cache"

    def study(name: str, *overrides: str) -> Any:
        cfg = composed(
            *FAST,
            "storage=s3",
            f"storage.url={url}/{name}",
            f"study={name}",
            "parallel=2",
            f"work_pool={pool}",
            *overrides,
        )
        cfg["output_dir"] = str(tmp_path / name)
        return run(cfg)

    # Past the warm-up (3 trials, ~25 units) so that later trials store more entries.
    study("evicts", "budget=40", "storage.max_bytes=1500")
    store = Store(f"{url}/evicts")
    names = store.list_files("studies/evicts/trials")
    records = [json.loads(store.read_file(f"studies/evicts/trials/{n}")) for n in names]
    assert sum(r["evicted"] for r in records) > 0
    assert sum(size for size, _ in store.usage().values()) <= 1500

    with pytest.raises(StudyFailed) as info:
        study(
            "fails",
            "budget=100",
            "max_failures_in_a_row=2",
            "+pipeline.kwargs.fail_stage=prep",
            "+pipeline.kwargs.fail_above=-100",
        )
    assert "2 trials failed in a row (max_failures_in_a_row)" in str(info.value)
    store = Store(f"{url}/fails")  # its own cache: no prep entry to load instead of failing
    names = store.list_files("studies/fails/trials")
    states = [json.loads(store.read_file(f"studies/fails/trials/{n}"))["state"] for n in names]
    assert states and set(states) == {"failed"} and 2 <= len(states) <= 3
    assert_no_server_errors(postgres_server, *tmp_path.glob("worker-*.log"))


@pytest.mark.extended  # make test-extended: a variant of test_crash_resume.py
def test_sigkill_of_a_work_pool_study_waits_for_its_runs_and_recomputes_nothing(
    postgres_server, workers, tmp_path
):
    """Kill the controller with two trials running on the workers: their flow runs go on.
    The resumed controller waits for those runs (by the flow run ids in its crash marker)
    instead of starting the trials again; nothing told is lost, nothing stored recomputed."""
    pool, _ = workers
    cache = tmp_path / "cache"
    log = tmp_path / "computed.jsonl"
    args = [
        sys.executable,
        "-m",
        "flows.tune",
        *FAST,
        "n_init=2",
        "budget=30",
        "study=killed",
        "parallel=2",
        f"work_pool={pool}",
        f"storage.url={cache}",
        "pipeline.target=tests.flows.crashy.crashy_pipeline",
        f"+pipeline.kwargs.log={log}",
        f"+pipeline.kwargs.cache={cache}",
        f"hydra.run.dir={tmp_path / 'out'}",
    ]
    env = {**os.environ, "PREFECT_API_URL": postgres_server.api_url, "PYTHONPATH": str(ROOT)}
    marker = cache / "studies" / "killed" / "running.json"
    trials = cache / "studies" / "killed" / "trials"

    with open(tmp_path / "attempt-0.log", "w") as out:
        proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.time() + 240
        in_flight: list[dict] = []
        while time.time() < deadline and proc.poll() is None:
            if marker.exists() and len(list(trials.glob("*.json"))) >= 1:
                running = json.loads(marker.read_text())["trials"]
                told = {json.loads(p.read_text())["trial_id"] for p in trials.glob("*.json")}
                in_flight = [t for t in running if t["trial_id"] not in told and t["ref"]]
                if len(in_flight) == 2:
                    break
            time.sleep(0.05)
        assert proc.poll() is None, (tmp_path / "attempt-0.log").read_text()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert len(in_flight) == 2
    before = [json.loads(p.read_text()) for p in sorted(trials.glob("*.json"))]

    resumed = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert resumed.stderr.count("waiting for its flow run") >= 1
    records = [json.loads(p.read_text()) for p in sorted(trials.glob("*.json"))]
    assert [r["number"] for r in records] == list(range(len(records)))
    assert records[: len(before)] == before  # nothing told was lost or changed
    told_runs = {r["flow_run_id"] for r in records}
    # The runs the crash left are told from their own flow runs, not started again.
    waited = [t for t in in_flight if f"waiting for its flow run {t['ref']}" in resumed.stderr]
    assert waited and all(t["ref"] in told_runs for t in waited)
    computed = [json.loads(line) for line in log.read_text().splitlines()]
    assert not [c for c in computed if c["stored"]], "a stored stage was computed again"
    assert len({r["trial_id"] for r in records}) == len(records)
    (tmp_path / "resumed.log").write_text(resumed.stdout + resumed.stderr)
    logs = [*tmp_path.glob("worker-*.log"), tmp_path / "attempt-0.log", tmp_path / "resumed.log"]
    assert_no_server_errors(postgres_server, *logs)
