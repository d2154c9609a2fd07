"""Wall time of parallel studies against a sequential one, on the synthetic pipeline whose
stages sleep their simulated cost (``stages.testing:slept_synthetic_pipeline``), for
each ``--executor``: ``work_pool`` (process workers: a new process per trial) or
``task_workers`` (warm ``eeipu worker`` processes).

Starts its own ``prefect server`` (127.0.0.1, temporary home; ``--db postgres`` puts it on
its own PostgreSQL cluster through ``tools/pg-prefect``, as ``make server DB=postgres``
does) and ``--workers`` workers with ``--limit`` trials each, then runs the same study
(same seed, budget and fresh local cache) once per executor, seed and ``parallel`` value
through the real CLI and prints: trials, spent budget, the CLI's wall time and wall
seconds per budget unit, the *study's* wall seconds per budget unit (first trial asked to
last trial told: without the ~10-15 s a CLI spends importing torch and BoTorch and
starting its flow), the best objective, the workers used, the per-trial orchestration
overhead (a trial's wall time, submission to told, less its stages' seconds), how many
trials were held back because a trial in flight was computing a stage they need, and the
slots' busy share (trial seconds, submission to told, over ``parallel`` x study seconds;
with several slots the loop asks one trial ahead, so a slot that frees starts it at once),
then the overhead's parts (medians over trials, from when the worker began and ended each
trial, ``ran_from`` / ``ran_to`` in the journal): ``dispatch`` (submitted to begun),
``in_worker`` (the worker's Prefect work: begun to ended, less the stages' seconds),
``to_told`` (ended to told: the controller noticing it, or still busy asking another trial)
and the median ``ask_s``.
The server's and workers' logs stay in the temporary home (printed). Set
``PW_PROFILE="-m cProfile -o ctrl.prof"`` to profile the controller.

    .venv/bin/python benchmarks/parallel_wall.py --executor task_workers --parallel 1 2 4 \
        --workers 4 --seeds 0 1 2 --scale 1.0 --budget 60 --db postgres
    .venv/bin/python benchmarks/parallel_wall.py --scale 4 --budget 60 --limit 1

``--override`` passes more overrides to every study, e.g. an optimizer option:
``--override +optimizer.options.mc_samples=64``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from flows.records import read_records

ROOT = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _logged(
    cmd: list[str], env: dict[str, str], log: Path, cwd: Path | None = None
) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)


def _wait_for_task_workers(api: str, n: int, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        request = urllib.request.Request(
            f"{api}/task_workers/filter",
            data=b"{}",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            if len(json.loads(response.read())) >= n:
                return
        time.sleep(1.0)
    raise SystemExit(f"fewer than {n} task workers subscribed after {timeout:g} s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=float, default=1.0, help="seconds slept per cost unit")
    parser.add_argument("--budget", type=float, default=60.0)
    parser.add_argument("--n-init", type=int, default=4)
    parser.add_argument("--parallel", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--executor", nargs="+", choices=["work_pool", "task_workers"], default=["work_pool"]
    )
    parser.add_argument("--workers", type=int, default=2, help="workers started per executor")
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help="trials each worker runs at a time (default: the largest --parallel; a worker "
        "at its limit still accepts a trial and holds it until a slot frees)",
    )
    parser.add_argument(
        "--db",
        choices=["sqlite", "postgres"],
        default="sqlite",
        help="the server's database: SQLite in its home, or PostgreSQL (tools/pg-prefect)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--override",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="more overrides for every study, e.g. +optimizer.options.mc_samples=64",
    )
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="eeipu-bench-"))
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_LEVEL="INFO",
        PREFECT_WORKER_QUERY_SECONDS="1",
    )
    server = [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    if args.db == "postgres":
        # Outside the 0700 temp home: as root the cluster belongs to the `postgres` user.
        data = Path(tempfile.gettempdir()) / f"eeipu-bench-pg-{port}"
        server = [str(ROOT / "tools" / "pg-prefect"), str(data), str(_free_port()), *server]
    else:
        subprocess.run([PREFECT, "server", "database", "upgrade", "-y"], env=env, check=True)
    limit = args.limit or max(args.parallel)
    logs = home / "logs"  # the server's and each worker's output, kept for a post-mortem
    logs.mkdir()
    procs = [_logged(server, env, logs / "server.log")]
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"{api}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        env["PREFECT_API_URL"] = api
        worker = {
            "work_pool": [PREFECT, "worker", "start", "--pool", "bench", "--type", "process"],
            "task_workers": [sys.executable, "-m", "flows.worker"],
        }
        for kind in args.executor:
            for i in range(args.workers):
                cmd = [*worker[kind], "--limit", str(limit)]
                procs.append(_logged(cmd, env, logs / f"{kind}-{i}.log", cwd=ROOT))
        print(f"logs in {logs}")
        if "task_workers" in args.executor:
            # Start timing only once every warm worker has imported torch and subscribed:
            # otherwise the first study pays for their start-up on the same cores.
            _wait_for_task_workers(api, args.workers)
        print(
            f"scale {args.scale} s/unit, budget {args.budget:g}, n_init {args.n_init}, "
            f"{args.workers} workers with --limit {limit}, {args.db} server"
            + (f", overrides {' '.join(args.override)}" if args.override else "")
        )
        print(
            "executor      parallel  seed  trials  spent  wall_s  wall_s/unit  study_s/unit  "
            "best      workers  overhead_s (median, max)  held  busy  dispatch  in_worker  "
            "to_told  ask_s"
        )
        for kind in args.executor:
            for seed in args.seeds:
                for n in args.parallel:
                    _study(args, env, home, kind, n, seed)
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if args.db == "postgres":
            shutil.rmtree(data, ignore_errors=True)


def _study(
    args: argparse.Namespace, env: dict[str, str], home: Path, kind: str, n: int, seed: int
) -> None:
    """Run one study through the CLI and print its line of the table."""
    cache = home / f"cache-{kind}-{n}-{seed}"
    cmd = [
        sys.executable,
        *(os.environ["PW_PROFILE"].split() if os.environ.get("PW_PROFILE") else []),
        "-m",
        "flows.tune",
        "pipeline.target=stages.testing:slept_synthetic_pipeline",
        f"+pipeline.kwargs.scale={args.scale}",
        f"budget={args.budget}",
        f"n_init={args.n_init}",
        f"parallel={n}",
        f"seed={seed}",
        f"executor={kind}",  # named: parallel=1 runs on the workers too
        "work_pool=bench",
        f"study=wall-p{n}",
        f"storage.url={cache}",
        "progress=false",
        *args.override,
    ]
    t0 = time.time()
    proc = subprocess.run(cmd, env=env, cwd=home, capture_output=True, text=True)
    wall = time.time() - t0
    (home / "logs" / f"study-{kind}-{n}-{seed}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        print(proc.stderr[-3000:])
        raise SystemExit(f"{kind} parallel={n} failed")
    folder = cache / "studies" / f"wall-p{n}" / "trials"
    recs = read_records(json.loads(p.read_text()) for p in sorted(folder.glob("*.json")))
    spent = sum(sum(r.costs.values()) for r in recs)
    best = max(r.objective for r in recs if r.complete)
    workers = len({r.worker for r in recs if r.worker})
    # Trials held back because a trial in flight was computing a stage they need.
    held = sum(bool(r.waited_for) for r in recs)
    # Per trial: from being handed to the executor to being told (a trial asked ahead waits
    # for a slot after its ask: that wait is not overhead), and that less its stages.
    in_flight = [r.told_at - (r.submitted_at or r.asked_at + r.ask_seconds) for r in recs]
    overhead = [f - sum(r.seconds.values()) for f, r in zip(in_flight, recs, strict=True)]
    # The study's own wall time: first trial asked to last trial told (no CLI start).
    study = max(r.told_at for r in recs) - min(r.asked_at for r in recs)
    running = sum(in_flight)
    # Where the overhead goes (medians), from when the worker began and ended each trial:
    # submitted -> began (dispatch), began -> ended less its stages (the worker's Prefect
    # work), ended -> told (the controller noticing and telling it, or busy asking).
    ran = [r for r in recs if r.started_at is not None]
    phases = (
        [
            statistics.median(x)
            for x in (
                [r.started_at - r.submitted_at for r in ran],
                [r.finished_at - r.started_at - sum(r.seconds.values()) for r in ran],
                [r.told_at - r.finished_at for r in ran],
            )
        ]
        if ran
        else [float("nan")] * 3
    )
    print(
        f"{kind:12s}  {n:8d}  {seed:4d}  {len(recs):6d}  {spent:5.1f}  {wall:6.1f}  "
        f"{wall / spent:11.2f}  {study / spent:12.2f}  {best:8.3f}  {workers:7d}  "
        f"{statistics.median(overhead):5.2f}, {max(overhead):5.2f}     {held:4d}  "
        f"{running / (n * study):4.2f}  {phases[0]:8.2f}  {phases[1]:9.2f}  {phases[2]:9.2f}  "
        f"{statistics.median(r['ask_seconds'] for r in recs):5.2f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
