"""A resumed optimizer proposes exactly what an uninterrupted one would."""

from __future__ import annotations

import json

import pytest

from eeipu import Optimizer, SearchSpace
from eeipu.testing import SimulatedCache, SyntheticProblem

FAST = {"num_restarts": 2, "raw_samples": 32, "mc_samples": 128, "maxiter": 30}


def _completed(problem, params):
    """The stages a trial completed: all, or those before the one that failed."""
    failed = problem.failed_stage(params)
    return list(problem.names if failed is None else problem.names[: problem.names.index(failed)])


@pytest.mark.parametrize(
    ("method", "fail_share"),
    [
        ("eeipu", None),
        pytest.param("carbo", None, marks=pytest.mark.slow),  # not in make test-fast
        pytest.param("eeipu", (0.0, 0.4, 0.4), marks=pytest.mark.slow),  # failures modelled
    ],
)
def test_replay_plus_state_reproduces_the_next_ask(method, fail_share):
    problem = SyntheticProblem(fail_share=fail_share)
    space = SearchSpace.from_dict(problem.space_dict())

    def optimizer() -> Optimizer:
        return Optimizer(space, method=method, budget=1e9, n_init=4, seed=3, method_options=FAST)

    opt, cache = optimizer(), SimulatedCache(problem.names)
    states, told = [], []
    for _ in range(9):
        trial = opt.ask(cache=cache)
        # What a journal stores: JSON, so the state must survive a round trip bit for bit.
        states.append(json.loads(json.dumps(opt.state_dict(), allow_nan=False)))
        hits = cache.lookup(trial.params)
        objective, costs = problem.evaluate(trial.params)
        costs = {s: (0.01 if s in hits else c) for s, c in costs.items()}
        done = _completed(problem, trial.params)
        if len(done) < len(problem.names):  # failed: charged the stages it reached
            objective, costs = None, {s: costs[s] for s in problem.names[: len(done) + 1]}
        told.append(opt.tell(trial, objective=objective, costs=costs, cached=hits))
        cache.add(trial.params, done)

    drifted = []
    for k in range(5, 9):  # resume after k trials (GP fits warm-started by then)
        resumed, cold = optimizer(), optimizer()
        view = SimulatedCache(problem.names)
        for t in told[:k]:
            for o in (resumed, cold):
                o.add_trial(t.params, t.objective, t.costs, cached=t.cached)
            view.add(t.params, _completed(problem, t.params))
        resumed.load_state_dict(states[k - 1])
        assert resumed.ask(cache=view).params == told[k].params
        drifted.append(cold.ask(cache=view).params != told[k].params)
    if fail_share is not None:
        assert any(t.objective is None for t in told[:5])  # the model of failures is fitted
    # Evidence that the state matters: without it the first fit starts cold and at least
    # one of these proposals drifts.
    assert any(drifted)
