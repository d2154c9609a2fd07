"""Stopping a study cleanly on SIGINT or SIGTERM, and the temporary Prefect server it uses.

    run_watched(fn, grace=...)   run ``fn`` (the study) in a thread; the main thread handles
                                 SIGINT and SIGTERM and enforces the ``grace`` deadline
    interrupted()                the first signal's number, else None: the loop polls it
    stop_by()                    when the loop should stop waiting for trials in flight
    journaled(n)                 the loop says how many trials its journal holds
    prefect_api()                a temporary Prefect server in its own session, if needed
    exit_interrupted(exc)        the one line, the server stopped, exit 130 / 143

What an interrupt does. The first SIGINT (Ctrl-C, which a terminal sends to the whole
process group) or SIGTERM (``kill``, a scheduler, Kubernetes) stops the asking: the study
loop asks no new trial and tells the trials in flight that finish within ``grace`` seconds
(6 for a sequential study, 22 with several trials at a time). Trials still running at the
deadline are *abandoned*, not cancelled: a stage cannot be stopped half-way in a thread,
and a trial on a Prefect worker keeps its work (its stages are stored; a re-run adopts
them, or waits for that very run). The process then prints one line, ``interrupted after N
trials; re-run the same command to resume``, and exits 130 (SIGINT) or 143 (SIGTERM). A
second signal exits at once. Nothing told is lost: every told trial is in the journal
before the loop polls again, and the crash marker lists the trials in flight, so the
re-run re-runs them (``flows/_journal.py``); cache entries are written atomically
(``stages/_store.py``), so an exit in the middle of a write leaves no torn entry.

Why the study runs in a thread. Prefect's flow engine replaces the SIGTERM handler of the
main thread with its own, which raises ``TerminationSignal`` wherever the main thread is
(in a journal write, say), and catches ``BaseException``\\ s from user code (a
``KeyboardInterrupt`` landing during a subflow's teardown is logged at debug level and
dropped: ``prefect/flow_engine.py``). Outside the main thread it installs no handler, so
the study runs in a thread and this module's handlers, in the main thread, decide. (A
process started in the background by a non-interactive shell inherits SIGINT ignored, which
is why ``kill -INT`` on one such ``eeipu`` process used to be ignored; these handlers take
SIGINT back, since a scheduler's SIGINT means stop.)

Why our own temporary server. Without ``PREFECT_API_URL`` Prefect starts a temporary server
as a child in the controller's process group: Ctrl-C reached it too, it died first, and the
study's last requests failed with ``ConnectError``. :func:`prefect_api` starts the same
server (Prefect's command line) in a session of its own, under a small guard that stops it
when this process ends, however it ends (the guard's stdin closes).

The signal state is process-wide, as signal dispositions are: one study per process at a
time (Hydra's multirun runs its jobs one after another).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = [
    "PARALLEL_GRACE",
    "SEQUENTIAL_GRACE",
    "StudyInterrupted",
    "exit_interrupted",
    "interrupted",
    "is_temporary_server",
    "journaled",
    "prefect_api",
    "run_watched",
    "stop_by",
]

T = TypeVar("T")

#: Seconds a sequential study's trial in flight may take to finish after the first signal
#: (then the process exits without it): exit within 10 s, server stop included.
SEQUENTIAL_GRACE = 6.0
#: The same with several trials at a time (exit within 30 s).
PARALLEL_GRACE = 22.0
#: The loop stops waiting this long before the deadline, to unwind and report its flow run.
_UNWIND = 2.0
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StudyInterrupted(Exception):
    """The study stopped on a signal; ``n_trials`` are in its journal.

    ``exit_code`` is the shell's convention for a process ended by signal ``signum``:
    130 for SIGINT, 143 for SIGTERM.
    """

    def __init__(self, signum: int, n_trials: int) -> None:
        self.signum, self.n_trials = signum, n_trials
        super().__init__(f"interrupted after {n_trials} trials; re-run the same command to resume")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@dataclass
class _Watch:
    signum: int | None = None  # the first signal received
    at: float | None = None  # when (time.monotonic())
    grace: float = SEQUENTIAL_GRACE
    told: int = 0  # trials in the journal, as the loop last said
    guard: subprocess.Popen | None = None  # the temporary server's guard
    server_url: str | None = None  # its API URL
    early: tuple[str, Any] | None = None  # launched by early_server: (url, its output file)


_watch = _Watch()


def interrupted() -> int | None:
    """The number of the first SIGINT or SIGTERM this process received, else None."""
    return _watch.signum


def stop_by() -> float | None:
    """The ``time.monotonic()`` by which the study loop should stop waiting for trials in
    flight (None: not interrupted)."""
    if _watch.at is None:
        return None
    return _watch.at + _watch.grace - _UNWIND


def journaled(n_trials: int) -> None:
    """The study loop's count of trials in the journal (said if the process must exit while
    the loop waits for a trial)."""
    _watch.told = n_trials


def _on_signal(signum: int, frame: Any) -> None:
    if _watch.signum is not None:
        # The second signal: exit at once, as an impatient user (or a scheduler) expects.
        exit_interrupted(StudyInterrupted(_watch.signum, _watch.told))
    _watch.signum, _watch.at = signum, time.monotonic()
    # Prefect's and the trials' error logs about what the stop breaks (a crashed subflow, a
    # failed flow run) would bury the one line that matters.
    logging.disable(logging.CRITICAL)


def run_watched(fn: Callable[..., T], *args: Any, grace: float = SEQUENTIAL_GRACE) -> T:
    """``fn(*args)`` in a thread while this (main) thread handles SIGINT and SIGTERM.

    Raises:
        StudyInterrupted: a signal came and ``fn`` did not end within ``grace`` seconds (or
            ``fn`` raised it itself). Outside the main thread ``fn`` runs there, unwatched.
    """
    if threading.current_thread() is not threading.main_thread():
        return fn(*args)
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = fn(*args)
        except BaseException as exc:  # handed to the main thread
            outcome["error"] = exc

    _watch.signum = _watch.at = None
    _watch.grace, _watch.told = grace, 0
    # Daemon: a trial still running when the deadline passes does not hold the exit.
    thread = threading.Thread(
        target=contextvars.copy_context().run, args=(target,), name="eeipu-study", daemon=True
    )
    previous = {s: signal.signal(s, _on_signal) for s in _SIGNALS}
    try:
        thread.start()
        while thread.is_alive():
            thread.join(0.1)  # signal handlers run between waits
            if _watch.at is not None and time.monotonic() > _watch.at + grace:
                raise StudyInterrupted(_watch.signum, _watch.told)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def exit_interrupted(exc: StudyInterrupted) -> None:
    """Print ``exc``'s one line, stop the temporary server and exit with ``exc.exit_code``
    now: trials abandoned in threads would hold a normal exit until they end."""
    # On a terminal, over a progress bar the study had no time to close.
    clear = "\r\033[K" if sys.stderr.isatty() else ""
    print(clear + str(exc), file=sys.stderr, flush=True)
    _stop_server(wait=0.0)
    sys.stdout.flush()
    os._exit(exc.exit_code)


# ---------------------------------------------------------------------- the temporary server
# Runs the server command (argv[1:]) until its stdin closes: when the controller exits, by
# any path (SIGKILL too), the server goes with it, although it no longer shares its group.
_GUARD = """\
import signal, subprocess, sys
for s in (signal.SIGINT, signal.SIGTERM):
    signal.signal(s, signal.SIG_IGN)
server = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL)
try:
    sys.stdin.buffer.read()
finally:
    server.terminate()
    try:
        server.wait(5)
    except subprocess.TimeoutExpired:
        server.kill()
"""


@contextlib.contextmanager
def early_server() -> Iterator[None]:
    """Within, the temporary server that :func:`prefect_api` will want is starting: launched
    on entry, not waited for, so that its start (seconds of imports and database set-up in
    its own process) overlaps the controller's imports of torch and Prefect's engine.
    :func:`prefect_api` takes it over; if nothing did (bad input found later), it is stopped
    on exit. Nothing happens when a server is configured or one is running already."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    wanted = not PREFECT_API_URL.value() and PREFECT_SERVER_EPHEMERAL_ENABLED.value()
    if wanted and _watch.guard is None:
        _watch.early = _launch_server()
    try:
        yield
    finally:
        if _watch.early is not None:  # not taken by prefect_api
            _watch.early[1].close()
            _watch.early = None
            _stop_server(wait=0.0)


@contextlib.contextmanager
def prefect_api() -> Iterator[str | None]:
    """Within, Prefect talks to a temporary server of ours when ``PREFECT_API_URL`` is not
    set (as Prefect would start one; see the module docstring); yields its API URL, or
    None when a server is configured (or Prefect's temporary server is switched off)."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_EPHEMERAL_ENABLED,
        temporary_settings,
    )

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        yield None
        return
    url = _start_server()
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            try:
                yield url
            finally:
                if _watch.signum is None:
                    _drain_to_server()
    finally:
        # After an interrupt the guard stops the server on its own: nothing to wait for.
        _stop_server(wait=5.0 if _watch.signum is None else 0.0)


def _drain_to_server(timeout: float = 30.0) -> None:
    """Deliver the events and logs Prefect still queues for the temporary server while it
    runs, and stop the services that queue them (as Prefect's own test harness does before
    it stops its server). Without this, Prefect's one process-wide events worker keeps its
    client on this server's URL: the next study in the same process (Hydra multirun, a
    benchmark) sends its events to a stopped server, and the process exit waits ~7 s per
    undelivered event, minutes in all."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (APILogWorker, EventsWorker):
        service.drain_all(timeout=timeout)


def is_temporary_server(url: str) -> bool:
    """Whether ``url`` is the API of :func:`prefect_api`'s temporary server, which no
    worker started elsewhere can know."""
    return url == _watch.server_url


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _server_command(port: int) -> tuple[list[str], dict[str, str]]:
    """Prefect's own temporary server command (``SubprocessASGIServer``) and environment."""
    import prefect
    from prefect.settings import get_current_settings

    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        "--app-dir",
        str(prefect.__module_path__.parent),
        "--factory",
        "prefect.server.api.server:create_app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "error",
        "--lifespan",
        "on",
    ]
    env = {
        **os.environ,
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
        **get_current_settings().to_environment_variables(exclude_unset=True),
    }
    return argv, env


def _start_server() -> str:
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    timeout = float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())
    said = ""
    for _ in range(3):  # another process may take the free port before the server binds
        # The one early_server launched, if any, first.
        launched, _watch.early = _watch.early or _launch_server(), None
        url, output = launched
        with output:
            if _wait_healthy(url, _watch.guard, timeout):
                _watch.server_url = url
                return url
            _stop_server(wait=5.0)
            output.seek(0)
            said = output.read().decode(errors="replace")[-2000:]
    raise RuntimeError(
        f"the temporary Prefect server did not start within {timeout:g} s; it said:\n{said}"
    )


def _launch_server() -> tuple[str, Any]:
    """Start the server's guard (``_watch.guard``) on a free port, without waiting; its API
    URL and the file that takes the server's output."""
    port = _free_port()
    argv, env = _server_command(port)
    # The server's output goes to a file, not to our stdout and stderr: a pipe reading them
    # (`eeipu tune ... | tee`) would otherwise wait for the server to stop after we exit.
    output = tempfile.TemporaryFile()  # noqa: SIM115 (the caller closes it)
    _watch.guard = subprocess.Popen(
        [sys.executable, "-c", _GUARD, *argv],
        stdin=subprocess.PIPE,
        stdout=output,
        stderr=output,
        env=env,
        start_new_session=True,  # the terminal's Ctrl-C reaches the controller only
    )
    return f"http://127.0.0.1:{port}/api", output


def _wait_healthy(url: str, guard: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and guard.poll() is None:
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/health", timeout=2):
            return True
        time.sleep(0.1)
    return False


def _stop_server(wait: float) -> None:
    guard, _watch.guard, _watch.server_url = _watch.guard, None, None
    if guard is None:
        return
    with contextlib.suppress(OSError):
        guard.stdin.close()  # the guard stops the server (killing it after 5 s), then exits
    if wait > 0:
        # As Prefect does for its own: the next study of a multirun then starts on a
        # database that no server uses any more.
        with contextlib.suppress(subprocess.TimeoutExpired):
            guard.wait(wait + 1.0)
