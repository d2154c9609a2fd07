"""Runtime costs of the pipeline layer: Prefect overhead, cache hits, store existence checks.

Prints markdown tables (progress goes to stderr) for:

1. Prefect overhead per trial and per stage: the 3-stage ``synthetic_pipeline()`` (trivial
   stages) through ``run_pipeline`` inside a Prefect flow, all stages cached (same params
   again), versus calling the plain stage functions directly. Also shown: a trial whose
   stages all miss (compute + store), and one whole flow run per cached trial.
2. Cache-hit load time versus recompute time of a stage that sleeps and returns a ~10 MB
   numpy array, on local disk and on S3 (moto), from ``TrialResult.costs/seconds/cached``.
3. ``Store.exists`` calls per second (hits and misses) on local disk and on S3 (moto server
   on 127.0.0.1, in this process), for a store holding 200 entries; ``StoreCacheView``
   construction (one listing) time and ``is_cached`` calls per second.

Everything runs against a temporary Prefect server and a moto S3 server, both on 127.0.0.1,
with PREFECT_HOME and the stores in temporary folders that are removed at the end.

Run (about 1-3 minutes; ``--quick`` for a smoke run with tiny sizes)::

    .venv/bin/python benchmarks/bench_runtime.py
    .venv/bin/python benchmarks/bench_runtime.py --quick
    .venv/bin/python benchmarks/bench_runtime.py --reps 50 --prefect-logs
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import platform
import re
import shutil
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Sizes:
    reps: int
    payload_mb: float
    payload_sleep: float
    payload_reps: int
    entries: int
    exists_calls: int
    view_reps: int


def _sizes(args: argparse.Namespace) -> Sizes:
    if args.quick:
        return Sizes(
            reps=args.reps or 3,
            payload_mb=1.0,
            payload_sleep=0.05,
            payload_reps=1,
            entries=20,
            exists_calls=20,
            view_reps=2,
        )
    return Sizes(
        reps=args.reps or 20,
        payload_mb=10.0,
        payload_sleep=0.5,
        payload_reps=3,
        entries=200,
        exists_calls=400,
        view_reps=10,
    )


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ms(xs: list[float]) -> str:
    """mean / median / sd of seconds, in ms."""
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{1e3 * statistics.mean(xs):.2f} | {1e3 * statistics.median(xs):.2f} | {1e3 * sd:.2f}"


def _rate(n: int, seconds: float) -> str:
    return f"{n / seconds:,.0f}" if seconds > 0 else "inf"


def _mid_params(space: dict[str, dict[str, dict[str, Any]]], frac: float) -> dict[str, Any]:
    return {
        s: {x: v["low"] + frac * (v["high"] - v["low"]) for x, v in sec.items()}
        for s, sec in space.items()
    }


# ---------------------------------------------------------------------- environment
def _setup_env(prefect_home: str, prefect_logs: bool) -> None:
    """Must run before prefect is imported: Prefect reads its settings at import."""
    os.environ["PREFECT_HOME"] = prefect_home
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
    if not prefect_logs:
        # One INFO line per task run would drown the tables; --prefect-logs keeps them.
        os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's per-request lines


class _RetryCounter(logging.Filter):
    """Counts the Prefect client's retries (and their back-off sleeps) by reading its DEBUG
    message "... Another attempt will be made in Xs ..."; passes on only the records the
    logger would have emitted anyway.

    The temporary server keeps its state in SQLite; while its background services write
    events, API calls can get 503 (database busy) and the client sleeps ~2 s before retrying.
    """

    def __init__(self) -> None:
        super().__init__()
        self.sleeps: list[float] = []
        self._logger = logging.getLogger("prefect.client")
        self._pass_level = logging.WARNING
        self._old_level = logging.NOTSET

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.INFO:
            match = re.search(r"Another attempt will be made in ([0-9.]+)s", record.getMessage())
            if match:
                self.sleeps.append(float(match.group(1)))
        return record.levelno >= self._pass_level

    def install(self) -> None:
        self._pass_level = self._logger.getEffectiveLevel()
        self._old_level = self._logger.level
        self._logger.setLevel(logging.DEBUG)
        self._logger.addFilter(self)

    def remove(self) -> None:
        self._logger.removeFilter(self)
        self._logger.setLevel(self._old_level)


RETRIES = _RetryCounter()


@contextlib.contextmanager
def _prefect_server() -> Iterator[str]:
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    with (
        temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
        prefect_test_harness(server_startup_timeout=120),
    ):
        RETRIES.install()  # after prefect has configured its logging
        try:
            yield str(PREFECT_API_URL.value())
        finally:
            RETRIES.remove()


@contextlib.contextmanager
def _moto_s3() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 with fake credentials in this process's environment;
    yields a fresh bucket's name."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "testing-key-id",
        "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
        "AWS_SESSION_TOKEN": "testing-session-token",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        bucket = f"eeipu-bench-{uuid.uuid4().hex[:8]}"
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
            Bucket=bucket
        )
        yield bucket
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _env_facts(sizes: Sizes, api: str) -> list[str]:
    import moto
    import numpy
    import prefect
    import s3fs
    import torch

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        "## Environment",
        "",
        f"- python {platform.python_version()} ({platform.python_implementation()}), "
        f"{platform.platform()}",
        f"- prefect {prefect.__version__}, torch {torch.__version__}, numpy {numpy.__version__}, "
        f"s3fs {s3fs.__version__}, moto {moto.__version__}",
        f"- cores: os.cpu_count()={os.cpu_count()}, usable={usable}",
        f"- load average at start (1/5/15 min): {load}",
        f"- Prefect API: temporary server at {api}; Prefect log level "
        f"{os.environ.get('PREFECT_LOGGING_LEVEL', 'default (INFO)')}",
        f"- sizes: reps={sizes.reps}, payload={sizes.payload_mb:g} MB after a "
        f"{sizes.payload_sleep:g} s sleep x{sizes.payload_reps}, store entries={sizes.entries}, "
        f"exists calls={sizes.exists_calls}, view constructions={sizes.view_reps}",
        "",
    ]


# ---------------------------------------------------------------------- 1. overhead
def _direct_trial(pipe: Any, params: dict[str, Any]) -> tuple[float, dict[str, float]]:
    """Call the plain stage functions in order; (trial seconds, {stage: seconds})."""
    from stages import Reported

    values: dict[str, Any] = {}
    per: dict[str, float] = {}
    start = time.perf_counter()
    for s in pipe.stages:
        kwargs = {i: values[i] for i in s.inputs}
        own = dict(params[s.name])
        t0 = time.perf_counter()
        out = s.func(**kwargs, **own)
        per[s.name] = time.perf_counter() - t0
        values[s.output] = out.value if isinstance(out, Reported) else out
    total = time.perf_counter() - start
    pipe.objective(values[pipe.sink.output])
    return total, per


def bench_overhead(sizes: Sizes, root: str) -> list[str]:
    from prefect import flow

    from stages import Store, run_pipeline
    from stages.testing import synthetic_pipeline

    pipe = synthetic_pipeline()
    names = pipe.stage_names
    space = pipe.space_dict()
    params = _mid_params(space, 0.37)
    store = Store(os.path.join(root, "overhead"))

    _log(f"1. direct calls x{sizes.reps}")
    _direct_trial(pipe, params)  # warm-up (botorch/torch first-call costs)
    direct = [_direct_trial(pipe, params) for _ in range(sizes.reps)]

    @flow(name="bench-trials")
    def trials(
        params: dict[str, Any], reps: int, fresh: bool
    ) -> list[tuple[float, dict[str, float], dict[str, bool]]]:
        out = []
        for i in range(reps):
            # Fresh params lie in [0.5, 0.8] of each range; the cached ones at 0.37.
            p = _mid_params(space, 0.5 + 0.3 * (i + 0.5) / reps) if fresh else params
            start = time.perf_counter()
            result = run_pipeline(pipe, p, store)
            wall = time.perf_counter() - start
            out.append((wall, dict(result.seconds), dict(result.cached)))
        return out

    @flow(name="bench-trial")
    def trial(params: dict[str, Any]) -> dict[str, bool]:
        return dict(run_pipeline(pipe, params, store).cached)

    _log("1. first run of the params (fills the cache; saves the store's Prefect block)")
    first = trials(params, 1, False)
    if any(first[0][2].values()):
        raise RuntimeError(f"first run should miss everywhere, got cached={first[0][2]}")
    _log(f"1. run_pipeline, all cached, in one flow x{sizes.reps}")
    cached = trials(params, sizes.reps, False)
    for _, _, hit in cached:
        if not all(hit.values()):
            raise RuntimeError(f"expected all stages cached, got {hit}")
    _log(f"1. run_pipeline, all miss, in one flow x{sizes.reps}")
    missed = trials(params, sizes.reps, True)
    for _, _, hit in missed:
        if any(hit.values()):
            raise RuntimeError(f"expected all stages to miss, got {hit}")
    _log(f"1. one flow run per cached trial x{sizes.reps}")
    flow_walls, backoffs, retried = [], [], 0
    for _ in range(sizes.reps):
        before = len(RETRIES.sleeps)
        start = time.perf_counter()
        hit = trial(params)
        flow_walls.append(time.perf_counter() - start)
        backoffs.append(sum(RETRIES.sleeps[before:]))
        retried += len(RETRIES.sleeps) > before
        if not all(hit.values()):
            raise RuntimeError(f"expected all stages cached, got {hit}")

    d_trial = [t for t, _ in direct]
    c_trial = [t for t, _, _ in cached]
    m_trial = [t for t, _, _ in missed]
    n = len(names)
    mean = statistics.mean
    lines = [
        "## 1. Prefect overhead: 3 trivial stages (synthetic_pipeline), local store",
        "",
        f"Per trial, {sizes.reps} repetitions each (ms). Cached = same params again, every "
        "stage a Prefect cache hit; miss = fresh params, every stage runs and is stored.",
        "",
        "| per trial | mean ms | median ms | sd ms | overhead vs direct (mean ms) |",
        "|---|---:|---:|---:|---:|",
        f"| plain stage functions, called directly | {_ms(d_trial)} | - |",
        f"| run_pipeline inside a flow, all 3 cached | {_ms(c_trial)} | "
        f"{1e3 * (mean(c_trial) - mean(d_trial)):.2f} |",
        f"| run_pipeline inside a flow, all 3 miss (run + store) | {_ms(m_trial)} | "
        f"{1e3 * (mean(m_trial) - mean(d_trial)):.2f} |",
        f"| one flow run per trial (flow + run_pipeline), all cached | {_ms(flow_walls)} | "
        f"{1e3 * (mean(flow_walls) - mean(d_trial)):.2f} |",
        f"| same, minus the client's retry back-off sleeps ({retried}/{sizes.reps} trials "
        f"retried an API call) | {_ms([w - b for w, b in zip(flow_walls, backoffs, strict=True)])} "
        f"| {1e3 * (mean(flow_walls) - mean(backoffs) - mean(d_trial)):.2f} |",
        "",
        "A trial in its own flow run pays for creating the flow run and setting its states "
        "through the API. Against this temporary SQLite-backed server, creating a flow run "
        "often gets 503 (database busy while the server records the previous run's events) "
        "and Prefect's client sleeps ~2 s before retrying; the row below subtracts those "
        "sleeps.",
        "",
        "Per stage (mean ms). Task = wall seconds of the stage's Prefect task "
        "(`TrialResult.seconds`).",
        "",
        "| stage | direct call | cached task | overhead (cached - direct) | miss task | "
        "overhead (miss - direct) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in names:
        d = mean(per[name] for _, per in direct)
        c = mean(sec[name] for _, sec, _ in cached)
        m = mean(sec[name] for _, sec, _ in missed)
        lines.append(
            f"| {name} | {1e3 * d:.3f} | {1e3 * c:.2f} | {1e3 * (c - d):.2f} | "
            f"{1e3 * m:.2f} | {1e3 * (m - d):.2f} |"
        )
    d_all = mean(d_trial) / n
    c_all = mean(c_trial) / n
    m_all = mean(m_trial) / n
    lines += [
        f"| **per stage (trial / {n})** | {1e3 * d_all:.3f} | {1e3 * c_all:.2f} | "
        f"{1e3 * (c_all - d_all):.2f} | {1e3 * m_all:.2f} | {1e3 * (m_all - d_all):.2f} |",
        "",
    ]
    return lines


# ---------------------------------------------------------------------- 2. cache hits
def _payload_pipeline(mb: float, sleep: float) -> Any:
    import numpy as np

    from stages import Pipeline, stage

    n = int(mb * 1e6 / 8)

    @stage(space={"seed": {"type": "int", "low": 0, "high": 10**9}})
    def make(seed: int) -> Any:
        time.sleep(sleep)  # stands in for real work
        return np.random.default_rng(seed).standard_normal(n)

    @stage(inputs=["make"])
    def summarize(make: Any) -> float:
        return float(make.mean())

    return Pipeline([make, summarize])


def bench_payload(sizes: Sizes, stores: list[tuple[str, Any]]) -> list[str]:
    from prefect import flow

    from stages import run_pipeline

    pipe = _payload_pipeline(sizes.payload_mb, sizes.payload_sleep)
    lines = [
        f"## 2. Cache hit vs recompute: stage `make` sleeps {sizes.payload_sleep:g} s and "
        f"returns a {sizes.payload_mb:g} MB float64 numpy array",
        "",
        f"Mean over {sizes.payload_reps} fresh seeds (s). Recompute cost = `costs` of the run "
        "(function wall time); recompute task = its Prefect task wall time (`seconds`: "
        "function + pickle + sha256 + write); hit = `costs` == `seconds` of the cache hit "
        "(metadata + payload read, sha256 check, unpickle). Payload MB = bytes stored: "
        "Prefect's `pickle` serializer stores `base64.encodebytes` of the pickle, ~1.35x the "
        "array.",
        "",
        "| store | payload MB | recompute cost s | recompute task s | hit load s | "
        "hit MB/s | hit / recompute task |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]

    def twice(store: Any) -> Callable[[int], tuple[Any, Any]]:
        @flow(name="bench-payload")
        def run_twice(seed: int) -> tuple[Any, Any]:
            params = {"make": {"seed": seed}}
            return run_pipeline(pipe, params, store), run_pipeline(pipe, params, store)

        return run_twice

    for label, store in stores:
        run_twice = twice(store)
        _log(f"2. payload on {label} x{sizes.payload_reps} (+1 warm-up)")
        run_twice(10**6)  # warm-up: block save, imports, first-write costs
        cost, task, hit, size = [], [], [], 0
        for i in range(sizes.payload_reps):
            miss, again = run_twice(i)
            if miss.cached["make"] or not again.cached["make"]:
                raise RuntimeError(f"expected miss then hit, got {miss.cached}, {again.cached}")
            cost.append(miss.costs["make"])
            task.append(miss.seconds["make"])
            hit.append(again.costs["make"])
            size = store.read_meta(miss.keys["make"])["eeipu"]["size"]
        mb = size / 1e6
        lines.append(
            f"| {label} | {mb:.2f} | {statistics.mean(cost):.3f} | {statistics.mean(task):.3f} "
            f"| {statistics.mean(hit):.3f} | {mb / statistics.mean(hit):,.0f} | "
            f"{statistics.mean(hit) / statistics.mean(task):.2f} |"
        )
    lines.append("")
    return lines


# ---------------------------------------------------------------------- 3. exists
def _timed(fn: Callable[..., Any], calls: list[tuple[Any, ...]]) -> tuple[float, list[Any]]:
    """(seconds, answers) of ``fn(*args)`` for every ``args`` in ``calls``."""
    answers = []
    start = time.perf_counter()
    for args in calls:
        answers.append(fn(*args))
    return time.perf_counter() - start, answers


def bench_exists(sizes: Sizes, stores: list[tuple[str, Any]]) -> list[str]:
    import random

    from stages import StoreCacheView
    from stages.testing import synthetic_pipeline

    pipe = synthetic_pipeline()
    space = pipe.space_dict()
    rng = random.Random(0)

    def random_params() -> dict[str, Any]:
        return {
            s: {x: rng.uniform(v["low"], v["high"]) for x, v in sec.items()}
            for s, sec in space.items()
        }

    n_sets = math.ceil(sizes.entries / len(pipe))
    stored = [random_params() for _ in range(n_sets)]
    fresh = [random_params() for _ in range(n_sets)]
    keys = [k for p in stored for k in pipe.keys(p).values()][: sizes.entries]
    misses = [k for p in fresh for k in pipe.keys(p).values()][: sizes.entries]
    queries = [(s, p) for p in stored + fresh for s in pipe.stage_names]

    lines = [
        f"## 3. Existence checks: store holding {sizes.entries} entries "
        "(synthetic_pipeline keys, ~100 B payloads)",
        "",
        f"`Store.exists` over {sizes.exists_calls} calls each (hits: stored keys; misses: keys "
        f"never stored). `StoreCacheView(pipe, store)` = one listing of `meta/`, mean of "
        f"{sizes.view_reps}; `is_cached` over {len(queries)} (stage, params) questions, half "
        "stored (computes Merkle keys locally, no I/O). On S3 a hit is one HEAD; a miss is a "
        "HEAD (404) plus a LIST, since s3fs then checks for a folder of that name.",
        "",
        "| store | write s / entry (ms) | exists hits / s | exists misses / s | "
        "StoreCacheView() ms | view size | is_cached / s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, store in stores:
        _log(f"3. writing {sizes.entries} entries on {label}")
        start = time.perf_counter()
        for key in keys:
            store.write(key, b"x" * 100, {"cost": 1.0, "stage": "bench"})
        write_s = time.perf_counter() - start
        if store.keys() != set(keys):
            raise RuntimeError(f"{label}: listing does not match the entries written")
        _log(f"3. exists / StoreCacheView / is_cached on {label}")
        store.exists(keys[0])  # warm connection
        hit_calls = [(keys[i % len(keys)],) for i in range(sizes.exists_calls)]
        miss_calls = [(misses[i % len(misses)],) for i in range(sizes.exists_calls)]
        hits_s, found = _timed(store.exists, hit_calls)
        miss_s, found_missing = _timed(store.exists, miss_calls)
        if not all(found) or any(found_missing):
            raise RuntimeError(f"{label}: exists gave wrong answers")
        view_times = []
        view = None
        for _ in range(sizes.view_reps):
            start = time.perf_counter()
            view = StoreCacheView(pipe, store)
            view_times.append(time.perf_counter() - start)
        assert view is not None
        cached_s, answers = _timed(view.is_cached, queries)
        expected = sum(1 for s, p in queries if pipe.key(s, p) in set(keys))
        if sum(answers) != expected:
            raise RuntimeError(f"{label}: is_cached answered {sum(answers)} hits, want {expected}")
        lines.append(
            f"| {label} | {1e3 * write_s / len(keys):.2f} | {_rate(sizes.exists_calls, hits_s)} | "
            f"{_rate(sizes.exists_calls, miss_s)} | {1e3 * statistics.mean(view_times):.2f} | "
            f"{len(view)} | {_rate(len(queries), cached_s)} |"
        )
    lines.append("")
    return lines


# ---------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--reps", type=int, default=None, help="repetitions for section 1 (default 20; 3 quick)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    parser.add_argument(
        "--prefect-logs",
        action="store_true",
        help="keep Prefect's INFO logs (default: WARNING, so the tables stay readable)",
    )
    args = parser.parse_args()
    sizes = _sizes(args)

    started = time.perf_counter()
    prefect_home = tempfile.mkdtemp(prefix="eeipu-bench-prefect-home-")
    work = tempfile.mkdtemp(prefix="eeipu-bench-")
    _setup_env(prefect_home, args.prefect_logs)
    cwd = os.getcwd()
    os.chdir(work)  # nothing should land in the repository
    try:
        from stages import Store

        _log("starting the temporary Prefect server (may take a while)")
        with _prefect_server() as api, _moto_s3() as bucket:
            lines = _env_facts(sizes, api)
            lines += bench_overhead(sizes, work)
            payload_stores = [
                ("local disk", Store(os.path.join(work, "payload"))),
                ("S3 (moto, in-process)", Store(f"s3://{bucket}/payload")),
            ]
            lines += bench_payload(sizes, payload_stores)
            exists_stores = [
                ("local disk", Store(os.path.join(work, "exists"))),
                ("S3 (moto, in-process)", Store(f"s3://{bucket}/exists")),
            ]
            lines += bench_exists(sizes, exists_stores)
            load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
            lines += [
                f"Prefect client API retries during the whole run: {len(RETRIES.sleeps)} "
                f"(back-off sleeps {sum(RETRIES.sleeps):.1f} s in all).",
                "",
                f"Load average at end (1/5/15 min): {load}. Total wall time "
                f"{time.perf_counter() - started:.0f} s. The moto server runs in this process "
                "(threads), so S3 numbers include its request handling under the same GIL.",
            ]
        print("\n".join(lines), flush=True)
    finally:
        os.chdir(cwd)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(prefect_home, ignore_errors=True)


if __name__ == "__main__":
    main()
