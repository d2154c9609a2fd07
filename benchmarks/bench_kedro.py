"""A Kedro project tuned by ``kedro eeipu tune`` against ``kedro run --params`` per trial.

Writes the spaceflights-style test project (``tests/kedro/spaceflights.py``; ``--rows``
shuttles, so that preprocessing takes real time) in a temporary folder, runs a study of
``--trials`` trials with ``kedro eeipu tune``, then runs each of the study's trials again
as a user tuning "around ``kedro run``" would: ``kedro run --params ...`` with that trial's
values, one process per trial. A hook in the project counts node runs in both. Prints:

================  =================================================================
column            what
================  =================================================================
node runs         node executions (Kedro's ``after_node_run`` hook), per node and total
node seconds      seconds inside the nodes: eeipu's stage costs (its budget unit, cache
                  loads included) / the same nodes timed by the hook in ``kedro run``
wall seconds      the whole command(s), process starts and eeipu's ``ask()`` included
================  =================================================================

Both score the same parameter sets, so the objectives agree (checked). The machine's load
changes the seconds: the header prints CPUs and load average.

    .venv/bin/python benchmarks/bench_kedro.py
    .venv/bin/python benchmarks/bench_kedro.py --rows 200000 --trials 20
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flows.records import read_records  # noqa: E402
from tests.kedro.spaceflights import write_data, write_project  # noqa: E402

BIN = Path(sys.executable).parent
TIMING_HOOK = '''\
import os
import time

from kedro.framework.hooks import hook_impl


class NodeRunCounter:
    """Append each node run (name, seconds) to the file $NODE_RUNS_LOG names."""

    @hook_impl
    def before_node_run(self, node):
        self._start = time.perf_counter()

    @hook_impl
    def after_node_run(self, node):
        path = os.environ.get("NODE_RUNS_LOG")
        if path:
            with open(path, "a") as log:
                log.write(f"{node.name} {time.perf_counter() - self._start:.6f}\\n")
'''


def _runs(log: Path) -> tuple[Counter[str], float]:
    counts: Counter[str] = Counter()
    seconds = 0.0
    for line in log.read_text().splitlines() if log.exists() else []:
        name, secs = line.split()
        counts[name] += 1
        seconds += float(secs)
    return counts, seconds


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000, help="shuttles in the raw data")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--n-init", type=int, default=6)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="eeipu-bench-kedro-"))
    project = write_project(folder / "spaceflights", "spaceflights")
    write_data(project, n=args.rows)
    (project / "src" / "spaceflights" / "hooks.py").write_text(TIMING_HOOK)
    env = {
        **os.environ,
        "KEDRO_DISABLE_TELEMETRY": "true",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_HOME": str(folder / "prefect"),
    }
    env.pop("PYTHONPATH", None)
    print(
        f"# {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; {args.rows} rows, "
        f"{args.trials} trials ({args.n_init} warm-up); project in {project}"
    )

    log = folder / "eeipu.log"
    study_wall = _run(
        [
            str(BIN / "kedro"),
            "eeipu",
            "tune",
            f"max_trials={args.trials}",
            f"n_init={args.n_init}",
            "budget=100000",
        ],
        project,
        {**env, "NODE_RUNS_LOG": str(log)},
    )
    folder_ = project / ".eeipu" / "cache" / "studies" / "spaceflights-eeipu-seed0" / "trials"
    records = read_records(json.loads(p.read_text()) for p in sorted(folder_.glob("*.json")))
    eeipu_runs, eeipu_hook_seconds = _runs(log)
    stage_seconds = sum(sum(r.costs.values()) for r in records)

    log = folder / "kedro_run.log"
    run_wall = 0.0
    for r in records:
        values = {k: v for section in r.params.values() for k, v in section.items()}
        params = ",".join(f"{k}={v!r}" for k, v in values.items())
        run_wall += _run(
            [str(BIN / "kedro"), "run", "--params", params],
            project,
            {**env, "NODE_RUNS_LOG": str(log)},
        )
        metrics = pickle.loads((project / "data" / "08_reporting" / "metrics.pickle").read_bytes())
        if abs(metrics["r2_score"] - r["objective"]) > 1e-9 * max(1.0, abs(r["objective"])):
            sys.exit(
                f"trial {r['number']}: kedro run scored {metrics['r2_score']}, the study "
                f"{r['objective']}"
            )
    run_runs, run_hook_seconds = _runs(log)

    nodes = list(run_runs)
    width = max(len(n) for n in nodes)
    print(f"\n| {'node':<{width}} | eeipu runs | kedro run runs |")
    print(f"|{'-' * (width + 2)}|-----------:|---------------:|")
    for node in nodes:
        print(f"| {node:<{width}} | {eeipu_runs[node]:>10} | {run_runs[node]:>14} |")
    print(f"| {'total':<{width}} | {sum(eeipu_runs.values()):>10} | {sum(run_runs.values()):>14} |")
    print("\n| seconds | kedro eeipu tune | kedro run --params x trials | ratio |")
    print("|---|---:|---:|---:|")
    print(
        f"| inside nodes (hook) | {eeipu_hook_seconds:.2f} | {run_hook_seconds:.2f} | "
        f"{eeipu_hook_seconds / run_hook_seconds:.2f} |"
    )
    print(f"| eeipu stage costs (budget; cache loads included) | {stage_seconds:.2f} | - | - |")
    print(f"| wall | {study_wall:.1f} | {run_wall:.1f} | {study_wall / run_wall:.2f} |")
    print(
        f"\nbest objective {max(r['objective'] for r in records):.6f}; all {len(records)} "
        "trials scored the same by kedro run"
    )


if __name__ == "__main__":
    main()
