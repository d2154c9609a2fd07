"""Shared fixtures: one Prefect test server per session (SQLite), one Prefect server on
PostgreSQL for the tests with several workers, and a moto S3 server.

Prefect reads its home and settings at import, so the environment is set here, before any
test module imports prefect.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

# gpytorch/linear_operator call torch.jit.script at import (deprecated in torch 2.13); the
# pyproject filter only covers collected tests, not conftest-time imports.
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated")

_PREFECT_HOME = tempfile.mkdtemp(prefix="eeipu-prefect-home-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Tasks run outside flows in some tests; their API log handler would warn on every run.
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
logging.getLogger("httpx").setLevel(logging.WARNING)

# absl (imported by rouge-score in the t5_distill stages) creates its log handler on the
# sys.stderr of the moment it is first imported. Inside a test that is pytest's capture
# stream, and when Hydra's logging.config.dictConfig (tests/flows) later closes the old
# handlers, absl's close() closes that stream too unless it is the current sys.stderr: pytest
# then dies with "lost sys.stderr". Even here (pytest's global capture is sys.stderr while
# this file is imported), and dictConfig closes every handler ever made, so the handler is
# pointed at the real stderr, which absl never closes. (absl comes with rouge-score in the
# `examples` extra, which tests/examples needs.)
with contextlib.suppress(ImportError):
    import absl.logging

    absl.logging.get_absl_handler().python_handler.stream = sys.__stderr__


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[str]:
    """A temporary Prefect server for the whole session; yields its API URL."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    # Without a heartbeat each flow run skips a ~1 s wait for the heartbeat thread.
    with (
        temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
        prefect_test_harness(server_startup_timeout=120),
    ):
        yield str(PREFECT_API_URL.value())


@pytest.fixture
def api_env(prefect_harness: str) -> dict[str, str]:
    """Subprocesses talk to the session's Prefect server instead of starting their own."""
    return {
        "PREFECT_API_URL": prefect_harness,
        "PREFECT_HOME": os.environ["PREFECT_HOME"],
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }


@dataclasses.dataclass(frozen=True)
class PrefectServer:
    api_url: str
    log: Path  # the server's output, with uvicorn's access log (one line per request)


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """A Prefect server on its own PostgreSQL, started as ``make server DB=postgres`` starts
    one (``tools/pg-prefect``), on free ports of 127.0.0.1; stopped after the session."""
    home = tmp_path_factory.mktemp("postgres-server")
    # Not under pytest's base directory: as root the cluster belongs to the `postgres` user,
    # which cannot enter /tmp/pytest-of-root; tools/pg-prefect creates it and hands it over.
    data = Path(tempfile.gettempdir()) / f"eeipu-pg-{uuid.uuid4().hex[:8]}"
    port = _free_port()
    cmd = [
        str(Path(__file__).resolve().parents[1] / "tools" / "pg-prefect"),
        str(data),
        str(_free_port()),
        str(Path(sys.executable).with_name("prefect")),
        *("server", "start", "--host", "127.0.0.1", "--port", str(port), "--log-level", "INFO"),
    ]
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    env.pop("PREFECT_API_URL", None)
    server = PrefectServer(f"http://127.0.0.1:{port}/api", home / "server.log")
    with open(server.log, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{server.api_url}/health", timeout=5),
            ):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = server.log.read_text(errors="replace")[-3000:]
                pytest.fail(f"the Prefect server on PostgreSQL did not start:\n{tail}")
            time.sleep(0.5)
        yield server
    finally:
        proc.terminate()  # tools/pg-prefect stops the server, then PostgreSQL
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 (server mode, so subprocesses can reach it too)."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket on the moto server, with fake credentials in the environment."""
    import uuid

    import boto3

    env = {
        "AWS_ACCESS_KEY_ID": "testing-key-id",
        "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
        "AWS_SESSION_TOKEN": "testing-session-token",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": moto_endpoint,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    bucket = f"eeipu-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1").create_bucket(
        Bucket=bucket
    )
    return bucket


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that runs a PostgreSQL-backed Prefect server ``postgres`` (so
    ``make test-fast`` can leave them out) and keep them on one xdist worker (``--dist
    loadgroup``), so that a run starts one such server, not one per worker.

    Under pytest-xdist (``make test``: two workers) the slow tests come first, so that the
    last minutes are not one long test on one worker while the other waits. Every worker
    sorts alike, as xdist requires."""
    for item in items:
        if "postgres_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)
            item.add_marker(pytest.mark.xdist_group("postgres"))
    if hasattr(config, "workerinput"):
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)
