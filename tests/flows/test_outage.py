"""Storage outage: the S3 server stops mid-study; reads and writes retry with backoff, then
the study stops with one line naming the endpoint; once the server is back, re-running the
same command completes the study with nothing lost."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import boto3
import pytest
from moto.server import ThreadedMotoServer

from tests.helpers import EXECUTOR_CASES, EXECUTORS, FAST, ROOT


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _records(s3, bucket: str) -> list[dict]:
    listing = s3.list_objects_v2(Bucket=bucket, Prefix="p/studies/out/trials/")
    keys = sorted(o["Key"] for o in listing.get("Contents", []))
    return [json.loads(s3.get_object(Bucket=bucket, Key=k)["Body"].read()) for k in keys]


@pytest.mark.slow
@pytest.mark.parametrize("executor", EXECUTOR_CASES)
def test_s3_outage_retries_then_stops_clearly_and_resume_completes(tmp_path, api_env, executor):
    bucket = f"eeipu-outage-{executor}"
    port = _port()
    endpoint = f"http://127.0.0.1:{port}"
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        **os.environ,
        **api_env,
        "AWS_ACCESS_KEY_ID": "outage-key-id",
        "AWS_SECRET_ACCESS_KEY": "outage-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "PYTHONPATH": str(ROOT),
    }
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="outage-key-id",
        aws_secret_access_key="outage-secret",
    )
    s3.create_bucket(Bucket=bucket)
    args = [
        sys.executable,
        "-m",
        "flows.tune",
        *FAST,
        *EXECUTORS[executor],
        "budget=60",
        "n_init=4",
        "study=out",
        "storage=s3",
        f"storage.url=s3://{bucket}/p",
        "storage.retry_seconds=3",
        "pipeline.target=tests.flows.crashy.crashy_pipeline",
        f"+pipeline.kwargs.log={tmp_path / 'computed.jsonl'}",
        "+pipeline.kwargs.cache=/nonexistent",
        f"hydra.run.dir={tmp_path / 'out'}",
    ]
    try:
        proc = subprocess.Popen(
            args, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None and len(_records(s3, bucket)) < 3:
            time.sleep(0.1)
        before = _records(s3, bucket)
        assert len(before) >= 3, proc.stderr.read() if proc.poll() is not None else "slow"
        server.stop()  # the outage: moto keeps its data in this process
        t0 = time.time()
        stdout, stderr = proc.communicate(timeout=240)
        stopped_after = time.time() - t0

        assert proc.returncode == 2, stderr
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, stderr
        assert f"storage s3://{bucket}/p (endpoint {endpoint}) is unavailable" in errors[0]
        assert "attempts over" in errors[0] and "resume" in errors[0]
        assert "retrying in" in stdout + stderr  # backoff, reported as it happens
        assert "outage-secret" not in stdout + stderr
        assert stopped_after < 120

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()  # the storage is back
        again = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr
        after = _records(s3, bucket)
        assert [r["number"] for r in after] == list(range(len(after)))
        assert after[: len(before)] == before  # nothing told before the outage was lost
        assert sum(sum(r["costs"].values()) for r in after) >= 60.0
    finally:
        server.stop()
