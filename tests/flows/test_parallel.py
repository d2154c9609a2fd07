"""Parallel trials: a process work pool with two Prefect workers, the moto S3 server as the
shared cache, and a study with ``parallel=2`` whose controller submits trials with
``run_deployment``."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.flows.test_tune import OPTIMIZER_FAST, ROOT, composed

FAST = ["n_init=3", *OPTIMIZER_FAST]

pytestmark = pytest.mark.slow


@pytest.fixture
def workers(prefect_harness: str, s3_bucket: str, tmp_path: Path) -> Iterator[tuple[str, list]]:
    """Two process workers on a fresh pool, talking to the session's server, with the S3
    credentials and endpoint of ``s3_bucket`` in their environment."""
    pool = f"pool-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_harness,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        # Poll the pool every second (default 10 s): trials here take seconds.
        "PREFECT_WORKER_QUERY_SECONDS": "1",
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
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
        for i in range(2):  # shown by pytest when the test fails
            text = (tmp_path / f"worker-{i}.log").read_text(errors="replace")
            print(f"--- worker {i} log (tail)\n{text[-3000:]}")


def test_two_workers_share_an_s3_cache_without_computing_a_key_twice(
    prefect_harness, s3_bucket, workers, tmp_path
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
    spans = sorted((r["started_at"], r["finished_at"]) for r in records)
    assert any(b[0] < a[1] for a, b in itertools.pairwise(spans))
    # No stage key was computed twice: each computed (not cached) key appears once.
    computed = [r["keys"][s] for r in records for s in r["costs"] if s not in r["cached"]]
    assert len(computed) == len(set(computed)), "a stage key was computed twice"
    assert any(r["cached"] for r in records), "no trial reused a cached prefix"
    assert (tmp_path / "out" / "results.csv").exists()
