"""The parts a cost-aware acquisition is composed of.

BoTorch builds its cost-aware acquisitions from a quality term, a cost model and a utility
(``botorch/acquisition/cost_aware.py``); a method here is such a composition
(:class:`~eeipu.CostAwareEI`), with its own typed options (``eeipu/_options.py``):

- the quality term (:class:`Quality`): log EI on an incumbent, or noisy EI;
- the cost term (:class:`CostTerm`): log E[1/C(x; δ)] of a total or per-stage cost model
  (memoization-aware: δ cached stages pay their load cost), cooled by η;
- the trade-off (:class:`Ratio`, :class:`Gittins`): how quality and cost combine;
- the failure model (:class:`ImputeFailures`, :class:`ModelFailures`): what failed trials
  teach;
- one search settings object shared by every method that optimizes an acquisition
  (:class:`AcquisitionSearch`), and the prefix-pool search of memoizing ones
  (:class:`PrefixSearch`);
- :class:`GPFits`, the warm-started GP fits a method carries from one ask to the next.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from botorch.acquisition import AcquisitionFunction
from botorch.acquisition.analytic import LogExpectedImprovement
from botorch.acquisition.logei import qLogNoisyExpectedImprovement
from botorch.models import SingleTaskGP
from botorch.sampling import SobolQMCNormalSampler
from torch import Tensor
from torch.quasirandom import SobolEngine

from eeipu._acquisition import GittinsIndex, LogEIPerCost, LogSuccessWeighted
from eeipu._errors import OptimizerError
from eeipu._models import CostModel, fit_gp, gp_hyperparameters

if TYPE_CHECKING:
    from eeipu._methods import Observations

__all__ = [
    "FAILURES",
    "INCUMBENTS",
    "TRADEOFFS",
    "AcquisitionSearch",
    "CostTerm",
    "GPFits",
    "Gittins",
    "ImputeFailures",
    "ModelFailures",
    "PrefixSearch",
    "Quality",
    "Ratio",
    "check_positive_ints",
    "failure_model",
    "tradeoff",
]

INCUMBENTS = ("observed", "mean", "noisy")
TRADEOFFS = ("ratio", "gittins")
FAILURES = ("impute", "model")


def check_positive_ints(**options: Any) -> None:
    """Raise :class:`OptimizerError` naming the first option that is not an integer >= 1."""
    for name, v in options.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise OptimizerError(f"`{name}` must be a positive integer, but got {v!r}")


def _pick(kind: type, options: Any) -> dict[str, Any]:
    """The fields of dataclass ``kind`` that ``options`` (a dataclass) sets."""
    return {f.name: getattr(options, f.name) for f in fields(kind) if hasattr(options, f.name)}


# ---------------------------------------------------------------------- search settings
@dataclass(frozen=True, kw_only=True)
class AcquisitionSearch:
    """How an acquisition is searched, shared by the methods that optimize one.

    Attributes:
        num_restarts: L-BFGS starts (for the empty prefix, with a prefix pool).
        raw_samples: Raw Sobol samples screened for those starts.
        maxiter: L-BFGS iterations.
        mc_samples: M, quasi-MC samples (of the cost posterior; of noisy EI's joint
            posterior). 128 keeps log E[1/C] within 0.004 nats of a 16384-sample estimate
            on the synthetic problems, where candidates differ by ~1 nat.
        warm_start: Start each GP fit from the previous ask's hyperparameters.
    """

    num_restarts: int = 8
    raw_samples: int = 256
    maxiter: int = 200
    mc_samples: int = 128
    warm_start: bool = True

    def __post_init__(self) -> None:
        check_positive_ints(
            num_restarts=self.num_restarts,
            raw_samples=self.raw_samples,
            mc_samples=self.mc_samples,
            maxiter=self.maxiter,
        )

    @classmethod
    def of(cls, options: Any) -> AcquisitionSearch:
        """The settings a method's typed options (``eeipu/_options.py``) set."""
        return cls(**_pick(cls, options))


@dataclass(frozen=True, kw_only=True)
class PrefixSearch:
    """How a memoizing method searches its prefix pool: each cached prefix's raw samples
    are screened together, and the best raw points over the pool get ``prefix_starts``
    L-BFGS starts, at most ``prefix_restarts`` per prefix (so a large pool is screened
    widely but costs L-BFGS only where the acquisition is high)."""

    prefix_restarts: int = 2
    prefix_raw_samples: int = 64
    prefix_starts: int = 16

    def __post_init__(self) -> None:
        check_positive_ints(
            prefix_restarts=self.prefix_restarts,
            prefix_raw_samples=self.prefix_raw_samples,
            prefix_starts=self.prefix_starts,
        )

    @classmethod
    def of(cls, options: Any) -> PrefixSearch:
        """The settings a method's typed options set."""
        return cls(**_pick(cls, options))


@dataclass
class GPFits:
    """GP fits warm-started from the previous ask's hyperparameters (``init``, by model
    name), the state a method saves and restores (:meth:`Method.state_dict`)."""

    warm_start: bool = True
    init: dict[str, Any] = field(default_factory=dict)

    def start(self, key: str) -> Any:
        """Where the fit of model ``key`` starts: the last hyperparameters, or None."""
        return self.init.get(key) if self.warm_start else None

    def fit(self, key: str, X: Tensor, Y: Tensor) -> SingleTaskGP:
        """A GP on ``X`` (``n x d``), ``Y`` (``n x 1``), its hyperparameters kept."""
        model = fit_gp(X, Y, self.start(key))
        self.init[key] = gp_hyperparameters(model)
        return model


# ---------------------------------------------------------------------- failure models
@dataclass(frozen=True)
class ImputeFailures:
    """Failed trials count as the worst observed value (the objective GP steers away from
    them), as the literature's code does; no success model."""

    name: ClassVar[str] = "impute"

    def rows(self, obs: Observations) -> Tensor:
        """The told rows the objective GP learns from: all of them."""
        return torch.arange(obs.n_told)

    def success(self, obs: Observations, fits: GPFits) -> SingleTaskGP | None:
        """The success model: none."""
        return None


@dataclass(frozen=True)
class ModelFailures(ImputeFailures):
    """The objective GP sees complete trials only; a second GP regresses the outcome
    labels (+1 complete, -1 failed), and the quality term is multiplied by the probability
    of success P = Φ(μ/σ) of that GP (constrained EI's probability of feasibility). The
    same as :class:`ImputeFailures` until a trial fails."""

    name: ClassVar[str] = "model"

    def rows(self, obs: Observations) -> Tensor:
        if obs.failed is None:
            return super().rows(obs)
        return (~obs.failed).nonzero().squeeze(-1)

    def success(self, obs: Observations, fits: GPFits) -> SingleTaskGP | None:
        """The GP on the told trials' outcome labels, once a trial failed (else None)."""
        if obs.failed is None:
            return None
        n = obs.failed.numel()
        labels = torch.where(obs.failed, -1.0, 1.0).to(obs.Y).unsqueeze(-1)
        return fits.fit("success", obs.X[:n], labels)


def failure_model(name: str) -> ImputeFailures:
    """The failure model named by the ``failures`` option."""
    if name not in FAILURES:
        raise OptimizerError(
            f"`failures` must be one of {', '.join(map(repr, FAILURES))}, but got {name!r}"
        )
    return ModelFailures() if name == "model" else ImputeFailures()


# ---------------------------------------------------------------------- quality term
def fit_objective(
    obs: Observations, rows: Tensor, fits: GPFits, condition: bool = True
) -> SingleTaskGP:
    """The objective GP, its hyperparameters fitted on the told ``rows`` only; pending rows
    (their fantasies) are conditioned on afterwards (unless ``condition`` is False), a
    rank-p update of the fitted GP: fantasies would drag a fit away from the warm start
    (several times the L-BFGS steps) and teach the hyperparameters nothing."""
    n = obs.n_told
    model = fits.fit("objective", obs.X[rows], obs.Y[rows])
    if obs.n_pending and condition:
        with torch.no_grad():
            model.posterior(obs.X[n:])  # fills the caches that conditioning updates
        model = model.condition_on_observations(obs.X[n:], obs.Y[n:])
    return model


@dataclass(frozen=True)
class Quality:
    """The quality term, log EI.

    Attributes:
        incumbent: What EI improves on: ``"observed"``, the best observed objective (the
            textbook choice for noise-free objectives), ``"mean"``, the best posterior mean
            of the objective GP at the told trials (plug-in EI for noisy objectives), or
            ``"noisy"``, BoTorch's ``qLogNoisyExpectedImprovement``: EI integrated over the
            joint posterior of the told trials, with trials still running integrated over
            as ``X_pending`` instead of conditioned on their posterior mean.
    """

    incumbent: str = "observed"

    def __post_init__(self) -> None:
        if self.incumbent not in INCUMBENTS:
            raise OptimizerError(
                f"`incumbent` must be one of {', '.join(map(repr, INCUMBENTS))}, "
                f"but got {self.incumbent!r}"
            )

    def best_f(self, model: SingleTaskGP, obs: Observations, rows: Tensor) -> Tensor:
        """The incumbent value: the best observed ``Y``, else the best posterior mean at
        the told ``rows`` (also for ``"noisy"``, where an index needs one)."""
        if self.incumbent == "observed":
            return obs.Y.max()
        with torch.no_grad():
            return model.posterior(obs.X[rows]).mean.max()

    def term(
        self, obs: Observations, rows: Tensor, fits: GPFits, mc_samples: int
    ) -> tuple[AcquisitionFunction, SingleTaskGP]:
        """The fitted log EI acquisition and its objective GP."""
        if self.incumbent != "noisy":
            model = fit_objective(obs, rows, fits)
            return LogExpectedImprovement(model=model, best_f=self.best_f(model, obs, rows)), model
        model = fit_objective(obs, rows, fits, condition=False)
        sampler = SobolQMCNormalSampler(torch.Size([mc_samples]), seed=obs.seed)
        # Pruning the baseline draws its own samples from torch's global generator:
        # seeded here, the acquisition is a function of the observations alone.
        with torch.random.fork_rng():
            torch.manual_seed(obs.seed)
            quality = qLogNoisyExpectedImprovement(
                model=model,
                X_baseline=obs.X[rows],
                sampler=sampler,
                X_pending=obs.X[obs.n_told :] if obs.n_pending else None,
                prune_baseline=True,
            )
        return quality, model


# ---------------------------------------------------------------------- cost term
@dataclass(frozen=True)
class CostTerm:
    """The cost term: log E[1/C(x; δ)] of a cost model fitted on log costs, cooled.

    Attributes:
        per_stage: One GP per stage on its log cost (memoization-aware: δ cached stages
            pay their load cost), else one GP on the total log cost.
        cooling: Raise the inverse cost to η (CArBO's cost cooling); else η = 1.
        weight: c ≥ 0 in ``log EI + c · η · log E[1/C]``: how many nats of log EI one nat
            of expected inverse cost is worth (1: EI per unit cost; 0: cost-blind).
        inputs: Per stage, ``"prefix"`` (stage k's GP sees stages 1..k, since a later
            stage's cost can depend on earlier choices) or ``"stage"`` (only x_k, as in the
            reference code).
        load_eps: ε before any load cost is measured (default: 1% of the stage's cost).
    """

    per_stage: bool = True
    cooling: bool = True
    weight: float = 1.0
    inputs: str = "prefix"
    load_eps: float | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.weight, int | float) and 0 <= self.weight < math.inf):
            raise OptimizerError(f"`cost_weight` must be a number >= 0, but got {self.weight!r}")
        object.__setattr__(self, "weight", float(self.weight))
        if self.inputs not in ("prefix", "stage"):
            raise OptimizerError(
                f"`cost_inputs` must be 'prefix' or 'stage', but got {self.inputs!r}"
            )
        eps = self.load_eps
        if eps is not None and not (eps > 0 and math.isfinite(eps)):
            raise OptimizerError(f"`load_eps` must be a positive number, but got {eps!r}")

    def eta(self, obs: Observations) -> float:
        """The exponent of the inverse cost in this ask: c · η (η = 1 without cooling)."""
        return (obs.eta if self.cooling else 1.0) * self.weight

    def model(self, obs: Observations, fits: GPFits, mc_samples: int) -> CostModel:
        """The cost model fitted on the observations (``mc_samples`` draws)."""
        space = obs.space
        if not self.per_stage:
            costs = obs.costs.nan_to_num(0.0).sum(-1, keepdim=True)
            cached = torch.zeros_like(costs, dtype=torch.bool)
            cols = [slice(0, space.dim)]
        else:
            costs, cached = obs.costs, obs.cached
            if self.inputs == "prefix":
                cols = [slice(0, space.prefix_dim(k + 1)) for k in range(len(space.stages))]
            else:
                # A stage without parameters has no own columns, but its cost still depends
                # on its inputs (an evaluation's on the model trained upstream): its GP sees
                # the upstream columns; with none, the cost is a constant (CostModel.fit).
                cols = [c if c.stop > c.start else slice(0, c.start) for c in space.stage_slices]
        model = CostModel.fit(
            obs.X,
            costs,
            cached,
            cols,
            load_eps=self.load_eps,
            n_samples=mc_samples,
            seed=obs.seed,
            init=fits.start("cost"),
            overhead=obs.overhead,
        )
        fits.init["cost"] = [
            None if s.model is None else gp_hyperparameters(s.model) for s in model.stages
        ]
        return model


# ---------------------------------------------------------------------- trade-offs
@dataclass(frozen=True)
class Ratio:
    """EI per unit expected cost: ``log EI + c · η · log E[1/C]`` (the paper's), log EI
    alone without a cost term.

    Attributes:
        give_up: With a cost term, the most log EI (nats) a proposal may give up against
            the best cost-blind candidate of the same ask (a separate multi-start search of
            the quality term alone, over fresh configurations). None: no cap.
        min_saving: With a cost term, a proposal other than the best cost-blind candidate
            must be expected to cost at most 1/``min_saving`` of it (in expected inverse
            cost). None: no such rule. With both rules a proposal must pass both.
    """

    give_up: float | None = None
    min_saving: float | None = None

    def __post_init__(self) -> None:
        g, m = self.give_up, self.min_saving
        if g is not None and not (isinstance(g, int | float) and 0 <= g < math.inf):
            raise OptimizerError(f"`give_up` must be None or a number >= 0, but got {g!r}")
        if m is not None and not (isinstance(m, int | float) and 1 <= m < math.inf):
            raise OptimizerError(f"`min_saving` must be None or a number >= 1, but got {m!r}")
        object.__setattr__(self, "give_up", None if g is None else float(g))
        object.__setattr__(self, "min_saving", None if m is None else float(m))

    @property
    def capped(self) -> bool:
        """Whether a rule bounds what cheapness may cost in quality."""
        return self.give_up is not None or self.min_saving is not None

    def acquisition(
        self, parts: Composition, obs: Observations, rows: Tensor, success: SingleTaskGP | None
    ) -> LogEIPerCost:
        """``log EI (+ log P(success)) + c · η · log E[1/C(x; δ)]``."""
        cost = parts.cost
        eta = obs.eta if cost is None else cost.eta(obs)
        quality, model = parts.quality.term(obs, rows, parts.fits, parts.search.mc_samples)
        if success is not None:
            quality = LogSuccessWeighted(quality, success)
        cost_model = None if cost is None else cost.model(obs, parts.fits, parts.search.mc_samples)
        return LogEIPerCost(model, None, cost_model, eta, 0, log_ei=quality)


@dataclass(frozen=True)
class Gittins:
    """The Pandora's box Gittins index (:class:`~eeipu.GittinsIndex`): the threshold whose
    expected improvement equals λ times the expected cost, with λ half the best EI per
    unit cost among the raw fresh candidates of the ask. Its cost enters roughly as
    sqrt(log C), so a dear region with high uncertainty is not priced out. Cooling and the
    cost weight do not apply; a box that may fail pays p·EI (p·EI_g = λ·C)."""

    capped: ClassVar[bool] = False

    def acquisition(
        self, parts: Composition, obs: Observations, rows: Tensor, success: SingleTaskGP | None
    ) -> GittinsIndex:
        """The calibrated index (its incumbent: the quality term's, see :meth:`Quality.best_f`)."""
        model = fit_objective(obs, rows, parts.fits)
        best_f = parts.quality.best_f(model, obs, rows)
        raw = SobolEngine(obs.space.dim, scramble=True, seed=obs.seed).draw(
            parts.search.raw_samples, dtype=torch.double
        )
        scale = obs.Y[rows].std() if rows.numel() > 1 else 1.0
        cost_model = parts.cost.model(obs, parts.fits, parts.search.mc_samples)
        return GittinsIndex.calibrated(model, best_f, scale, cost_model, raw, success=success)


def tradeoff(
    name: str, give_up: float | None = None, min_saving: float | None = None
) -> Ratio | Gittins:
    """The trade-off named by the ``tradeoff`` option (the caps apply to the ratio)."""
    if name not in TRADEOFFS:
        raise OptimizerError(
            f"`tradeoff` must be one of {', '.join(map(repr, TRADEOFFS))}, but got {name!r}"
        )
    ratio = Ratio(give_up, min_saving)  # checks the caps either way
    return Gittins() if name == "gittins" else ratio


if TYPE_CHECKING:
    from typing import Protocol

    class Composition(Protocol):
        """What a trade-off combines: a method's parts."""

        quality: Quality
        cost: CostTerm | None
        fits: GPFits
        search: AcquisitionSearch
