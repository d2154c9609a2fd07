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

With ``--pending N [N ...]`` it times instead ``ask()`` on one fixed history (n told trials
and the method state of a warm ask) with no trial pending and with N trials pending
(enqueued random configurations, as in a parallel study): each ask starts from a fresh copy
of that history, so every ask does the same work; medians over ``--asks`` asks.
The method state comes from an ask on the same told trials, so the timed asks reuse its GP
hyperparameters (no fit: a parallel study's asks in a row with no trial told in between).

    .venv/bin/python benchmarks/bench_ask.py --pending 1 3 --asks 5

``--problem`` picks another synthetic variant (``eeipu.testing.VARIANTS``), e.g.
the 10-stage one, where ``ask()`` fits one cost GP per stage:

    .venv/bin/python benchmarks/bench_ask.py --problem synthetic10 --n 100

``--option key=value`` passes EEIPU method options, e.g. ``--option incumbent=noisy``.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from typing import Any

import torch
import yaml
from botorch.acquisition.analytic import LogExpectedImprovement
from botorch.optim import optimize_acqf

from eeipu import Optimizer, SearchSpace, Trial, fit_gp
from eeipu.testing import VARIANTS, SimulatedCache, SyntheticProblem, synthetic_variant


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


def history(
    space: SearchSpace, problem: SyntheticProblem, n: int, reuse: float = 0.5
) -> tuple[list[Trial], SimulatedCache]:
    """``n`` random trials of ``problem`` (a cheap history) and the cache they filled. A
    share ``reuse`` of them keeps the leading stages (1 to S-1, at random) of an earlier
    trial, as a memoizing study's trials do, so the prefix pool of a later ask is full."""
    opt = Optimizer(space, method="random", budget=1e12, n_init=n, seed=0)
    cache = SimulatedCache(problem.names)
    rng = torch.Generator().manual_seed(0)
    stages = space.stages
    while len(opt.trials) < n:
        params = space.decode(torch.rand(space.dim, generator=rng, dtype=torch.double))
        told = opt.trials
        if told and float(torch.rand(1, generator=rng)) < reuse:
            source = told[int(torch.randint(len(told), (1,), generator=rng))]
            keep = int(torch.randint(1, len(stages), (1,), generator=rng))
            params.update({s: dict(source.params[s]) for s in stages[:keep]})
        t = opt.enqueue(params, cache=cache)
        hits = cache.lookup(t.params)
        obj, costs = problem.evaluate(t.params)
        opt.tell(t, obj, {s: (0.01 if s in hits else c) for s, c in costs.items()}, cached=hits)
        cache.add(t.params)
    return opt.trials, cache


OPTIONS: dict[str, Any] = {}  # EEIPU method options (--option)


def replayed(space: SearchSpace, told: list[Trial]) -> Optimizer:
    """An EEIPU optimizer told ``told`` (as its warm-up): its next ask is model-based."""
    opt = Optimizer(
        space, method="eeipu", budget=1e12, n_init=len(told), seed=0, method_options=OPTIONS
    )
    for t in told:
        opt.add_trial(t.params, t.objective, t.costs, cached=t.cached)
    return opt


def timed_ask(
    space: SearchSpace,
    told: list[Trial],
    state: dict[str, Any],
    pending: list[dict[str, dict[str, Any]]],
    cache: SimulatedCache,
) -> tuple[float, float]:
    """Wall and CPU seconds of one ``ask()`` after replaying ``told`` (and the method
    ``state``) into a fresh optimizer and enqueueing ``pending``."""
    opt = replayed(space, told)
    opt.load_state_dict(state)
    for params in pending:
        opt.enqueue(params, cache=cache)
    start, cpu = time.perf_counter(), time.process_time()
    opt.ask(cache=cache)
    return time.perf_counter() - start, time.process_time() - cpu


def pending_table(
    space: SearchSpace,
    problem: SyntheticProblem,
    ns: list[int],
    pending: list[int],
    asks: int,
    reuse: float,
) -> None:
    """Median ``ask()`` wall / CPU seconds with 0 and with N trials pending, same history."""
    print(
        "| n obs | pending | ask, 0 pending: wall / CPU (s) | ask, N pending: wall / CPU (s) "
        "| ratio wall | ratio CPU |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for n in ns:
        told, cache = history(space, problem, n, reuse)
        warm = replayed(space, told)
        warm.ask(cache=cache)  # one ask fits the GPs: its state warm-starts the timed ones
        state = warm.state_dict()
        rng = torch.Generator().manual_seed(1)
        configs = [
            space.decode(torch.rand(space.dim, generator=rng, dtype=torch.double))
            for _ in range(max(pending))
        ]

        for p in pending:
            # Interleave the two cases so that load changes on the machine hit both alike.
            runs = [
                tuple(timed_ask(space, told, state, configs[:k], cache) for k in (0, p))
                for _ in range(asks)
            ]
            base = [statistics.median(r[0][i] for r in runs) for i in (0, 1)]
            with_p = [statistics.median(r[1][i] for r in runs) for i in (0, 1)]
            print(
                f"| {n} | {p} | {base[0]:.2f} / {base[1]:.2f} | {with_p[0]:.2f} / {with_p[1]:.2f} "
                f"| {with_p[0] / base[0]:.2f} | {with_p[1] / base[1]:.2f} |",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, nargs="+", default=[20, 100])
    parser.add_argument("--asks", type=int, default=4)
    parser.add_argument(
        "--pending", type=int, nargs="+", help="time ask() with N trials pending vs none"
    )
    parser.add_argument("--problem", choices=sorted(VARIANTS), default="synthetic3")
    parser.add_argument(
        "--reuse",
        type=float,
        default=0.5,
        help="share of history trials that keep an earlier trial's leading stages",
    )
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an EEIPU method option (YAML value), e.g. incumbent=noisy",
    )
    args = parser.parse_args()
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--option {item!r}: expected KEY=VALUE")
        OPTIONS[key] = yaml.safe_load(value)
    problem = synthetic_variant(args.problem)
    space = SearchSpace.from_dict(problem.space_dict())
    print(
        f"{args.problem} ({len(problem.names)} stages, {space.dim} parameters), torch "
        f"{torch.__version__}, threads {torch.get_num_threads()}, load {os.getloadavg()}"
        + (f", options {OPTIONS}" if OPTIONS else "")
    )
    if args.pending:
        pending_table(space, problem, args.n, args.pending, args.asks, args.reuse)
        return
    print(
        "| n obs | eeipu ask, cold (s) | eeipu ask, warm median: wall / CPU (s) "
        "| plain LogEI step: wall / CPU (s) | ratio wall | ratio CPU | peak RSS (MiB) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n in args.n:
        # Random warm-up up to n (cheap), then time EEIPU asks on that history.
        told, cache = history(space, problem, n, args.reuse)
        timed = replayed(space, told)
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
