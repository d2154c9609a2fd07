"""Stages without hyperparameters (fixed loading, evaluation or export stages) in every
method: their params are ``{}``, they are cached exactly when their upstream stages are, and
their cost is modelled (on the upstream columns, or as a constant when there are none)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from eeipu import METHODS, HistoryCacheView, Optimizer, SearchSpace, build_prefix_pool
from eeipu._lambo import LaMBO, stage_depths
from eeipu._models import CostModel
from eeipu._ms_bo import CascadeBO
from tests.eeipu.test_baselines import observations

FAST = {"num_restarts": 2, "raw_samples": 32, "maxiter": 30}
FLOAT = {"type": "float", "low": 0.0, "high": 1.0}
INT = {"type": "int", "low": 1, "high": 8}

#: Pipelines with a fixed first, middle and last stage, and one with a single tuned stage.
SPACES = {
    "first": {"load": {}, "prep": {"a": FLOAT}, "train": {"b": FLOAT, "n": INT}},
    "middle": {"prep": {"a": FLOAT}, "export": {}, "train": {"b": FLOAT}},
    "last": {"prep": {"a": FLOAT, "n": INT}, "train": {"b": FLOAT}, "evaluate": {}},
    "one_tuned": {"load": {}, "clean": {}, "train": {"b": FLOAT, "n": INT}, "evaluate": {}},
}
#: What each stage costs to compute, and to load from the cache.
BASE_COST = {"load": 2.0, "prep": 3.0, "clean": 0.5, "export": 0.3, "train": 1.0, "evaluate": 0.2}
LOAD_COST = 0.01


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def objective(params):
    values = [v for section in params.values() for v in section.values()]
    return -sum((float(v) / (8 if isinstance(v, int) else 1) - 0.4) ** 2 for v in values)


def stage_costs(space, params, cached):
    """Costs that depend on the stage's own and upstream values (a fixed stage's on its
    inputs), or the load cost for the cached stages."""
    out, upstream = {}, 0.0
    for stage in space.stages:
        upstream += sum(float(v) for v in params[stage].values())
        out[stage] = LOAD_COST if stage in cached else BASE_COST[stage] * (1.0 + upstream)
    return out


def run_study(space, method, n_trials=16, seed=0, **options):
    opt = Optimizer(
        space,
        method=method,
        budget=1e6,
        n_init=5,
        seed=seed,
        method_options={**FAST, **options} if method != "random" else None,
    )
    for _ in range(n_trials):
        trial = opt.ask()
        opt.tell(trial, objective(trial.params), stage_costs(space, trial.params, trial.memoized))
    return opt


# ---------------------------------------------------------------- every method
# make test (and test-fast) runs eeipu on every layout and every method on the first layout;
# make test-extended the rest of the grid.
@pytest.mark.parametrize(
    ("name", "method"),
    [
        pytest.param(
            name,
            method,
            marks=[]
            if method == "eeipu" or name == min(SPACES)
            else [pytest.mark.slow, pytest.mark.extended],
        )
        for name in sorted(SPACES)
        for method in sorted(METHODS)
    ],
)
def test_every_method_runs_with_fixed_stages(name, method):
    space = SearchSpace.from_dict(SPACES[name])
    opt = run_study(space, method)
    trials = opt.trials
    assert len(trials) == 16
    fixed = [s for s in space.stages if not SPACES[name][s]]
    for t in trials:
        assert list(t.params) == list(space.stages)
        assert all(t.params[s] == {} for s in fixed)
        space.validate(t.params)
    assert {t.origin for t in trials[5:]} <= {method, "random"}
    # A leading fixed stage is computed once, then loaded by every trial after it.
    if space.stages[0] in fixed:
        assert [space.stages[0] in t.memoized for t in trials] == [False] + [True] * 15
    assert opt.expected_cost(trials[-1]) > 0


def test_cascade_with_a_fixed_first_stage_and_stage_outputs():
    """MS-BO's cascade: a fixed first stage has no inputs, so its (constant) output is
    modelled as a constant; a fixed later stage's GP sees the previous output only."""
    space = SearchSpace.from_dict({"load": {}, "prep": {"a": FLOAT}, "score": {}})
    gen = torch.Generator().manual_seed(0)
    X = torch.rand(12, 1, dtype=torch.double, generator=gen)
    y0 = torch.full((12,), 3.0, dtype=torch.double)
    y1 = (X[:, 0] - 0.3) ** 2
    Y = -(y1 * 2).unsqueeze(-1)
    O = torch.stack([y0, y1, Y[:, 0]], -1)
    method = CascadeBO(**FAST)
    proposal = method.propose(observations(space, X, Y, stage_outputs=O))
    assert method.cascade_used
    assert proposal.x.shape == (1,) and 0 <= float(proposal.x[0]) <= 1


def test_lambo_splits_only_stages_with_parameters():
    """Stage costs shape the tree as before, with a fixed stage's cost counted in the
    switch of the tuned stage upstream of it; the last tuned stage is free (not split)."""
    space = SearchSpace.from_dict(
        {"load": {}, "prep": {"a": FLOAT}, "export": {}, "train": {"b": FLOAT}, "ev": {}}
    )
    costs = torch.tensor([[1.0, 4.0, 4.0, 1.0, 0.1]], dtype=torch.double)
    cached = torch.zeros_like(costs, dtype=torch.bool)
    # prep's switch re-runs prep, export, train and ev: log2(9.1 / 1.1) ~ 3 levels.
    assert stage_depths(space, costs, cached) == [0, 3, 0, 0]
    last = SearchSpace.from_dict({"prep": {"a": FLOAT}, "train": {"b": FLOAT}, "ev": {}})
    assert stage_depths(last, costs[:, [1, 3, 4]], cached[:, :3]) == [2, 0]
    only = SearchSpace.from_dict({"load": {}, "train": {"b": FLOAT}, "ev": {}})
    assert stage_depths(only, costs[:, :3], cached[:, :3]) == [0, 0]
    assert LaMBO(depth=2).tree(observations(space, torch.rand(3, 2), torch.rand(3, 1))).H == 2


# ---------------------------------------------------------------- cost models
def test_a_fixed_stage_cost_is_a_constant_or_follows_its_upstream_columns():
    """A leading fixed stage (no columns at all): the mean of its log costs with their
    spread; a later one, with the reference's own-parameter conditioning: the upstream
    columns (its cost depends on its inputs)."""
    gen = torch.Generator().manual_seed(0)
    X = torch.rand(10, 1, dtype=torch.double, generator=gen)
    load = torch.tensor([2.0, 2.2, 1.8, 2.1, 1.9, 2.0, 2.05, 1.95, 2.0, 2.0], dtype=torch.double)
    evaluate = 0.1 + 2.0 * X[:, 0]
    costs = torch.stack([load, torch.ones(10, dtype=torch.double), evaluate], -1)
    cached = torch.zeros(10, 3, dtype=torch.bool)
    cols = [slice(0, 0), slice(0, 1), slice(0, 1)]
    model = CostModel.fit(X, costs, cached, cols)
    mean, std = model.stages[0].mean_std(X)
    assert torch.allclose(mean, load.log().mean().expand(10))
    assert torch.allclose(std, load.log().std().expand(10))
    mean, _ = model.stages[2].mean_std(torch.tensor([[0.05], [0.95]], dtype=torch.double))
    assert float(mean[1] - mean[0]) > 1.0  # evaluate's cost follows prep's parameter
    assert torch.isfinite(model.log_expected_inverse_cost(X, 1)).all()


@pytest.mark.parametrize("cost_inputs", ["stage", "prefix"])
def test_cost_inputs_of_a_fixed_stage(cost_inputs):
    from eeipu import AcquisitionSearch, CostAwareEI, CostTerm

    space = SearchSpace.from_dict({"load": {}, "prep": {"a": FLOAT}, "evaluate": {}})
    gen = torch.Generator().manual_seed(0)
    X = torch.rand(8, 1, dtype=torch.double, generator=gen)
    costs = torch.stack([1 + 0.1 * X[:, 0], 1 + X[:, 0], 0.1 + X[:, 0]], -1)
    obs = observations(space, X, -X, costs=costs)
    method = CostAwareEI(cost=CostTerm(inputs=cost_inputs), search=AcquisitionSearch(**FAST))
    model = method.cost_model(obs)
    assert model.stages[0].model is None  # no columns: a constant
    assert model.stages[2].model is not None  # evaluate sees prep's column either way
    assert model.stages[2].cols == slice(0, 1)


# ---------------------------------------------------------------- memoization
def test_prefix_ending_in_a_fixed_stage_counts_as_cached():
    """A trial that reuses the stage before a fixed stage expects both loaded, and the
    acquisition charges both their load cost (the prefix through the fixed stage)."""
    space = SearchSpace.from_dict({"prep": {"a": FLOAT}, "export": {}, "train": {"b": FLOAT}})
    opt = Optimizer(space, "eeipu", budget=1e6, n_init=3, seed=0)
    first = opt.ask()
    opt.tell(first, 0.5, {"prep": 5.0, "export": 5.0, "train": 0.1})
    again = opt.enqueue({"prep": first.params["prep"], "export": {}, "train": {"b": 0.9}})
    assert again.memoized == ("prep", "export")
    pool = build_prefix_pool(space, opt.trials, HistoryCacheView(space.stages, [first.params]), 24)
    # One prefix, through the fixed stage: "prep" alone adds nothing and costs more.
    assert [(p.n_stages, p.params) for p in pool] == [
        (2, {"prep": first.params["prep"], "export": {}})
    ]


def test_eeipu_reuses_an_expensive_prefix_through_a_fixed_stage():
    """prep and export (fixed) are dear, train is cheap: EEIPU keeps prep's value and loads
    both, as it would with prep alone; the discount covers the fixed stage too."""
    space = SearchSpace.from_dict({"prep": {"a": FLOAT}, "export": {}, "train": {"b": FLOAT}})
    costs = {"prep": 50.0, "export": 50.0, "train": 0.5}
    opt = Optimizer(space, "eeipu", budget=1e6, n_init=6, seed=0, method_options=FAST)
    reused = 0
    for i in range(16):
        trial = opt.ask()
        told = {s: (LOAD_COST if s in trial.memoized else c) for s, c in costs.items()}
        if i >= 6 and trial.memoized:
            assert trial.memoized == ("prep", "export")
            assert trial.acq_terms["prefix_stages"] == 2
            reused += 1
        opt.tell(trial, objective(trial.params), told)
    assert reused >= 6


def test_leading_fixed_stage_costs_its_load_in_every_candidate():
    """The first stage has no parameters: after one trial every candidate loads it, and the
    prefix pool holds it (an empty configuration) so the acquisition charges its load."""
    space = SearchSpace.from_dict({"load": {}, "train": {"b": FLOAT}})
    opt = run_study(space, "eeipu", n_trials=10)
    t = opt.ask()
    assert t.memoized == ("load",)
    assert t.acq_terms["prefix_stages"] == 1
    assert math.isfinite(t.acq_value)


def test_a_resumed_study_with_fixed_stages_asks_what_it_would_have():
    """The journal's round trip: params with ``{}`` sections (JSON), replayed with
    ``add_trial`` and the method's state, give the next ask of the uninterrupted study."""
    space = SearchSpace.from_dict(SPACES["middle"])
    opt = run_study(space, "eeipu", n_trials=8)
    record = json.loads(json.dumps([t.to_dict() for t in opt.trials]))
    state = json.loads(json.dumps(opt.state_dict(), allow_nan=False))
    resumed = Optimizer(space, "eeipu", budget=1e6, n_init=5, seed=0, method_options=FAST)
    for t in record:
        resumed.add_trial(t["params"], t["objective"], t["costs"], cached=t["cached"])
    resumed.load_state_dict(state)
    assert resumed.trials[-1].params["export"] == {}
    assert resumed.ask().params == opt.ask().params
