"""ask() time on BoTorch's two L-BFGS-B paths, on one simulated eeipu study each.

BoTorch runs multi-start L-BFGS-B as a batch of separate problems (parallel mode) only for
scipy versions it has tested; elsewhere (scipy >= 1.18, which pip picks on Python >= 3.12)
it uses its serial mode. ``--serial`` forces the serial mode on any installation, the way
``tests/eeipu/test_lbfgs_paths.py`` does. Prints one table row per path.

Example:
    .venv/bin/python benchmarks/bench_lbfgs_paths.py
    .venv-3.12/bin/python benchmarks/bench_lbfgs_paths.py      # serial by scipy's version
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings

warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated")

import scipy  # noqa: E402
from botorch.generation import gen as botorch_gen  # noqa: E402

from eeipu import Optimizer, SearchSpace, batched_lbfgs_available  # noqa: E402
from eeipu.testing import SyntheticProblem, simulate  # noqa: E402


def one_study(budget: float, n_init: int, seed: int) -> tuple[int, float, list[float]]:
    problem = SyntheticProblem()
    opt = Optimizer(
        SearchSpace.from_dict(problem.space_dict()), budget=budget, n_init=n_init, seed=seed
    )
    times: list[float] = []
    ask = opt.ask

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        trial = ask(*args, **kwargs)
        times.append(time.perf_counter() - t0)
        return trial

    opt.ask = timed  # type: ignore[method-assign]
    trials = simulate(opt, problem)
    return len(trials), opt.best_trial.objective, times[n_init:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=60.0)
    parser.add_argument("--n-init", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--serial", action="store_true", help="force BoTorch's serial mode")
    args = parser.parse_args()
    if not batched_lbfgs_available():
        mode = "serial (scipy)"
    elif args.serial:
        mode = "serial (forced)"
        botorch_gen.get_reasons_against_fast_path = lambda **_: ["forced"]
    else:
        mode = "parallel"
    n, best, bo = one_study(args.budget, args.n_init, args.seed)
    print(f"python {sys.version.split()[0]}, scipy {scipy.__version__}")
    print("| L-BFGS-B mode | trials | best | BO asks | median ask (s) | max ask (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    print(
        f"| {mode} | {n} | {best:.3f} | {len(bo)} | {statistics.median(bo):.2f} | {max(bo):.2f} |"
    )


if __name__ == "__main__":
    main()
