"""Warm start: the cost for a new study to reach an earlier study's best, with and without
``warm_start`` (on the synthetic pipeline, with the exactly simulated cache).

An old EEIPU study (seed 0) runs to its budget. New studies of the same pipeline (other
seeds, same budget, same shared cache holding the old study's stage results) then run
twice: cold, and warm-started from the old study's trials (``Optimizer.add_prior``, what
``warm_start=[old]`` does in the flow). Printed per seed: the cumulative cost at which the
new study's best first reaches the old best (``-`` if never within the budget), and its
final best.

    .venv/bin/python benchmarks/warm_start.py --seeds 5
"""

from __future__ import annotations

import argparse
import statistics
import time

from eeipu import Optimizer, SearchSpace
from eeipu.testing import SimulatedCache, SyntheticProblem

CHECKPOINTS = (50.0, 100.0, 200.0)


def run(opt: Optimizer, problem: SyntheticProblem, cache: SimulatedCache) -> list[tuple]:
    """Ask/tell to the budget; returns the (cumulative cost, best so far) after each trial."""
    curve, best = [], -float("inf")
    while not opt.done:
        trial = opt.ask(cache=cache)
        hits = cache.lookup(trial.params)
        objective, costs = problem.evaluate(trial.params)
        costs = {s: (0.01 if s in hits else c) for s, c in costs.items()}
        opt.tell(trial, objective=objective, costs=costs, cached=hits)
        cache.add(trial.params)
        best = max(best, objective)
        curve.append((opt.spent, best))
    return curve


def reach(curve: list[tuple], target: float) -> float | None:
    """Cumulative cost at which the best first reached ``target`` (None: never)."""
    return next((c for c, b in curve if b >= target), None)


def best_at(curve: list[tuple], cost: float) -> float:
    return max((b for c, b in curve if c <= cost), default=float("nan"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budget", type=float, default=200.0)
    parser.add_argument("--n-init", type=int, default=10)
    parser.add_argument(
        "--warm-n-init", type=int, default=2, help="n_init of the third, short-warm-up variant"
    )
    args = parser.parse_args()
    problem = SyntheticProblem()
    space = SearchSpace.from_dict(problem.space_dict())

    def optimizer(seed: int, n_init: int = args.n_init) -> Optimizer:
        return Optimizer(space, budget=args.budget, n_init=n_init, seed=seed)

    old = optimizer(0)
    old_curve = run(old, problem, SimulatedCache(problem.names))
    old_best = old_curve[-1][1]
    print(
        f"old study: seed 0, {len(old.trials)} trials, best {old_best:.3f} reached at cost "
        f"{reach(old_curve, old_best):.1f}, spent {old.spent:.1f}"
    )
    near = old_best - 0.05 * abs(old_best)
    head = " ".join(f"best@{c:g}" for c in CHECKPOINTS)
    print(f"cost to reach the old best ({old_best:.2f}) and 95% of it ({near:.2f}):")
    print(f"seed  kind      to-best  to-95%  {head}")
    short = f"warm-n{args.warm_n_init}"
    rows: dict[str, list] = {"cold": [], "warm": [], short: []}
    for seed in range(1, args.seeds + 1):
        for kind in rows:
            t0 = time.time()
            opt = optimizer(seed, args.warm_n_init if kind == short else args.n_init)
            if kind != "cold":
                for t in old.trials:
                    opt.add_prior(t.params, t.objective, t.costs, t.cached)
            # Both share the storage: the old study's stage results are in the cache.
            cache = SimulatedCache(problem.names, [t.params for t in old.trials])
            curve = run(opt, problem, cache)
            hit, hit95 = reach(curve, old_best), reach(curve, near)
            bests = [best_at(curve, c) for c in CHECKPOINTS]
            rows[kind].append((hit, bests, hit95))
            fmt = lambda h: "-" if h is None else f"{h:.1f}"  # noqa: E731
            print(
                f"{seed:4d}  {kind:8s}  {fmt(hit):>7}  {fmt(hit95):>6}  "
                + " ".join(f"{b:7.2f}" for b in bests)
                + f"   ({time.time() - t0:.0f} s)",
                flush=True,
            )
    for kind, rs in rows.items():
        hits = [h for h, _, _ in rs if h is not None]
        med = f"median cost {statistics.median(hits):.1f}" if hits else "never"
        hits95 = [h for _, _, h in rs if h is not None]
        med95 = f"median cost {statistics.median(hits95):.1f}" if hits95 else "never"
        bests = [statistics.median(b[i] for _, b, _ in rs) for i in range(len(CHECKPOINTS))]
        print(
            f"{kind}: reached the old best in {len(hits)}/{len(rs)} studies ({med}), 95% of it "
            f"in {len(hits95)}/{len(rs)} ({med95}); median "
            + ", ".join(f"best@{c:g} {b:.2f}" for c, b in zip(CHECKPOINTS, bests, strict=True))
        )


if __name__ == "__main__":
    main()
