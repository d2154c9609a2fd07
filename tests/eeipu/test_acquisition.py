"""Tier (a): acquisition math on fitted BoTorch models and hand-made cost models."""

from __future__ import annotations

import math

import pytest
import torch
from botorch.acquisition.analytic import ExpectedImprovement

from eeipu import CostModel, LogEIPerCost, cooling_eta, fit_gp
from eeipu._models import _StageCost

D = 4


@pytest.fixture(scope="module")
def data():
    gen = torch.Generator().manual_seed(0)
    X = torch.rand(15, D, generator=gen, dtype=torch.double)
    Y = (X.sin().sum(-1) + 0.1 * X[:, 0] ** 2).unsqueeze(-1)
    # two stages: stage 0 owns columns 0-1 and is expensive, stage 1 owns columns 2-3
    costs = torch.stack([10 * torch.exp(X[:, 0]), 1 + X[:, 2]], dim=-1)
    cached = torch.zeros_like(costs, dtype=torch.bool)
    return X, Y, costs, cached


@pytest.fixture(scope="module")
def models(data):
    X, Y, costs, cached = data
    gp = fit_gp(X, Y)
    cost = CostModel.fit(X, costs, cached, [slice(0, 2), slice(0, 4)], seed=0)
    return gp, cost


def test_cooling_schedule_end_points():
    assert cooling_eta(100.0, 30.0, None) == 1.0  # during warm-up
    assert cooling_eta(100.0, 30.0, 30.0) == 1.0  # right after warm-up
    assert cooling_eta(100.0, 65.0, 30.0) == pytest.approx(0.5)
    assert cooling_eta(100.0, 100.0, 30.0) == 0.0  # budget spent
    assert cooling_eta(100.0, 130.0, 30.0) == 0.0  # overspent: clipped
    assert cooling_eta(100.0, 120.0, 120.0) == 0.0  # warm-up alone exceeded the budget


def test_shapes_and_finiteness(models):
    gp, cost = models
    acq = LogEIPerCost(gp, best_f=1.0, cost_model=cost, eta=0.7, n_cached=1)
    X = torch.rand(7, 1, D, dtype=torch.double)
    out = acq(X)
    assert out.shape == (7,)
    assert torch.isfinite(out).all()
    assert acq(torch.rand(1, D, dtype=torch.double)).shape == (1,)
    assert cost.log_expected_inverse_cost(torch.rand(3, 5, D, dtype=torch.double)).shape == (3, 5)


def test_memoization_discount_raises_acquisition(models):
    """Same posterior, a cached prefix => strictly higher EEIPU, more so the longer it is."""
    gp, cost = models
    X = torch.rand(20, 1, D, dtype=torch.double, generator=torch.Generator().manual_seed(3))
    values = [LogEIPerCost(gp, 1.0, cost, 1.0, n)(X) for n in (0, 1, 2)]
    assert (values[1] > values[0]).all()
    assert (values[2] > values[1]).all()
    # with eta = 0 the cost (and so the cache) no longer matters: plain LogEI
    flat = [LogEIPerCost(gp, 1.0, cost, 0.0, n)(X) for n in (0, 2)]
    assert torch.equal(flat[0], flat[1])


@pytest.mark.filterwarnings("ignore::botorch.exceptions.warnings.NumericsWarning")
def test_log_space_agrees_with_direct_computation(models):
    """exp(log EEIPU) = EI * I^eta where both are finite, I by direct Monte Carlo."""
    gp, cost = models
    X = torch.rand(10, 1, D, dtype=torch.double, generator=torch.Generator().manual_seed(4))
    best_f, eta = 0.5, 0.6
    ei = ExpectedImprovement(gp, best_f=best_f)(X)
    # direct MC of E[1/C] with the model's own base samples, stage 0 cached (n_cached=1)
    z = cost.z
    mean1, std1 = cost.stages[1].mean_std(X.squeeze(-2))
    total = cost.log_load[0].exp() + torch.exp(mean1.unsqueeze(-1) + std1.unsqueeze(-1) * z[:, 1])
    inv = (1.0 / total).mean(-1)
    direct = ei * inv**eta
    logged = LogEIPerCost(gp, best_f, cost, eta, n_cached=1)(X).exp()
    mask = direct > 1e-30
    assert mask.sum() >= 5
    torch.testing.assert_close(logged[mask], direct[mask], rtol=1e-6, atol=0)


def test_expected_inverse_cost_matches_closed_form_for_one_stage():
    """For a single log-normal stage, E[1/C] = exp(-mu + sigma^2 / 2)."""
    mu, sigma = 1.3, 0.4

    class Fixed(_StageCost):
        def mean_std(self, X):
            shape = X.shape[:-1]
            return torch.full(shape, mu, dtype=X.dtype), torch.full(shape, sigma, dtype=X.dtype)

    model = CostModel([Fixed(None, slice(0, 1))], torch.tensor([0.0]), n_samples=4096, seed=1)
    value = model.log_expected_inverse_cost(torch.zeros(2, 1, dtype=torch.double)).exp()
    torch.testing.assert_close(
        value, torch.full((2,), math.exp(-mu + sigma**2 / 2), dtype=torch.double), rtol=2e-3, atol=0
    )


def test_gradients_are_finite_and_prefix_columns_matter(models):
    gp, cost = models
    X = torch.rand(6, 1, D, dtype=torch.double, requires_grad=True)
    LogEIPerCost(gp, 1.0, cost, 0.8, n_cached=1)(X).sum().backward()
    assert torch.isfinite(X.grad).all()
    assert X.grad.abs().sum() > 0


def test_batched_n_cached_matches_scalar(models):
    gp, cost = models
    X = torch.rand(6, 1, D, dtype=torch.double)
    per_row = torch.tensor([0, 1, 2, 0, 1, 2])
    batched = LogEIPerCost(gp, 1.0, cost, 0.9, per_row)(X)
    for i, n in enumerate(per_row.tolist()):
        single = LogEIPerCost(gp, 1.0, cost, 0.9, n)(X[i : i + 1])
        torch.testing.assert_close(batched[i : i + 1], single)


def test_load_costs_are_learned_from_measurements(data):
    X, _Y, costs, cached = data
    cached = cached.clone()
    costs = costs.clone()
    cached[:3, 0] = True
    costs[:3, 0] = torch.tensor([0.2, 0.3, 0.4], dtype=torch.double)
    model = CostModel.fit(X, costs, cached, [slice(0, 2), slice(0, 4)])
    assert model.log_load[0].exp().item() == pytest.approx(0.3)
    # stage 1 never loaded: epsilon = 1% of its typical (geometric mean) compute cost
    typical = costs[:, 1].log().mean().exp().item()
    assert model.log_load[1].exp().item() == pytest.approx(0.01 * typical)
    fixed = CostModel.fit(X, costs, cached, [slice(0, 2), slice(0, 4)], load_eps=0.05)
    assert fixed.log_load[1].exp().item() == pytest.approx(0.05)


def test_fast_cost_predictor_equals_botorch_posterior(models):
    """The cost GPs' cached-Cholesky predictor matches BoTorch's posterior, values and grads."""
    _, cost = models
    stage = cost.stages[1]
    assert stage._predict.fast
    X = torch.rand(9, D, dtype=torch.double, requires_grad=True)
    mean, std = stage.mean_std(X)
    post = stage.model.posterior(X[..., stage.cols].unsqueeze(-2))
    torch.testing.assert_close(mean, post.mean.reshape(-1), rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(std, post.variance.sqrt().reshape(-1), rtol=1e-9, atol=1e-10)
    (g_fast,) = torch.autograd.grad((mean + std).sum(), X)
    (g_post,) = torch.autograd.grad((post.mean + post.variance.sqrt()).sum(), X)
    torch.testing.assert_close(g_fast, g_post, rtol=1e-7, atol=1e-9)


def test_noisy_quality_term_keeps_the_cost_term(data, models):
    """``log_ei=`` swaps the quality term (here BoTorch's qLogNEI: no incumbent value) and
    leaves the memoization-aware cost term as it is."""
    from botorch.acquisition.logei import qLogNoisyExpectedImprovement
    from botorch.sampling import SobolQMCNormalSampler

    X_told = data[0]
    gp, cost = models
    nei = qLogNoisyExpectedImprovement(
        gp, X_told, sampler=SobolQMCNormalSampler(torch.Size([64]), seed=0)
    )
    X = torch.rand(9, 1, D, dtype=torch.double, generator=torch.Generator().manual_seed(4))
    acq = LogEIPerCost(gp, None, cost, eta=0.6, n_cached=1, log_ei=nei)
    with torch.no_grad():
        expected = nei(X) + 0.6 * cost.log_expected_inverse_cost(X.squeeze(-2), 1)
        assert torch.allclose(acq(X), expected)
        assert not torch.allclose(acq(X), LogEIPerCost(gp, data[1].max(), cost, 0.6, 1)(X))
    with pytest.raises(ValueError, match="needs `best_f` or `log_ei`"):
        LogEIPerCost(gp, None)
