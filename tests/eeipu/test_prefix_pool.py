"""The prefix pool stays diverse, and proposals are ranked where they will really run."""

from __future__ import annotations

import pytest
import torch

from eeipu import HistoryCacheView, Method, Optimizer, Proposal, SearchSpace, make_method

STAGES = ["s0", "s1", "s2", "s3", "s4"]
SPACE = SearchSpace.from_dict(
    {s: {"x": {"type": "float", "low": 0.0, "high": 1.0}} for s in STAGES}
)


class Recorder(Method):
    """Proposes at random and keeps the prefix pool it was given."""

    name = "recorder"
    uses_prefixes = True

    def __init__(self):
        self.pools = []

    def propose(self, obs):
        self.pools.append(obs.prefixes)
        return Proposal(torch.rand(obs.space.dim, generator=obs.rng, dtype=torch.double))


def told_optimizer(method, max_prefixes, n=12):
    """``n`` fully cached trials of distinct configurations, objective = their number."""
    opt = Optimizer(SPACE, method=method, budget=1e6, n_init=n, seed=0, max_prefixes=max_prefixes)
    view = HistoryCacheView(STAGES)
    for i in range(n):
        t = opt.ask(cache=view)
        opt.tell(t, objective=float(i), costs={s: 1.0 for s in STAGES})
        view.add(t.params)
    return opt, view


def owners(opt, pool):
    """Which told trial each prefix of ``pool`` comes from."""
    out = []
    for p in pool:
        (t,) = [
            t for t in opt.trials if all(t.params[s] == p.params[s] for s in STAGES[: p.n_stages])
        ]
        out.append(t.number)
    return out


def test_pool_is_capped_by_configurations_with_room_to_explore():
    recorder = Recorder()
    opt, view = told_optimizer(recorder, max_prefixes=10)
    opt.ask(cache=view)
    pool = recorder.pools[-1]
    assert len(pool) == 10
    got = owners(opt, pool)
    # The best two configurations give all their 4 proper prefixes (8 = 10 - a quarter)...
    assert sorted(got[:8]) == [10] * 4 + [11] * 4
    assert [p.n_stages for p in pool[:4]] == [4, 3, 2, 1]  # best first, longer first
    # ... and two slots go to a configuration drawn at random from the rest.
    assert len(set(got[8:])) == 1 and got[8] < 10
    # Before, the 8 best *prefixes* were the best trial's 4 and the runner-up's 4: nothing
    # from any other configuration.


def test_pool_respects_a_small_cap_and_zero():
    recorder = Recorder()
    opt, view = told_optimizer(recorder, max_prefixes=3)
    opt.ask(cache=view)
    assert len(recorder.pools[-1]) == 3
    recorder = Recorder()
    opt, view = told_optimizer(recorder, max_prefixes=0)
    opt.ask(cache=view)
    assert recorder.pools[-1] == []


class Spy(Method):
    """EEIPU, recording each proposal and the acquisition it was chosen by."""

    name = "spy"
    uses_prefixes = True

    def __init__(self):
        self.inner = make_method(
            "eeipu",
            num_restarts=2,
            raw_samples=32,
            prefix_raw_samples=16,
            maxiter=30,
            warm_start=False,
        )
        self.seen = []

    def propose(self, obs):
        proposal = self.inner.propose(obs)
        self.seen.append((proposal, self.inner.acquisition(obs)))
        return proposal


def test_proposals_are_scored_at_the_configuration_that_runs():
    """An int with 3 values: L-BFGS optimizes the relaxed coordinate, but every proposal
    (winner and runners-up) is the rounded configuration, scored there."""
    space = SearchSpace.from_dict(
        {
            "a": {
                "n": {"type": "int", "low": 0, "high": 2},
                "u": {"type": "float", "low": 0, "high": 1},
            },
            "b": {"v": {"type": "float", "low": 0, "high": 1}},
        }
    )
    spy = Spy()
    opt = Optimizer(space, method=spy, budget=1e6, n_init=6, seed=1)
    view = HistoryCacheView(space.stages)
    for _ in range(9):
        t = opt.ask(cache=view)
        obj = -((t.params["a"]["n"] - 1.3) ** 2) - (t.params["b"]["v"] - 0.4) ** 2
        opt.tell(t, objective=obj, costs={"a": 2.0, "b": 1.0})
        view.add(t.params)
    assert len(spy.seen) == 3
    for proposal, acq in spy.seen:
        for p in (proposal, *proposal.alternatives):
            assert torch.equal(p.x, space.encode(space.decode(p.x)))
            acq.n_cached = 0 if p.prefix is None else p.prefix.n_stages
            with torch.no_grad():
                value = float(acq(p.x.view(1, 1, -1)))
            assert value == pytest.approx(p.acq_value, abs=1e-6)
