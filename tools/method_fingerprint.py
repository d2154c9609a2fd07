"""Fingerprint every registered method: its seeded proposals on a synthetic problem.

Runs each method in process (``eeipu.testing.simulate``) for seeds x trials and writes
every told trial (params, memoized/cached stages, origin, acquisition value and terms) to
JSON, so a refactor of ``eeipu`` can be checked to leave every method's results unchanged
(compare two files with ``--compare``).

Example:
    python tools/method_fingerprint.py --out before.json
    python tools/method_fingerprint.py --out after.json --compare before.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from eeipu import METHODS, Optimizer, SearchSpace
from eeipu.testing import simulate, synthetic_variant


def run(method: str, variant: str, seed: int, trials: int) -> list[dict[str, Any]]:
    """The told trials of one seeded run, as JSON-able dicts."""
    problem = synthetic_variant(variant, seed=seed)
    opt = Optimizer(
        SearchSpace.from_dict(problem.space_dict()),
        method=method,
        budget=1e9,
        n_init=10,
        seed=seed,
    )
    told = simulate(opt, problem, max_trials=trials)
    return [
        {
            "number": t.number,
            "params": t.params,
            "memoized": list(t.memoized),
            "cached": list(t.cached),
            "origin": t.origin,
            "state": t.state.name,
            "objective": t.objective,
            "acq_value": t.acq_value,
            "acq_terms": t.acq_terms,
        }
        for t in told
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--methods", nargs="*", default=None)
    parser.add_argument("--variants", nargs="*", default=["synthetic3"])
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--compare", default=None, help="a file to compare with (exact)")
    args = parser.parse_args(argv)
    methods = args.methods or sorted(METHODS)
    result: dict[str, Any] = {}
    for variant in args.variants:
        for method in methods:
            for seed in args.seeds:
                key = f"{variant}/{method}/{seed}"
                start = time.perf_counter()
                result[key] = run(method, variant, seed, args.trials)
                print(f"{key}: {time.perf_counter() - start:.1f}s", flush=True)
                with open(args.out, "w") as f:
                    json.dump(result, f, indent=1, sort_keys=True)
    if args.compare is None:
        return 0
    with open(args.compare) as f:
        before = json.load(f)
    after = json.loads(json.dumps(result, sort_keys=True))
    bad = 0
    for key, trials in after.items():
        if key not in before:
            print(f"{key}: not in {args.compare}")
            continue
        if trials != before[key]:
            bad += 1
            first = next(
                (i for i, (a, b) in enumerate(zip(trials, before[key], strict=False)) if a != b),
                None,
            )
            print(f"{key}: DIFFERS (first at trial {first})")
    print("identical" if not bad else f"{bad} run(s) differ")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
