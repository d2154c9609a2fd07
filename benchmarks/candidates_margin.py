"""Choose the margin of the seeded end-to-end test (tests/eeipu/test_end_to_end.py).

Runs EEIPU and EI on the test's synthetic setting for many seeds and prints, per seed, the
candidates each evaluates after warm-up within the same budget, and the ratio's quantiles.
The test asserts a ratio below the 5th percentile seen here.

    .venv/bin/python benchmarks/candidates_margin.py --seeds 20
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "eeipu"))

from test_end_to_end import SETTING, post_warmup_candidates


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=20)
    args = parser.parse_args()
    ratios = []
    print(f"setting: {SETTING}")
    print("seed  eeipu  ei  ratio")
    for seed in range(args.seeds):
        a = post_warmup_candidates("eeipu", seed)
        b = post_warmup_candidates("ei", seed)
        ratios.append(a / max(b, 1))
        print(f"{seed:4d}  {a:5d}  {b:3d}  {ratios[-1]:.2f}", flush=True)
    ratios.sort()
    q05 = ratios[max(int(0.05 * len(ratios)) - 1, 0)]
    print(f"ratio: min {ratios[0]:.2f}  5th pct {q05:.2f}  median {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
