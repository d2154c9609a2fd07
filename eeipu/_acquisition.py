"""Cost-aware acquisition functions.

    log EEIPU(x; δ) = log EI(x) + η · log I(x; δ)

(Essofi et al., arXiv 2411.03731, eq. for EEIPU; η is CArBO's cost cooling). Built on
BoTorch's :class:`LogExpectedImprovement`, as BoTorch's cost-aware utilities add
``-log(cost)`` to the log utility rather than dividing EI, which underflows.

The alternative is the Pandora's box Gittins index (Xie et al., "Cost-aware Bayesian
optimization via the Pandora's box Gittins index", NeurIPS 2024): the threshold g(x; δ) at
which the expected improvement over g is worth the candidate's cost, EI_g(x) = λ · C(x; δ).
Where EI per unit cost divides by the cost, the index pays for it additively: a dear,
uncertain candidate keeps a high index (about μ + σ·sqrt(2 log(σ / λC)) when λC ≪ σ).
"""

from __future__ import annotations

import math

import torch
from botorch.acquisition import AcquisitionFunction
from botorch.acquisition.analytic import LogExpectedImprovement
from botorch.models.model import Model
from botorch.utils.transforms import t_batch_mode_transform
from torch import Tensor

from eeipu._models import CostModel

__all__ = [
    "GittinsIndex",
    "LogEIPerCost",
    "LogSuccessWeighted",
    "cooling_eta",
    "log_h",
    "log_h_inverse",
    "log_success",
]


def cooling_eta(budget: float, spent: float, warmup_spent: float | None) -> float:
    """CArBO's cost cooling η = (B_total − B_used) / (B_total − B_0), clipped to [0, 1].

    η is 1 until the warm-up ends (``warmup_spent`` is None) and reaches 0 when the budget
    is spent, where the acquisition becomes plain EI.
    """
    if warmup_spent is None:
        return 1.0
    span = budget - warmup_spent
    if span <= 0:
        return 0.0
    return float(min(max((budget - spent) / span, 0.0), 1.0))


class LogEIPerCost(AcquisitionFunction):
    """log EI(x) + η · log E[1 / C(x; δ)], the log of EI per unit (expected) cost.

    With ``cost_model=None`` this is LogEI; with a total-cost model and η = 1 it is EIPS; with
    per-stage cost models and δ > 0 it is EEIPU's memoization-aware acquisition. ``log_ei``
    replaces the quality term, e.g. by BoTorch's ``qLogNoisyExpectedImprovement`` (noisy
    incumbent, pending trials integrated over), with the same cost term.

    Args:
        model: The objective GP (maximized).
        best_f: Best observed objective value (in the model's outcome scale).
        cost_model: Expected-inverse-cost model, or None.
        eta: Cost exponent η ≥ 0.
        n_cached: δ, the number of leading stages that are cached for these candidates.
        log_ei: The quality term, an acquisition of ``batch x 1 x d`` in log space; default
            ``LogExpectedImprovement(model, best_f)`` (``best_f`` is then required).

    Example:
        >>> acq = LogEIPerCost(gp, best_f=Y.max(), cost_model=costs, eta=0.8, n_cached=1)
        >>> acq(X)  # X: batch x 1 x d -> batch
    """

    def __init__(
        self,
        model: Model,
        best_f: float | Tensor | None,
        cost_model: CostModel | None = None,
        eta: float = 1.0,
        n_cached: int | Tensor = 0,
        log_ei: AcquisitionFunction | None = None,
    ) -> None:
        super().__init__(model=model)
        if log_ei is None:
            if best_f is None:
                raise ValueError("LogEIPerCost needs `best_f` or `log_ei`")
            log_ei = LogExpectedImprovement(model=model, best_f=best_f)
        self.log_ei = log_ei
        self.cost_model = cost_model
        self.eta = float(eta)
        self.n_cached = n_cached

    @property
    def success(self) -> Model | None:
        """The GP on outcome labels when the quality term is weighted by P(success)
        (:class:`LogSuccessWeighted`), else None."""
        return self.log_ei.success if isinstance(self.log_ei, LogSuccessWeighted) else None

    @property
    def uses_cost(self) -> bool:
        """Whether the cost term counts (a cost model and η ≠ 0)."""
        return self.cost_model is not None and self.eta != 0.0

    @t_batch_mode_transform(expected_q=1)
    def forward(self, X: Tensor) -> Tensor:
        """``batch x 1 x d`` -> ``batch``."""
        value = self.log_ei(X)
        if not self.uses_cost:
            return value
        log_inv_cost = self.cost_model.log_expected_inverse_cost(X.squeeze(-2), self.n_cached)
        return value + self.eta * log_inv_cost.to(value)

    def log_inverse_cost(self, X: Tensor) -> Tensor:
        """Just the cost term log I(x; δ), ``batch x 1 x d`` -> ``batch`` (zero without one)."""
        if self.cost_model is None:
            return torch.zeros(X.shape[:-2], dtype=X.dtype)
        return self.cost_model.log_expected_inverse_cost(X.squeeze(-2), self.n_cached)


def log_success(success: Model, X: Tensor) -> Tensor:
    """log P(success | x) = log Φ(μ/σ) of ``success``, a GP on +1 / -1 outcome labels, at
    ``batch x 1 x d`` -> ``batch``: the probability that its latent function is positive."""
    posterior = success.posterior(X)
    mu = posterior.mean.reshape(X.shape[:-2])
    sigma = posterior.variance.clamp_min(1e-12).sqrt().reshape(X.shape[:-2])
    return torch.special.log_ndtr(mu / sigma)


class LogSuccessWeighted(AcquisitionFunction):
    """log a(x) + log P(success | x): a log-space acquisition times the probability that the
    configuration runs to the end (the probability of feasibility of constrained EI,
    Gardner et al. 2014; Gelbart et al. 2014).

    ``success`` models the outcome label, +1 for a complete trial and -1 for a failed one
    (a GP regression on the labels); P(success | x) = Φ(μ(x) / σ(x)) from its latent
    posterior, the probability that the label's latent function is positive there.

    Args:
        log_acq: The quality term, ``batch x 1 x d`` -> ``batch`` in log space (e.g. LogEI).
        success: The GP on the +1 / -1 labels of the told trials.

    Example:
        >>> acq = LogSuccessWeighted(LogExpectedImprovement(gp, best_f), success_gp)
        >>> acq(X)  # X: batch x 1 x d -> batch
    """

    def __init__(self, log_acq: AcquisitionFunction, success: Model) -> None:
        super().__init__(model=log_acq.model)
        self.log_acq = log_acq
        self.success = success

    def log_success(self, X: Tensor) -> Tensor:
        """log P(success | x), ``batch x 1 x d`` -> ``batch``."""
        return log_success(self.success, X)

    @t_batch_mode_transform(expected_q=1)
    def forward(self, X: Tensor) -> Tensor:
        """``batch x 1 x d`` -> ``batch``."""
        value = self.log_acq(X)
        return value + self.log_success(X).to(value)


_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
_U_MIN = -40.0  # log h(-40) ~ -807: indices past it are clamped there


def log_h(u: Tensor) -> Tensor:
    """log h(u), h(u) = φ(u) + u·Φ(u) (EI of a standard normal over -u), stable for u ≪ 0.

    For u < -1, h(u) = φ(u) · (1 - z·R(z)) with z = -u and R Mills' ratio (via ``erfcx``),
    so no φ and Φ tail is subtracted from another.
    """
    hi = u.clamp_min(-1.0)
    z = (-u).clamp_min(1.0)
    direct = torch.log(torch.exp(-0.5 * hi**2 - _LOG_SQRT_2PI) + hi * torch.special.ndtr(hi))
    mills = math.sqrt(math.pi / 2) * torch.special.erfcx(z / math.sqrt(2))
    tail = -0.5 * z**2 - _LOG_SQRT_2PI + torch.log1p(-z * mills)
    return torch.where(u >= -1.0, direct, tail)


def log_h_inverse(t: Tensor, iterations: int = 80) -> Tensor:
    """The u with log h(u) = t (h increasing from 0 to ∞), differentiable in ``t``.

    Bisection on ``[-40, max(e^t, 1) + 1]`` (h(u) > u), then one Newton step whose
    gradient is the implicit function's, dU/dt = h(u) / Φ(u).
    """
    with torch.no_grad():
        td = t.detach().clamp(max=600.0)
        lo = torch.full_like(td, _U_MIN)
        hi = td.exp().clamp_min(1.0) + 1.0
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            below = log_h(mid) < td
            lo = torch.where(below, mid, lo)
            hi = torch.where(below, hi, mid)
        u0 = 0.5 * (lo + hi)
        lh = log_h(u0)
        slope = torch.exp(torch.special.log_ndtr(u0) - lh)  # d log h / du = Φ(u) / h(u)
    return u0 - (lh - t) / slope


class GittinsIndex(AcquisitionFunction):
    """The Pandora's box Gittins index g(x; δ), in units of the objective's spread above
    the incumbent: the g with  E[max(f(x) - g, 0)] = λ · C(x; δ).

    With f(x) ~ N(μ, σ²) this is σ·h((μ - g)/σ) = λ·C, so g = μ - σ·h⁻¹(λC/σ). With a
    model of failures (``success``), a box that fails (probability 1 - p) pays nothing, so
    the equation is p·E[max(f(x) - g, 0)] = λ·C and g = μ - σ·h⁻¹(λC/(pσ)). μ, σ and g
    are standardized, (· - best_f) / scale; C(x; δ) = 1 / I(x; δ) is the memoization-aware
    expected cost (``cost_model``, δ cached stages) and λ (per unit of cost) trades the two.
    A candidate whose EI over the incumbent is exactly 2λ·C has index above the incumbent:
    :meth:`calibrated` sets λ to half the best EI per unit cost over given points (PBGI-D's
    rule, recomputed at each ask).

    Args:
        model: The objective GP (maximized).
        best_f: The incumbent (in the model's outcome scale).
        scale: The objective's spread (e.g. the told values' standard deviation).
        cost_model: Expected-inverse-cost model.
        lam: λ > 0, in standardized objective per unit of cost.
        n_cached: δ, the number of leading stages that are cached for these candidates.
        success: A GP on +1 / -1 outcome labels (p = P(success), see :func:`log_success`),
            or None when no trial failed (p = 1).

    Example:
        >>> acq = GittinsIndex.calibrated(gp, Y.max(), Y.std(), costs, X_raw)
        >>> acq(X)  # X: batch x 1 x d -> batch
    """

    uses_cost = True
    eta = 1.0

    def __init__(
        self,
        model: Model,
        best_f: float | Tensor,
        scale: float | Tensor,
        cost_model: CostModel,
        lam: float,
        n_cached: int | Tensor = 0,
        success: Model | None = None,
    ) -> None:
        if not (lam > 0 and math.isfinite(lam)):
            raise ValueError(f"GittinsIndex needs a positive, finite `lam`, but got {lam!r}")
        super().__init__(model=model)
        self.best_f = float(best_f)
        self.scale = max(float(scale), 1e-9)
        self.cost_model = cost_model
        self.lam = float(lam)
        self.n_cached = n_cached
        self.success = success

    @classmethod
    def calibrated(
        cls,
        model: Model,
        best_f: float | Tensor,
        scale: float | Tensor,
        cost_model: CostModel,
        X: Tensor,
        n_cached: int | Tensor = 0,
        success: Model | None = None,
    ) -> GittinsIndex:
        """The index with λ = max over ``X`` (``n x d``, δ = ``n_cached``) of EI (times
        P(success) with ``success``) per unit expected cost, halved."""
        acq = cls(model, best_f, scale, cost_model, lam=1.0, n_cached=n_cached, success=success)
        with torch.no_grad():
            mu, sigma = acq._standardized(X.unsqueeze(-2))
            log_eipu = sigma.log() + log_h(mu / sigma) + acq.log_inverse_cost(X.unsqueeze(-2))
            log_eipu = log_eipu + acq.log_success(X.unsqueeze(-2))
        acq.lam = float(torch.exp(log_eipu.max()) / 2)
        if not (acq.lam > 0 and math.isfinite(acq.lam)):
            acq.lam = 1e-300  # no point improves at all: the index is the upper tail alone
        return acq

    def _standardized(self, X: Tensor) -> tuple[Tensor, Tensor]:
        """(μ - best_f)/scale and σ/scale at ``batch x 1 x d`` -> ``batch`` each."""
        posterior = self.model.posterior(X)
        mu = posterior.mean.reshape(X.shape[:-2])
        sigma = posterior.variance.clamp_min(1e-18).sqrt().reshape(X.shape[:-2])
        return (mu - self.best_f) / self.scale, (sigma / self.scale).clamp_min(1e-9)

    @t_batch_mode_transform(expected_q=1)
    def forward(self, X: Tensor) -> Tensor:
        """``batch x 1 x d`` -> ``batch``: g(x; δ), standardized."""
        mu, sigma = self._standardized(X)
        log_cost = -self.log_inverse_cost(X).to(mu)
        log_p = self.log_success(X).to(mu)
        u = log_h_inverse(math.log(self.lam) + log_cost - log_p - sigma.log())
        return mu - sigma * u

    def log_inverse_cost(self, X: Tensor) -> Tensor:
        """log I(x; δ), ``batch x 1 x d`` -> ``batch``."""
        return self.cost_model.log_expected_inverse_cost(X.squeeze(-2), self.n_cached)

    def log_success(self, X: Tensor) -> Tensor:
        """log P(success | x), ``batch x 1 x d`` -> ``batch`` (zero without ``success``)."""
        if self.success is None:
            return torch.zeros(X.shape[:-2], dtype=X.dtype)
        return log_success(self.success, X)
