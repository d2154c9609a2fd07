"""The MS-BO (cascade) and LaMBO baselines: their models, bandit and region logic, and runs."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from eeipu import Observations, Optimizer, SearchSpace, TellError
from eeipu._lambo import (
    BanditState,
    LaMBO,
    RegionTree,
    choose_arm,
    replay,
    smb_loss_estimate,
    smb_update,
    stage_depths,
)
from eeipu._ms_bo import CascadeBO, CascadeLogEI
from eeipu.testing import SyntheticProblem, simulate

FAST = {"num_restarts": 2, "raw_samples": 32, "maxiter": 30}


@pytest.fixture(autouse=True)
def one_thread():
    """Small GPs: one torch thread is faster, and the Optimizer asks on one thread too."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def observations(space, X, Y, stage_outputs=None, costs=None, seed=0):
    n, S = X.shape[0], len(space.stages)
    return Observations(
        space=space,
        X=X,
        Y=Y,
        costs=torch.ones(n, S, dtype=torch.double) if costs is None else costs,
        cached=torch.zeros(n, S, dtype=torch.bool),
        eta=1.0,
        prefixes=[],
        seed=seed,
        rng=torch.Generator().manual_seed(seed),
        stage_outputs=stage_outputs,
        optimizer_seed=seed,
    )


# ---------------------------------------------------------------- MS-BO: the cascade
TWO = SearchSpace.from_dict(
    {
        "a": {
            "u": {"type": "float", "low": 0.0, "high": 1.0},
            "v": {"type": "float", "low": 0.0, "high": 1.0},
        },
        "b": {"x": {"type": "float", "low": 0.0, "high": 1.0}},
    }
)


def cascade_problem(X):
    """Stage 1 outputs a quadratic bowl of x_1; stage 2 a cosine of that (plus a little x_2).
    Each piece is simple, their composition is rings in x-space: easy for the cascade,
    hard for one GP on all parameters."""
    y1 = 4 * ((X[:, :2] - 0.3) ** 2).sum(-1)
    y2 = torch.cos(3 * y1) + 0.2 * X[:, 2]
    return y1, y2


def fitted_cascade(n=30, seed=0):
    X = torch.rand(n, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.double)
    y1, y2 = cascade_problem(X)
    O = torch.stack([y1, y2], -1)
    obs = observations(TWO, X, y2.unsqueeze(-1), stage_outputs=O)
    method = CascadeBO(**FAST, mc_samples=256)
    return method, obs, method.fit_cascade(obs)


def test_cascade_stage_models_take_the_previous_output_as_input():
    _, obs, stages = fitted_cascade()
    assert stages is not None and len(stages) == 2
    first, second = (s.predict.model.train_inputs[0] for s in stages)
    assert first.shape[-1] == 2  # x_1 only
    assert second.shape[-1] == 2  # x_2 and the scaled y_1
    y1 = obs.stage_outputs[:, 0]
    assert torch.allclose(second[:, 0], obs.X[:, 2])
    assert torch.allclose(second[:, 1], (y1 - stages[0].out_lo) / stages[0].out_scale)
    # The last stage models the objective (standardized targets of Y).
    Y = obs.Y.squeeze(-1)
    assert torch.allclose(stages[1].predict.model.train_targets, (Y - Y.mean()) / Y.std())


def test_cascade_samples_propagate_the_previous_stage():
    """Moving stage 1's prediction must move the final samples (through GP_2)."""
    _, obs, stages = fitted_cascade()
    z = torch.randn(128, 2, generator=torch.Generator().manual_seed(1), dtype=torch.double)
    acq = CascadeLogEI(stages, float(obs.Y.max()), 1.0, z)
    X = torch.tensor([[0.55, 0.3, 0.5]], dtype=torch.double)  # y_1 = 0.25, y_2 = cos(0.75) + 0.1
    predict = stages[0].predict
    with torch.no_grad():
        before = acq.samples(X).mean()
        stages[0].predict = lambda x: (predict(x)[0] * 0.0 + 1.0, predict(x)[1])  # y_1 := 1
        after = acq.samples(X).mean()
    assert float(before) == pytest.approx(math.cos(0.75) + 0.1, abs=0.2)
    assert float(after) == pytest.approx(math.cos(3.0) + 0.1, abs=0.25)


def test_cascade_predicts_better_than_one_gp_on_all_parameters():
    """Over 30 data seeds the RMSE ratio cascade / single GP was 0.04-0.41, once 0.66."""
    method, obs, stages = fitted_cascade()
    z = torch.randn(256, 2, generator=torch.Generator().manual_seed(2), dtype=torch.double)
    acq = CascadeLogEI(stages, float(obs.Y.max()), 1.0, z)
    Xt = torch.rand(300, 3, generator=torch.Generator().manual_seed(99), dtype=torch.double)
    truth = cascade_problem(Xt)[1]
    single_gp = method._fit("single", obs.X, obs.Y)
    with torch.no_grad():
        cascade = acq.samples(Xt).mean(-1)
        single = single_gp.posterior(Xt).mean.reshape(-1)
    rmse_cascade = float((cascade - truth).pow(2).mean().sqrt())
    rmse_single = float((single - truth).pow(2).mean().sqrt())
    assert rmse_cascade < 0.75 * rmse_single, (rmse_cascade, rmse_single)


def test_cascade_acquisition_is_finite_with_gradients():
    method, obs, _ = fitted_cascade()
    acq = method.acquisition(obs)
    assert isinstance(acq, CascadeLogEI) and method.cascade_used
    X = torch.rand(5, 1, 3, dtype=torch.double, requires_grad=True)
    value = acq(X)
    assert value.shape == (5,) and torch.isfinite(value).all()
    value.sum().backward()
    assert torch.isfinite(X.grad).all() and (X.grad != 0).any()


def test_without_stage_outputs_ms_bo_falls_back_to_one_gp():
    X = torch.rand(12, 3, generator=torch.Generator().manual_seed(0), dtype=torch.double)
    y2 = cascade_problem(X)[1].unsqueeze(-1)
    method = CascadeBO(**FAST)
    assert method.fit_cascade(observations(TWO, X, y2)) is None
    proposal = method.propose(observations(TWO, X, y2))
    assert method.cascade_used is False
    assert proposal.x.shape == (3,) and math.isfinite(proposal.acq_value)
    # A constant stage output carries nothing either.
    O = torch.stack([torch.ones(12, dtype=torch.double), y2.squeeze(-1)], -1)
    assert method.fit_cascade(observations(TWO, X, y2, stage_outputs=O)) is None


def test_stage_outputs_are_told_validated_and_recorded():
    space = SearchSpace.from_dict(SyntheticProblem().space_dict())
    problem = SyntheticProblem()
    opt = Optimizer(space, method="ms_bo", budget=1e3, n_init=2, seed=0)
    trial = opt.ask()
    obj, costs = problem.evaluate(trial.params)
    with pytest.raises(TellError, match=r"unknown stage\(s\) \['zz'\]"):
        opt.tell(trial, objective=obj, costs=costs, stage_outputs={"zz": 1.0})
    with pytest.raises(TellError, match="a stage output must be a finite number, but got nan"):
        opt.tell(trial, objective=obj, costs=costs, stage_outputs={"prep": float("nan")})
    outputs = problem.stage_outputs(trial.params)
    assert outputs["finetune"] == obj
    told = opt.tell(trial, objective=obj, costs=costs, stage_outputs=outputs)
    assert told.stage_outputs == outputs and told.to_dict()["stage_outputs"] == outputs
    replayed = Optimizer(space, method="ms_bo", budget=1e3, n_init=2, seed=0)
    again = replayed.add_trial(told.params, obj, costs, stage_outputs=told.stage_outputs)
    assert again.stage_outputs == outputs
    assert Optimizer(space, budget=1e3).add_trial(told.params, obj, costs).stage_outputs is None


# ---------------------------------------------------------------- LaMBO: tree and bandit
SYN = SyntheticProblem()
SYN_SPACE = SearchSpace.from_dict(SYN.space_dict())


def test_stage_depths_follow_measured_costs():
    costs = torch.tensor([[8.0, 8 / 3, 8 / 9]] * 3, dtype=torch.double)
    cached = torch.zeros(3, 3, dtype=torch.bool)
    # C = 11.56, 3.56, 0.89: log2 ratios 1.7 and 2.0.
    assert stage_depths(SYN_SPACE, costs, cached) == [2, 2]
    assert stage_depths(SYN_SPACE, costs, cached, max_depth=3) == [2, 1]
    cheap_first = torch.tensor([[0.1, 1.0, 50.0]] * 3, dtype=torch.double)
    assert stage_depths(SYN_SPACE, cheap_first, cached) == [1, 1]
    unknown = costs.clone()
    unknown[:, 1] = math.nan
    assert stage_depths(SYN_SPACE, unknown, cached) == [1, 1]
    # Cache loads are not compute costs.
    assert stage_depths(SYN_SPACE, costs, torch.ones(3, 3, dtype=torch.bool)) == [1, 1]


def test_region_tree_partitions_the_upstream_space():
    tree = RegionTree.build(SYN_SPACE, [2, 2])
    assert tree.H == 4 and tree.split_dims == (0, 1, 2, 3) and tree.stage_of_level == (0, 0, 1, 1)
    X = torch.rand(
        500, SYN_SPACE.dim, generator=torch.Generator().manual_seed(0), dtype=torch.double
    )
    leaves = tree.leaf_of(X)
    for leaf in range(tree.n_leaves):
        lo, hi = tree.box(leaf)
        inside = ((lo <= X) & (hi > X) | (hi == 1) & (X == 1)).all(-1)
        assert torch.equal(inside, leaves == leaf)
        assert (lo[5:] == 0).all() and (hi[5:] == 1).all()  # the last stage is free
    assert tree.unchanged_stages(0b0110, 0b0110, 2) == 2
    assert tree.unchanged_stages(0b0110, 0b0101, 2) == 1  # stage 2's bits differ
    assert tree.unchanged_stages(0b0110, 0b1110, 2) == 0  # stage 1's first bit differs


def test_smb_update_by_hand_and_unbiased():
    p = torch.tensor([0.5, 0.5], dtype=torch.double)
    lr = 0.1
    up = smb_update(p, 0, 1.0, torch.tensor([1.0], dtype=torch.double), lr)
    # ℓ̄_0 = (2, 0); σ_0 = +1 doubles it: p ∝ (0.5 e^{-0.4}, 0.5).
    assert up[0] / up[1] == pytest.approx(math.exp(-0.4))
    stay = smb_update(p, 0, 1.0, torch.tensor([-1.0], dtype=torch.double), lr)
    assert torch.allclose(stay, p)
    # Averaged over all sign vectors, the estimate is the importance-weighted loss.
    q = torch.tensor([0.1, 0.2, 0.3, 0.15, 0.05, 0.1, 0.06, 0.04], dtype=torch.double)
    signs = itertools.product([-1.0, 1.0], repeat=3)
    mean = torch.stack(
        [smb_loss_estimate(q, 2, 0.7, torch.tensor(s, dtype=torch.double), 0.01) for s in signs]
    ).mean(0)
    expected = torch.zeros(8, dtype=torch.double)
    expected[2] = 0.7 / 0.3
    assert torch.allclose(mean, expected, atol=1e-12)


def test_lazy_arm_choice_stays_more_than_the_zero_switching_cost_variant():
    H = 4
    leaves = torch.tensor([3, 3, 9, 9, 9, 12, 3, 5, 5, 5])
    losses = torch.linspace(0.0, 1.0, 10, dtype=torch.double)
    stays = {}
    for lazy in (True, False):
        n = 0
        for seed in range(200):
            state = replay(leaves, losses, H, 1 / 32, optimizer_seed=seed, lazy=lazy)
            n += choose_arm(state, H, torch.Generator().manual_seed(seed)) == 5
        stays[lazy] = n / 200
    assert stays[True] > 0.45 and stays[False] < 0.2, stays


def test_arm_choice_respects_the_subtree():
    p = torch.full((16,), 1 / 16, dtype=torch.double)
    for seed in range(50):
        arm = choose_arm(BanditState(p, 0b1011, 2), 4, torch.Generator().manual_seed(seed))
        assert arm >> 2 == 0b10


# ---------------------------------------------------------------- LaMBO: proposals
def run_lambo(seed=0, n=9, **options):
    opt = Optimizer(
        SYN_SPACE,
        method="lambo",
        budget=1e6,
        n_init=4,
        seed=seed,
        method_options={**FAST, **options},
    )
    choices = []
    for _ in range(n):
        trial = opt.ask()
        if trial.origin == "lambo":
            choices.append((dict(opt.method.last_choice), trial))
        obj, costs = SYN.evaluate(trial.params)
        costs = {s: (0.01 if s in trial.memoized else c) for s, c in costs.items()}
        opt.tell(trial, objective=obj, costs=costs)
    return opt, choices


def test_lambo_proposals_lie_in_the_chosen_arm():
    _, choices = run_lambo(n=9)
    assert len(choices) == 5
    for choice, trial in choices:
        x = SYN_SPACE.encode(trial.params)
        assert (x >= choice["lower"] - 1e-9).all() and (x <= choice["upper"] + 1e-9).all()
        # The region really is narrower than the cube on the upstream dimensions.
        assert (choice["upper"] - choice["lower"])[:5].prod() <= 1 / choice["n_arms"] + 1e-12
        kept = SYN_SPACE.stages[: choice["kept_stages"]]
        assert set(kept) <= set(trial.memoized)


def test_lambo_replay_rebuilds_the_bandit():
    opt, _ = run_lambo(seed=2, n=7)
    again = Optimizer(SYN_SPACE, method="lambo", budget=1e6, n_init=4, seed=2, method_options=FAST)
    for t in opt.trials:
        again.add_trial(t.params, t.objective, t.costs, cached=t.cached)
    again.load_state_dict(opt.state_dict())
    a, b = opt.ask(), again.ask()
    assert a.params == b.params
    assert opt.method.last_choice["arm"] == again.method.last_choice["arm"]


def test_lambo_options_are_validated():
    for bad in ({"lr": 0}, {"depth": 0}, {"max_depth": 20}, {"num_restarts": 0}):
        with pytest.raises(Exception, match="must be"):
            LaMBO(**bad)


# ---------------------------------------------------------------- both, end to end
@pytest.mark.parametrize("method", ["ms_bo", "lambo"])
def test_seeded_and_end_to_end_on_the_synthetic_problem(method):
    def study(seed, n):
        opt = Optimizer(
            SYN_SPACE, method=method, budget=70.0, n_init=3, seed=seed, method_options=FAST
        )
        return opt, simulate(opt, SYN, max_trials=n)

    opt, trials = study(0, 6)
    assert [t.origin for t in trials] == ["warmup"] * 3 + [method] * 3
    assert all(t.stage_outputs["finetune"] == t.objective for t in trials)
    assert opt.best_trial.objective > -math.inf
    if method == "ms_bo":
        assert opt.method.cascade_used is True
    else:
        assert any(t.cached for t in trials[3:])  # it kept upstream stages
    assert [t.params for t in study(0, 4)[1]] == [t.params for t in trials[:4]]
    assert study(1, 4)[1][3].params != trials[3].params
