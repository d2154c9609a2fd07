"""Cost-aware acquisition functions in log space.

    log EEIPU(x; δ) = log EI(x) + η · log I(x; δ)

(Essofi et al., arXiv 2411.03731, eq. for EEIPU; η is CArBO's cost cooling). Built on
BoTorch's :class:`LogExpectedImprovement`, as BoTorch's cost-aware utilities add
``-log(cost)`` to the log utility rather than dividing EI, which underflows.
"""

from __future__ import annotations

import torch
from botorch.acquisition import AcquisitionFunction
from botorch.acquisition.analytic import LogExpectedImprovement
from botorch.models.model import Model
from botorch.utils.transforms import t_batch_mode_transform
from torch import Tensor

from eeipu._models import CostModel

__all__ = ["LogEIPerCost", "cooling_eta"]


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
