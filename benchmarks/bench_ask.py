"""Time ``Optimizer.ask()`` against the number of observations.

For each n, an optimizer is fed n observations of the synthetic 3-stage problem (the first
stage the most expensive, cache hits charged 0.01) and timed over a few asks; the first ask
fits its GPs cold, later asks warm-start them (the steady state of a study). A plain BoTorch
LogEI step (fit one SingleTaskGP + ``optimize_acqf`` with BoTorch's usual 10 restarts / 512
raw samples, one torch thread like the optimizer's default) on the same data is timed
alongside, in the same process. Both wall and CPU seconds are reported: on a shared
machine CPU time is the steadier number. The memory column is the process's peak resident
set so far (n runs in increasing order, so it is the peak up to that n).

    .venv/bin/python benchmarks/bench_ask.py                # n = 20, 100
    .venv/bin/python benchmarks/bench_ask.py --n 10 50 100 200 500 --asks 3
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time

import torch
from botorch.acquisition.analytic import LogExpectedImprovement
from botorch.optim import optimize_acqf

from eeipu import Optimizer, SearchSpace, fit_gp
from stages.pipelines import SimulatedCache, SyntheticProblem


def feed(opt: Optimizer, problem: SyntheticProblem, n: int, cache: SimulatedCache) -> None:
    while len(opt.trials) < n:
        t = opt.ask(cache=cache)
        hits = cache.lookup(t.params)
        obj, costs = problem.evaluate(t.params)
        costs = {s: (0.01 if s in hits else c) for s, c in costs.items()}
        opt.tell(t, obj, costs, cached=hits)
        cache.add(t.params)


def plain_logei_step(opt: Optimizer) -> tuple[float, float]:
    X = torch.stack([opt.space.encode(t.params) for t in opt.trials])
    Y = torch.tensor([[t.objective] for t in opt.trials], dtype=torch.double)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # like Optimizer(num_threads=1): compare like with like
    start, cpu = time.perf_counter(), time.process_time()
    gp = fit_gp(X, Y)
    bounds = torch.stack([torch.zeros(X.shape[-1]), torch.ones(X.shape[-1])]).to(X)
    optimize_acqf(
        LogExpectedImprovement(gp, Y.max()), bounds, q=1, num_restarts=10, raw_samples=512
    )
    elapsed = time.perf_counter() - start, time.process_time() - cpu
    torch.set_num_threads(threads)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, nargs="+", default=[20, 100])
    parser.add_argument("--asks", type=int, default=4)
    args = parser.parse_args()
    problem = SyntheticProblem()
    space = SearchSpace.from_dict(problem.space_dict())
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, load {os.getloadavg()}")
    print(
        "| n obs | eeipu ask, cold (s) | eeipu ask, warm median: wall / CPU (s) "
        "| plain LogEI step: wall / CPU (s) | ratio wall | ratio CPU | peak RSS (MiB) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n in args.n:
        # Random warm-up up to n (cheap), then time EEIPU asks on that history.
        opt = Optimizer(space, method="random", budget=1e12, n_init=n, seed=0)
        cache = SimulatedCache(problem.names)
        feed(opt, problem, n, cache)
        timed = Optimizer(space, method="eeipu", budget=1e12, n_init=n, seed=0)
        for t in opt.trials:
            timed.add_trial(t.params, t.objective, t.costs, cached=t.cached)
        times, cpus = [], []
        for _ in range(args.asks):
            start, cpu = time.perf_counter(), time.process_time()
            t = timed.ask(cache=cache)
            times.append(time.perf_counter() - start)
            cpus.append(time.process_time() - cpu)
            obj, costs = problem.evaluate(t.params)
            hits = cache.lookup(t.params)
            timed.tell(
                t, obj, {s: (0.01 if s in hits else c) for s, c in costs.items()}, cached=hits
            )
            cache.add(t.params)
        steps = [plain_logei_step(timed) for _ in range(3)]
        plain = statistics.median(s[0] for s in steps)
        plain_cpu = statistics.median(s[1] for s in steps)
        warm = statistics.median(times[1:]) if len(times) > 1 else times[0]
        warm_cpu = statistics.median(cpus[1:]) if len(cpus) > 1 else cpus[0]
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"| {n} | {times[0]:.2f} | {warm:.2f} / {warm_cpu:.2f} | {plain:.2f} / {plain_cpu:.2f} "
            f"| {warm / plain:.2f} | {warm_cpu / plain_cpu:.2f} | {rss:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
