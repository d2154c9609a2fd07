"""How fast the ``eeipu`` command answers: wall-clock seconds of each command a user types.

Makes a small real study in a temporary folder (its own ``.eeipu/cache``, ``outputs/`` and
``PREFECT_HOME``), then times each command as a subprocess, ``--repeats`` times (median,
min and max):

==================  ===================================================================
row                 command
==================  ===================================================================
studies             ``eeipu studies``
show                ``eeipu show bench``
best                ``eeipu best bench``
cache               ``eeipu cache``
validation error    ``eeipu tune budget=-1`` (exit code 2)
finished re-run     ``eeipu tune study=bench ...`` again, once the study is finished
first trial line    ``eeipu tune study=first-N`` (the default study, fresh each time):
                    seconds from launch to its first ``trial`` line; then killed
==================  ===================================================================

The study is ``max_trials`` trials of the shipped synthetic pipeline; making it (and a
first Prefect start, which migrates a new database) is not timed. The machine's load
changes every number: the header prints CPUs and load average.

    .venv/bin/python benchmarks/bench_cli.py
    .venv/bin/python benchmarks/bench_cli.py --repeats 5 --keep
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

STUDY = "bench"
# A study that ends after its warm-up: n_init=max_trials, so no model is fitted.
STUDY_ARGS = [f"study={STUDY}", "budget=200", "max_trials=3", "n_init=3", "progress=true"]


def _eeipu() -> list[str]:
    """The ``eeipu`` script of this interpreter's environment (else ``python -m flows.cli``)."""
    script = Path(sys.executable).with_name("eeipu")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "flows.cli"]


def _timed(argv: Sequence[str], cwd: Path, env: dict[str, str]) -> tuple[float, int]:
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    return time.perf_counter() - start, done.returncode


def _first_trial_line(argv: Sequence[str], cwd: Path, env: dict[str, str]) -> tuple[float, int]:
    """Seconds from launch to the first line starting with ``trial`` (stdout or stderr);
    the process group is killed then."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # one group with its Prefect server, killed at once
    )
    assert proc.stdout is not None
    seconds = float("nan")
    for line in proc.stdout:
        if line.lstrip().startswith("trial"):
            seconds = time.perf_counter() - start
            break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return seconds, 0 if seconds == seconds else 1


def _summary(name: str, runs: list[tuple[float, int]]) -> str:
    seconds = [s for s, _ in runs]
    codes = sorted({rc for _, rc in runs})
    return (
        f"| {name:<17} | {statistics.median(seconds):6.2f} | {min(seconds):6.2f} | "
        f"{max(seconds):6.2f} | {','.join(map(str, codes)):>4} |"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per command (default 3)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="bench-cli-"))
    env = {**os.environ, "PREFECT_HOME": str(root / "prefect")}
    env.pop("PREFECT_API_URL", None)  # the temporary server a user without one gets
    eeipu = _eeipu()
    try:
        print(f"making study {STUDY!r} in {root} ...", file=sys.stderr, flush=True)
        seconds, rc = _timed([*eeipu, "tune", *STUDY_ARGS], root, env)
        if rc != 0:
            print(f"error: the study run exited {rc}", file=sys.stderr)
            return 1
        print(f"  made in {seconds:.1f} s (not timed below)", file=sys.stderr, flush=True)
        commands: list[tuple[str, list[str]]] = [
            ("studies", ["studies"]),
            ("show", ["show", STUDY]),
            ("best", ["best", STUDY]),
            ("cache", ["cache"]),
            ("validation error", ["tune", "budget=-1"]),
            ("finished re-run", ["tune", *STUDY_ARGS]),
        ]
        rows = []
        for name, rest in commands:
            runs = [_timed([*eeipu, *rest], root, env) for _ in range(args.repeats)]
            rows.append(_summary(name, runs))
            print(rows[-1], file=sys.stderr, flush=True)
        runs = [
            _first_trial_line([*eeipu, "tune", f"study=first-{i}"], root, env)
            for i in range(args.repeats)
        ]
        rows.append(_summary("first trial line", runs))
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        print(
            f"`eeipu` wall seconds, {args.repeats} runs each "
            f"({os.cpu_count()} CPUs, load average {load} at the end)\n"
        )
        print("| command           | median |    min |    max |   rc |")
        print("|-------------------|-------:|-------:|-------:|-----:|")
        print("\n".join(rows))
    finally:
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
