"""Tier (c): seeded end-to-end runs on the synthetic 3-stage problem.

EEIPU must evaluate clearly more candidates than EI within the same budget. The margin comes
from many seeds (``benchmarks/candidates_margin.py``), not from one lucky run: see the
numbers in MARGIN's comment.
"""

from __future__ import annotations

import pytest

from eeipu import Optimizer, SearchSpace, options_used_by
from eeipu.testing import SyntheticProblem, simulate

SETTING = {
    "dims": (2, 3, 2),
    "n_init": 5,
    "budget": 100.0,
    "load_cost": 0.01,
    "method_options": {
        "num_restarts": 4,
        "raw_samples": 64,
        "prefix_restarts": 1,
        "prefix_raw_samples": 32,
        "mc_samples": 256,
        "maxiter": 50,
    },
}
# `benchmarks/candidates_margin.py --seeds 20` (2026-11-27): the ratio EEIPU / EI of
# post-warm-up candidates over seeds 0-19 was min 3.20, median 4.67 (EEIPU 13-28, EI 3-8).
# The test demands 2.5, below every seed seen.
MARGIN = 2.5


def post_warmup_candidates(method: str, seed: int) -> int:
    problem = SyntheticProblem(dims=SETTING["dims"], seed=seed)
    opt = Optimizer(
        SearchSpace.from_dict(problem.space_dict()),
        method=method,
        budget=SETTING["budget"],
        n_init=SETTING["n_init"],
        seed=seed,
        method_options=options_used_by(method, SETTING["method_options"]),
    )
    trials = simulate(opt, problem, load_cost=SETTING["load_cost"])
    assert opt.done
    return len(trials) - SETTING["n_init"]


@pytest.mark.slow
# Seed 1 (the same check on another seed) in make test-extended.
@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.extended)])
def test_eeipu_evaluates_clearly_more_candidates_than_ei(seed):
    eeipu = post_warmup_candidates("eeipu", seed)
    ei = post_warmup_candidates("ei", seed)
    assert eeipu >= MARGIN * max(ei, 1), (eeipu, ei)
