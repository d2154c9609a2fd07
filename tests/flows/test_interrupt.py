"""Interrupts on a real ``eeipu tune`` subprocess (flows/_interrupt.py).

SIGINT goes to the whole process group, as a terminal's Ctrl-C does (the temporary Prefect
server of the study must survive it), SIGTERM to the process alone, as ``kill`` or
Kubernetes sends it. Each study exits 130 / 143 in time with one line, its journal holds
every told trial, and the same command then resumes it with all of them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.flows.test_parallel import workers  # noqa: F401 (a fixture)
from tests.flows.test_task_workers import warm_workers  # noqa: F401 (a fixture)
from tests.helpers import ENTRY_POINTS, OPTIMIZER_FAST, ROOT

pytestmark = pytest.mark.slow

_SLEPT = "stages.testing.slept_synthetic_pipeline"
_LINE = "interrupted after {} trials; re-run the same command to resume"


def _args(tmp: Path, name: str, scale: float, extra: list[str]) -> list[str]:
    return [
        *OPTIMIZER_FAST,
        f"pipeline.target={_SLEPT}",
        f"+pipeline.kwargs.scale={scale}",  # seconds per cost unit: ~8 per fresh trial
        "budget=60",
        "n_init=3",
        "max_trials=5",
        f"study={name}",
        f"storage.url={tmp / 'cache'}",
        f"hydra.run.dir={tmp / 'out'}",
        *extra,
    ]


def _env(tmp: Path) -> dict[str, str]:
    # No PREFECT_API_URL: the study starts its temporary server, the case a user meets.
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    return {**env, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PYTHONPATH": str(ROOT)}


class _Study:
    """``eeipu tune ARGS`` in a session of its own (its pid is its process group), its
    stderr read line by line as it comes."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [*ENTRY_POINTS["eeipu tune"], *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=ROOT,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_trial(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not any(line.startswith("trial ") for line in self.lines):
            assert self.proc.poll() is None, f"the study ended first:\n{self.output}"
            assert time.monotonic() < deadline, f"no trial line in {timeout} s:\n{self.output}"
            time.sleep(0.1)

    def send(self, signum: int, group: bool) -> None:
        if group:
            os.killpg(self.proc.pid, signum)
        else:
            os.kill(self.proc.pid, signum)

    def wait(self, timeout: float) -> tuple[int, float]:
        """The exit code, and when the process exited (``time.monotonic()``)."""
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            pytest.fail(f"not ended {timeout} s after the signal:\n{self.output}")
        ended = time.monotonic()
        self._reader.join(timeout=10)
        return rc, ended


def _records(tmp: Path, name: str) -> list[dict]:
    folder = tmp / "cache" / "studies" / name / "trials"
    records = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    assert [r["number"] for r in records] == list(range(len(records))), "journal has a gap"
    return records


def _told(records: list[dict]) -> list[tuple]:
    return [
        (r["trial_id"], json.dumps(r["params"], sort_keys=True), r["objective"]) for r in records
    ]


def _interrupt_then_resume(
    tmp: Path,
    name: str,
    signum: int,
    group: bool,
    limit: float,
    scale: float,
    extra: list[str],
    env: dict[str, str] | None = None,
    delay: float = 0.0,
) -> tuple[_Study, _Study]:
    """Start the study, signal it ``delay`` s after its first trial line, check how it
    exits, re-run it."""
    args, env = _args(tmp, name, scale, extra), {**_env(tmp), **(env or {})}
    study = _Study(args, env)
    study.wait_for_trial()
    time.sleep(delay)
    sent = time.monotonic()
    study.send(signum, group)
    rc, ended = study.wait(timeout=60)
    took = ended - sent
    print(f"{name}: exit code {rc}, {took:.1f} s after the signal")  # shown by -rP
    told = _records(tmp, name)
    assert rc == 128 + signum, study.output
    assert took <= limit, f"exited {took:.1f} s after the signal (limit {limit} s)"
    assert study.lines[-1] == _LINE.format(len(told)), study.output
    assert "Traceback" not in study.output and "ConnectError" not in study.output, study.output
    assert told, "the trial whose line was printed is not in the journal"

    again = _Study(args, env)
    assert again.wait(timeout=600)[0] == 0, again.output
    assert f"resuming after {len(told)} trials" in again.output, again.output
    records = _records(tmp, name)
    assert len(records) == 5  # max_trials
    assert _told(records[: len(told)]) == _told(told), "a told trial changed or was lost"
    return study, again


# Each signal once in make test (sequential SIGINT to the group, parallel SIGTERM), the other
# pairings in make test-extended.
@pytest.mark.parametrize(
    ("signum", "group"),
    [(signal.SIGINT, True), pytest.param(signal.SIGTERM, False, marks=pytest.mark.extended)],
    ids=["sigint-to-group", "sigterm"],
)
def test_sequential_study_stops_within_10_s_and_resumes(tmp_path, signum, group):
    # Short trials (~2.5 s), the signal 1 s into one: it finishes and is told.
    _interrupt_then_resume(tmp_path, "seq", signum, group, 10, scale=0.3, extra=[], delay=1.0)


@pytest.mark.parametrize(
    ("signum", "group"),
    [pytest.param(signal.SIGINT, True, marks=pytest.mark.extended), (signal.SIGTERM, False)],
    ids=["sigint-to-group", "sigterm"],
)
def test_parallel_study_stops_within_30_s_and_resumes(tmp_path, signum, group):
    extra = ["executor=local", "parallel=2"]
    _interrupt_then_resume(tmp_path, "par", signum, group, 30, scale=0.3, extra=extra, delay=1.0)


@pytest.mark.usefixtures("warm_workers")
@pytest.mark.extended  # make test-extended: a variant of the other interrupt tests
def test_task_worker_study_stops_within_30_s_and_resumes(tmp_path, api_env):
    # Two warm workers on the session's server (the controller's process group is not
    # theirs): trials in flight at the signal finish on them, told or adopted on resume.
    extra = ["executor=task_workers", "parallel=2"]
    _interrupt_then_resume(
        tmp_path, "tw", signal.SIGINT, True, 30, scale=0.3, extra=extra, env=api_env
    )


@pytest.mark.extended  # make test-extended: a variant of the other interrupt tests
def test_work_pool_study_stops_within_30_s_and_resumes(tmp_path, postgres_server, request):
    # Two process workers on PostgreSQL's server (each trial a new process, ~10 s longer):
    # runs still going at the deadline go on, and the re-run waits for them.
    pool, _ = request.getfixturevalue("workers")  # tests/flows/test_parallel.py
    extra = ["executor=work_pool", "parallel=2", f"work_pool={pool}"]
    env = {"PREFECT_API_URL": postgres_server.api_url}
    _interrupt_then_resume(
        tmp_path, "wp", signal.SIGTERM, False, 30, scale=0.3, extra=extra, env=env
    )


@pytest.mark.extended  # make test-extended: a variant of the sequential interrupt test
def test_a_long_sequential_trial_is_stopped_and_rerun(tmp_path):
    # A fresh trial takes ~16 s, longer than the 6 s grace: the process exits without it,
    # and the re-run re-runs it (the crash marker lists it). The signal comes 3 s into it.
    study, again = _interrupt_then_resume(
        tmp_path, "long", signal.SIGTERM, False, 10, scale=2.0, extra=[], delay=3.0
    )
    n = len([line for line in study.lines if line.startswith("trial ")])
    assert f"trial {n} was interrupted; re-running it" in again.output, again.output


def test_a_second_sigint_exits_at_once(tmp_path):
    study = _Study(_args(tmp_path, "twice", 2.0, []), _env(tmp_path))
    study.wait_for_trial()
    study.send(signal.SIGINT, group=True)
    time.sleep(1.0)
    sent = time.monotonic()
    study.send(signal.SIGINT, group=True)
    rc, ended = study.wait(timeout=60)
    assert rc == 130, study.output
    assert ended - sent <= 2.0, study.output
    told = _records(tmp_path, "twice")
    assert study.lines[-1] == _LINE.format(len(told)), study.output
