"""Search methods: one ask/tell loop (``Optimizer``), one strategy per method name.

A method turns the observations into one proposal. Methods are looked up by name in
``METHODS``; add one with :func:`register_method`.

=========  ==================================================================  =========
name       acquisition                                                          cost model
=========  ==================================================================  =========
eeipu      log (NEI · P(success)) + η·log E[1/C(x; δ)], best over the prefix    per stage
           pool (P(success): a GP on the outcome labels, once a trial failed)
ms_carbo   log EI + η·log E[1/C(x; 0)] (no memoization: empty prefix only)      per stage
carbo      log EI + η·log E[1/C(x)]                                             total
eips       log EI + log E[1/C(x)] (no cooling)                                  total
ei         log EI                                                               none
ms_bo      cascade: GP_k on (x_k, y_{k-1}), MC log EI of the last output        none
           (Kusakawa et al. 2022; no stage outputs told: plain log EI)
lambo      log EI inside a region drawn by a slowly moving bandit over a        stage costs
           tree of upstream regions (Lin et al. 2021)                           set the tree
random     uniform sampling                                                     none
=========  ==================================================================  =========

The cost-aware EI family shares :class:`CostAwareEI`; ``eeipu`` uses noisy EI
(``incumbent="noisy"``, BoTorch's qLogNEI) by default, the others LogEI on the best
observed value (``incumbent="observed"``), as in the literature. ``eeipu`` also models
failed trials (``failures="model"``: EI times the probability of success); the others
impute them with the worst observed value, as the literature's code does.

``ms_bo`` lives in ``eeipu/_ms_bo.py`` and ``lambo`` in ``eeipu/_lambo.py``; both register
themselves here when ``eeipu`` loads its methods (the first use of a name that needs torch).
Each method's options are declared, without torch, in ``eeipu/_options.py``.
"""

from __future__ import annotations

import inspect
import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass, make_dataclass, replace
from typing import Any

import torch
from botorch.acquisition import AcquisitionFunction
from botorch.acquisition.analytic import LogExpectedImprovement
from botorch.acquisition.logei import qLogNoisyExpectedImprovement
from botorch.exceptions.warnings import OptimizationWarning
from botorch.generation import gen as botorch_gen
from botorch.generation.gen import gen_candidates_scipy
from botorch.models import SingleTaskGP
from botorch.sampling import SobolQMCNormalSampler
from linear_operator.utils.warnings import NumericalWarning
from torch import Tensor
from torch.quasirandom import SobolEngine

from eeipu._acquisition import GittinsIndex, LogEIPerCost, LogSuccessWeighted, log_success
from eeipu._errors import OptimizerError
from eeipu._models import CostModel, conditioned_gp, fit_gp, gp_hyperparameters
from eeipu._options import (
    METHOD_OPTIONS,
    CArBOOptions,
    EEIPUOptions,
    EIOptions,
    EIPSOptions,
    MSCArBOOptions,
    RandomSearchOptions,
    method_options,
    options_used_by,
    unknown_option_hint,
)
from eeipu._space import SearchSpace

__all__ = [
    "METHODS",
    "METHOD_OPTIONS",
    "CostAwareEI",
    "Method",
    "Observations",
    "Prefix",
    "Proposal",
    "RandomSearch",
    "acquisition_terms",
    "batched_lbfgs_available",
    "make_method",
    "method_options",
    "options_type",
    "options_used_by",
    "register_method",
    "unknown_option_hint",
]


@dataclass(frozen=True)
class Prefix:
    """A cached prefix: the first ``n_stages`` stages of an earlier trial.

    Attributes:
        n_stages: δ, the number of leading stages fixed (and cached).
        x: ``prefix_dim`` encoded values of those stages.
        params: Their canonical values, copied verbatim into the proposal.
        score: Ranking score (best objective among trials that share the prefix).
    """

    n_stages: int
    x: Tensor
    params: dict[str, dict[str, Any]]
    score: float


@dataclass
class Observations:
    """Everything a method may use to propose, in the optimizer's internal scale.

    Attributes:
        space: The search space.
        X: ``n x d`` encoded inputs of told trials (then of pending ones, see ``n_pending``).
        Y: ``n x 1`` objective, to be *maximized*; failed trials are imputed with the worst
            observed value so the model learns to avoid their region.
        costs: ``n x S`` measured stage costs (NaN where a stage did not run).
        cached: ``n x S`` bool, stages that were loaded from the cache.
        eta: Cost-cooling exponent η for this ask.
        prefixes: Ranked pool of cached prefixes (for memoization-aware methods).
        seed: Seed for this ask (derived from the optimizer's seed and the trial number).
        rng: Generator for random draws, seeded like ``seed``.
        stage_outputs: ``n x S`` scalar stage outputs told with the trials (NaN where none
            was told), signed like ``Y`` (negated when minimizing); None when no trial told
            any. Used by cascade models (``ms_bo``).
        optimizer_seed: The optimizer's seed, constant over the study: for methods that
            replay per-round random choices from the observations (``lambo``).
        n_pending: The last ``n_pending`` rows are trials still running (asked, not told):
            their ``Y`` is believed (:meth:`Method.fantasize`), their costs are NaN.
        overhead: The mean overhead told with this study's trials (``tell(overhead=)``: the
            cost each trial paid on top of its stages), 0 when none was told; cost models
            charge it to every candidate.
        failed: ``n_told`` bool, the told rows (before the pending ones) whose trial failed
            (their ``Y`` is the imputed worst value); None when none failed.
    """

    space: SearchSpace
    X: Tensor
    Y: Tensor
    costs: Tensor
    cached: Tensor
    eta: float
    prefixes: list[Prefix]
    seed: int
    rng: torch.Generator = field(repr=False)
    stage_outputs: Tensor | None = None
    optimizer_seed: int = 0
    n_pending: int = 0
    overhead: float = 0.0
    failed: Tensor | None = None


@dataclass(frozen=True)
class Proposal:
    """A method's answer: an encoded point and, when it reuses a cached prefix, which one.

    ``alternatives`` holds the runners-up (best first), used when the winner decodes to a
    configuration that was already evaluated: an exact repeat carries no information.

    ``acq_terms`` (memoization-aware methods) splits ``acq_value`` into its quality and cost
    terms and sets them beside those of the best *fresh* candidate of the same ask (empty
    prefix, nothing cached), so that what reusing a prefix gave up can be measured
    (:func:`acquisition_terms`).
    """

    x: Tensor
    prefix: Prefix | None = None
    acq_value: float | None = None
    alternatives: tuple[Proposal, ...] = ()
    acq_terms: dict[str, float] | None = None


class Method(ABC):
    """A search strategy: observations in, one proposal out."""

    name: str = ""
    #: Whether the method wants the optimizer to build the (costly) prefix pool.
    uses_prefixes: bool = False

    @abstractmethod
    def propose(self, obs: Observations) -> Proposal:
        """Return the next point to evaluate."""

    def fantasize(self, X: Tensor, Y: Tensor, X_pending: Tensor) -> Tensor:
        """Kriging believer: stand-in outcomes (``p x 1``) for trials still running at
        ``X_pending`` (``p x d``), the posterior mean of an objective GP on the told ``X``
        (``n x d``) and ``Y`` (``n x 1``). The optimizer appends them to the observations, so
        that the acquisition does not propose those points, or their neighbours, again.

        This default fits that GP; methods that carry fitted hyperparameters from one ask to
        the next condition a GP with them instead (:class:`WarmStartState`).
        """
        model = fit_gp(X, Y)
        return _posterior_mean(model, X_pending).to(Y)

    def cost_hyperparameters(self) -> list[dict[str, Any] | None] | None:
        """The hyperparameters of the per-stage log-cost GPs this method fitted in its last
        ask, stage k's GP on the columns of stages 1..k (None for a stage with a constant
        cost), or None if it fits no such model. :meth:`Optimizer.expected_cost` starts its
        fits from them: on the same told trials they are its fit, and it runs no L-BFGS."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state that carries from one ask to the next (e.g. the fitted GP
        hyperparameters a warm-started fit starts from). A resumed study restores it, so
        its next proposal equals the one an uninterrupted run would have made."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 (optional hook)
        """Restore what :meth:`state_dict` returned (stateless methods ignore it)."""


def check_positive_ints(**options: Any) -> None:
    """Raise :class:`OptimizerError` naming the first option that is not an integer >= 1."""
    for name, v in options.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise OptimizerError(f"`{name}` must be a positive integer, but got {v!r}")


class WarmStartState:
    """Carry-over state of a method that warm-starts its GP fits: ``self._init`` holds the
    previous ask's hyperparameters, saved and restored as strict JSON (see
    :meth:`Method.state_dict`); those of the objective GP (key ``"objective"``) also serve
    the kriging believer of pending trials (:meth:`fantasize`)."""

    _init: dict[str, Any]
    warm_start: bool

    def state_dict(self) -> dict[str, Any]:
        return {"init": _tensors_to_json(self._init)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._init = _tensors_from_json(state.get("init", {}))

    def fantasize(self, X: Tensor, Y: Tensor, X_pending: Tensor) -> Tensor:
        """Kriging believer (see :meth:`Method.fantasize`) from a GP with the hyperparameters
        of the last objective GP this method fitted, conditioned on ``X``, ``Y`` without
        fitting: one Cholesky, where a fit made an ask with trials pending cost several
        times one without (``benchmarks/bench_ask.py --pending``).

        Fits a GP as the default does when there are no such hyperparameters yet (the first
        model-based ask) or when ``warm_start`` is off (asks then depend on the history only).
        """
        init = self._init.get("objective") if self.warm_start else None
        model = None if init is None else conditioned_gp(X, Y, init)
        if model is None:
            return super().fantasize(X, Y, X_pending)  # Method's (the mixin comes first)
        return _posterior_mean(model, X_pending).to(Y)


def _posterior_mean(model: SingleTaskGP, X: Tensor) -> Tensor:
    """``p x d`` -> ``p x 1`` posterior mean of ``model``, without gradients."""
    with torch.no_grad():
        return model.posterior(X).mean.detach().reshape(-1, 1)


METHODS: dict[str, Callable[..., Method]] = {}
"""Method name -> its factory (keyword options -> :class:`Method`), filled by
:func:`register_method`; :func:`make_method` builds a method from it by name."""


def options_type(
    factory: Callable[..., Any], *names: str, name: str = "Options", **defaults: Any
) -> type:
    """A frozen dataclass of the keyword parameters ``names`` of ``factory`` (all of them when
    none is named): their annotations, and their defaults unless ``defaults`` sets others.

    A method's options are what its factory reads; deriving them from the signature keeps one
    place for their types and defaults.

    Example:
        >>> EIOptions = options_type(CostAwareEI, "num_restarts", "maxiter", name="EIOptions")
        >>> EIOptions(num_restarts=2)
        EIOptions(num_restarts=2, maxiter=200)
    """
    params = inspect.signature(factory).parameters
    names = names or tuple(p for p in params if params[p].kind is not params[p].VAR_KEYWORD)
    specs = [
        (n, params[n].annotation, field(default=defaults.get(n, params[n].default)))
        if n in defaults or params[n].default is not params[n].empty
        else (n, params[n].annotation)
        for n in names
    ]
    return make_dataclass(name, specs, frozen=True, kw_only=True)


def _signature_options(factory: Callable[..., Any]) -> type | None:
    """The options of a factory registered without its own: its keyword parameters, or None
    (anything goes) when it takes ``**kwargs``."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return options_type(factory, name=f"{getattr(factory, '__name__', 'Method')}Options")


def register_method(
    name: str, options: type | None = None
) -> Callable[[Callable[..., Method]], Callable[..., Method]]:
    """Register a method factory under ``name`` (a decorator).

    Args:
        name: The method's name in ``METHODS``.
        options: A frozen dataclass of the options the method uses (see
            :func:`options_type`); the factory is called with all of its fields. Default:
            the factory's keyword parameters, or any option at all if it takes ``**kwargs``.
    """

    def deco(factory: Callable[..., Method]) -> Callable[..., Method]:
        METHODS[name] = factory
        METHOD_OPTIONS[name] = options if options is not None else _signature_options(factory)
        return factory

    return deco


def make_method(name: str, **options: Any) -> Method:
    """Instantiate a registered method from its options (:func:`method_options`).

    Raises:
        OptimizerError: An unknown method (the message lists the known ones), an option the
            method does not use (it lists the ones it does), or a value it refuses.
    """
    typed = method_options(name, **options)
    if is_dataclass(typed):
        options = {f.name: getattr(typed, f.name) for f in fields(typed)}
    try:
        method = METHODS[name](**options)
    except TypeError as exc:
        raise OptimizerError(f"bad options for method {name!r}: {exc}") from exc
    method.name = name
    return method


class RandomSearch(Method):
    """Uniform random search over the unit cube."""

    def propose(self, obs: Observations) -> Proposal:
        return Proposal(torch.rand(obs.space.dim, generator=obs.rng, dtype=torch.double))


CostAcquisition = LogEIPerCost | GittinsIndex
INCUMBENTS = ("observed", "mean", "noisy")
TRADEOFFS = ("ratio", "gittins")
FAILURES = ("impute", "model")


class CostAwareEI(WarmStartState, Method):
    """LogEI, optionally per unit expected cost, optionally cooled and memoization-aware.

    With ``memoize=True`` the candidates are generated over the prefix pool: the empty
    prefix plus each cached prefix, whose dimensions are fixed to the cached values while
    the rest is optimized, charging the cached stages their load cost (δ = prefix length).
    The raw starts of all prefixes are screened in one batched call, then optimized together
    in one multi-start L-BFGS-B run: BoTorch's parallel mode where it is available (each start
    carries its prefix in a held input column), else its serial mode (one scipy problem over
    the whole batch, each start's prefix applied by position), e.g. for scipy >= 1.18. The
    best point over the pool wins.

    Args:
        cost: ``None`` (plain EI), ``"total"`` (one GP on total log cost) or ``"stage"``
            (one GP per stage on its log cost).
        cooling: Raise the inverse cost to η (CArBO's cost cooling); else η = 1.
        memoize: Optimize over the prefix pool, charging cached stages their load cost.
        cost_inputs: For stage cost GPs, ``"prefix"`` (stage k sees stages 1..k, since a
            later stage's cost can depend on earlier choices) or ``"stage"`` (only x_k, as in
            the reference code).
        num_restarts: L-BFGS starts for the empty prefix.
        raw_samples: Raw Sobol samples screened for those starts.
        prefix_restarts: At most this many L-BFGS starts per cached prefix.
        prefix_raw_samples: Raw samples screened per cached prefix.
        prefix_starts: L-BFGS starts shared by the cached prefixes (the best raw points
            over the whole pool, at most ``prefix_restarts`` per prefix).
        mc_samples: M, quasi-MC samples of the cost posterior. 128 keeps log E[1/C] within
            0.004 nats of a 16384-sample estimate on the synthetic problems (3 and 10
            stages, 8 or 60 observations), where candidates differ by ~1 nat; the
            acquisition's cost grows linearly in M.
        load_eps: ε before any load cost is measured (default: 1% of the stage's cost).
        maxiter: L-BFGS iterations.
        warm_start: Start each GP fit from the previous ask's hyperparameters.
        incumbent: What EI improves on: ``"observed"``, the best observed objective (the
            textbook choice for noise-free objectives), or ``"mean"``, the best posterior
            mean of the objective GP at the told trials (plug-in EI for noisy objectives:
            a lucky draw neither inflates the incumbent nor starves exploration), or
            ``"noisy"``, BoTorch's ``qLogNoisyExpectedImprovement``: EI integrated over the
            joint posterior of the told trials (no incumbent value at all), with trials
            still running integrated over as ``X_pending`` instead of conditioned on their
            posterior mean (the kriging believer); ``mc_samples`` quasi-MC samples.
        cost_weight: c ≥ 0 in ``log EI + c · η · log E[1/C]``: how many nats of log EI one
            nat of expected inverse cost is worth (1: EI per unit cost, the paper's trade-off;
            0: cost-blind).
        tradeoff: How quality and cost combine: ``"ratio"``, EI per unit expected cost
            (``log EI + c · η · log E[1/C]``, the paper's), or ``"gittins"``, the Pandora's
            box Gittins index (:class:`~eeipu.GittinsIndex`): the threshold whose expected
            improvement equals λ times the expected cost, with λ half the best EI per unit
            cost among the raw fresh candidates of the ask. The index's cost enters roughly
            as sqrt(log C), so a dear region with high uncertainty is not priced out.
            ``cooling`` and ``cost_weight`` apply to ``"ratio"`` only; with ``incumbent``
            ``"noisy"`` the index improves on the best posterior mean (as ``"mean"``).
        give_up: With ``tradeoff="ratio"`` and a cost model, the most log EI (nats) a proposal
            may give up against the best cost-blind candidate of the same ask (a separate
            multi-start search of the quality term alone, over fresh configurations): the
            acquisition's winner among the proposals within the cap. It bounds what
            cheapness (a reused prefix, a cheap region) may cost in quality per trial, so a
            cost-aware study cannot drift far from what plain EI would do. None: no cap.
        min_saving: With ``tradeoff="ratio"`` and a cost model, a proposal other than the
            best cost-blind candidate must be expected to cost at most 1/``min_saving`` of
            it (in expected inverse cost), so that cheapness that saves little (a cached
            prefix of a cheap stage, a slightly cheaper region) cannot cost quality. None:
            no such rule. With both rules a proposal must pass both.
        failures: What failed trials teach: ``"impute"``, the worst observed value as their
            objective (the objective GP steers away from them), or ``"model"``: the
            objective GP sees complete trials only, a second GP regresses the outcome
            labels (+1 complete, -1 failed), and the quality term is multiplied by the
            probability of success, P = Φ(μ/σ) of that GP (constrained EI's probability
            of feasibility; :class:`~eeipu.LogSuccessWeighted`); with ``tradeoff="gittins"``
            a box that may fail pays p·EI, so the index solves p·EI_g = λ·C. Both are the
            same until a trial fails.
    """

    def __init__(
        self,
        cost: str | None = None,
        cooling: bool = True,
        memoize: bool = False,
        cost_inputs: str = "prefix",
        num_restarts: int = 8,
        raw_samples: int = 256,
        prefix_restarts: int = 2,
        prefix_raw_samples: int = 64,
        prefix_starts: int = 16,
        mc_samples: int = 128,
        load_eps: float | None = None,
        maxiter: int = 200,
        warm_start: bool = True,
        incumbent: str = "observed",
        cost_weight: float = 1.0,
        tradeoff: str = "ratio",
        failures: str = "impute",
        give_up: float | None = None,
        min_saving: float | None = None,
    ) -> None:
        if cost not in (None, "total", "stage"):
            raise OptimizerError(f"`cost` must be None, 'total' or 'stage', but got {cost!r}")
        if cost_inputs not in ("prefix", "stage"):
            raise OptimizerError(
                f"`cost_inputs` must be 'prefix' or 'stage', but got {cost_inputs!r}"
            )
        if incumbent not in INCUMBENTS:
            raise OptimizerError(
                f"`incumbent` must be one of {', '.join(map(repr, INCUMBENTS))}, "
                f"but got {incumbent!r}"
            )
        if not (isinstance(cost_weight, int | float) and 0 <= cost_weight < math.inf):
            raise OptimizerError(f"`cost_weight` must be a number >= 0, but got {cost_weight!r}")
        if tradeoff not in TRADEOFFS:
            raise OptimizerError(
                f"`tradeoff` must be one of {', '.join(map(repr, TRADEOFFS))}, but got {tradeoff!r}"
            )
        if failures not in FAILURES:
            raise OptimizerError(
                f"`failures` must be one of {', '.join(map(repr, FAILURES))}, but got {failures!r}"
            )
        if tradeoff == "gittins" and cost is None:
            raise OptimizerError(
                "`tradeoff='gittins'` needs a cost model (cost='total' or 'stage')"
            )
        if memoize and cost != "stage":
            raise OptimizerError("`memoize=True` needs per-stage costs (cost='stage')")
        if give_up is not None and not (
            isinstance(give_up, int | float) and 0 <= give_up < math.inf
        ):
            raise OptimizerError(f"`give_up` must be None or a number >= 0, but got {give_up!r}")
        if min_saving is not None and not (
            isinstance(min_saving, int | float) and 1 <= min_saving < math.inf
        ):
            raise OptimizerError(
                f"`min_saving` must be None or a number >= 1, but got {min_saving!r}"
            )
        if load_eps is not None and not (load_eps > 0 and math.isfinite(load_eps)):
            raise OptimizerError(f"`load_eps` must be a positive number, but got {load_eps!r}")
        check_positive_ints(
            num_restarts=num_restarts,
            raw_samples=raw_samples,
            prefix_restarts=prefix_restarts,
            prefix_raw_samples=prefix_raw_samples,
            prefix_starts=prefix_starts,
            mc_samples=mc_samples,
            maxiter=maxiter,
        )
        self.cost = cost
        self.cooling = cooling
        self.memoize = memoize
        self.uses_prefixes = memoize
        self.cost_inputs = cost_inputs
        self.num_restarts = num_restarts
        self.raw_samples = raw_samples
        self.prefix_restarts = prefix_restarts
        self.prefix_raw_samples = prefix_raw_samples
        self.prefix_starts = prefix_starts
        self.mc_samples = mc_samples
        self.load_eps = load_eps
        self.maxiter = maxiter
        self.warm_start = warm_start
        self.incumbent = incumbent
        self.cost_weight = float(cost_weight)
        self.tradeoff = tradeoff
        self.failures = failures
        self.give_up = None if give_up is None else float(give_up)
        self.min_saving = None if min_saving is None else float(min_saving)
        self._init: dict[str, Any] = {}

    # ------------------------------------------------------------------ models
    def _fit_objective(self, obs: Observations, condition: bool = True):
        """The objective GP, its hyperparameters fitted on the told rows only; pending rows
        (their fantasies) are conditioned on afterwards (unless ``condition`` is False), a
        rank-p update of the fitted GP: fantasies would drag a fit away from the warm start
        (several times the L-BFGS steps) and teach the hyperparameters nothing."""
        n = obs.X.shape[0] - obs.n_pending
        rows = self._fitted_rows(obs)
        init = self._init.get("objective") if self.warm_start else None
        model = fit_gp(obs.X[rows], obs.Y[rows], init)
        self._init["objective"] = gp_hyperparameters(model)
        if obs.n_pending and condition:
            with torch.no_grad():
                model.posterior(obs.X[n:])  # fills the caches that conditioning updates
            model = model.condition_on_observations(obs.X[n:], obs.Y[n:])
        return model

    def _fitted_rows(self, obs: Observations) -> Tensor:
        """The told rows the objective GP learns from: all of them (failed ones imputed), or
        with ``failures="model"`` the complete trials only."""
        n = obs.X.shape[0] - obs.n_pending
        if self.failures == "model" and obs.failed is not None:
            return (~obs.failed).nonzero().squeeze(-1)
        return torch.arange(n)

    def _fit_success(self, obs: Observations) -> SingleTaskGP | None:
        """With ``failures="model"`` and a failed trial told: the GP on the told trials'
        outcome labels, +1 complete and -1 failed (else None)."""
        if self.failures != "model" or obs.failed is None:
            return None
        n = obs.failed.numel()
        labels = torch.where(obs.failed, -1.0, 1.0).to(obs.Y).unsqueeze(-1)
        init = self._init.get("success") if self.warm_start else None
        model = fit_gp(obs.X[:n], labels, init)
        self._init["success"] = gp_hyperparameters(model)
        return model

    def cost_model(self, obs: Observations) -> CostModel | None:
        """Fit the cost model this method uses (None for plain EI)."""
        if self.cost is None:
            return None
        space = obs.space
        if self.cost == "total":
            costs = obs.costs.nan_to_num(0.0).sum(-1, keepdim=True)
            cached = torch.zeros_like(costs, dtype=torch.bool)
            cols = [slice(0, space.dim)]
        else:
            costs, cached = obs.costs, obs.cached
            if self.cost_inputs == "prefix":
                cols = [slice(0, space.prefix_dim(k + 1)) for k in range(len(space.stages))]
            else:
                # A stage without parameters has no own columns, but its cost still depends
                # on its inputs (an evaluation's on the model trained upstream): its GP sees
                # the upstream columns; with none, the cost is a constant (CostModel.fit).
                cols = [c if c.stop > c.start else slice(0, c.start) for c in space.stage_slices]
        init = self._init.get("cost") if self.warm_start else None
        model = CostModel.fit(
            obs.X,
            costs,
            cached,
            cols,
            load_eps=self.load_eps,
            n_samples=self.mc_samples,
            seed=obs.seed,
            init=init,
            overhead=obs.overhead,
        )
        self._init["cost"] = [
            None if s.model is None else gp_hyperparameters(s.model) for s in model.stages
        ]
        return model

    def cost_hyperparameters(self) -> list[dict[str, Any] | None] | None:
        if self.cost != "stage" or self.cost_inputs != "prefix":
            return None  # another model than Optimizer.expected_cost's
        return self._init.get("cost")

    def acquisition(self, obs: Observations, n_cached: int | Tensor = 0) -> CostAcquisition:
        """The fitted acquisition for candidates whose first ``n_cached`` stages are cached."""
        n = obs.X.shape[0] - obs.n_pending
        rows = self._fitted_rows(obs)
        success = self._fit_success(obs)
        if self.tradeoff == "gittins":
            model = self._fit_objective(obs)
            if self.incumbent == "observed":
                best_f = obs.Y.max()
            else:
                with torch.no_grad():
                    best_f = model.posterior(obs.X[rows]).mean.max()
            raw = SobolEngine(obs.space.dim, scramble=True, seed=obs.seed).draw(
                self.raw_samples, dtype=torch.double
            )
            scale = obs.Y[rows].std() if rows.numel() > 1 else 1.0
            acq = GittinsIndex.calibrated(
                model, best_f, scale, self.cost_model(obs), raw, success=success
            )
            acq.n_cached = n_cached
            return acq
        eta = (obs.eta if self.cooling else 1.0) * self.cost_weight
        if self.incumbent == "noisy":
            model = self._fit_objective(obs, condition=False)
            sampler = SobolQMCNormalSampler(torch.Size([self.mc_samples]), seed=obs.seed)
            # Pruning the baseline draws its own samples from torch's global generator:
            # seeded here, the acquisition is a function of the observations alone.
            with torch.random.fork_rng():
                torch.manual_seed(obs.seed)
                quality = qLogNoisyExpectedImprovement(
                    model=model,
                    X_baseline=obs.X[rows],
                    sampler=sampler,
                    X_pending=obs.X[n:] if obs.n_pending else None,
                    prune_baseline=True,
                )
        else:
            model = self._fit_objective(obs)
            if self.incumbent == "mean":
                with torch.no_grad():
                    best_f = model.posterior(obs.X[rows]).mean.max()
            else:
                best_f = obs.Y.max()
            quality = LogExpectedImprovement(model=model, best_f=best_f)
        if success is not None:
            quality = LogSuccessWeighted(quality, success)
        return LogEIPerCost(model, None, self.cost_model(obs), eta, n_cached, log_ei=quality)

    # ------------------------------------------------------------------ proposal
    def propose(self, obs: Observations) -> Proposal:
        with warnings.catch_warnings():
            # qLogNEI's joint posterior over configurations run twice (a memoizing study
            # re-runs some) is not p.d.: jitter is added, as it should be; no warning per ask.
            warnings.simplefilter("ignore", NumericalWarning)
            return self._propose(obs)

    def _propose(self, obs: Observations) -> Proposal:
        d = obs.space.dim
        pool: list[Prefix | None] = [None]
        if self.memoize:
            pool += [p for p in obs.prefixes if obs.space.prefix_dim(p.n_stages) < d]
            # Leading stages without parameters, once cached, are loaded by every candidate:
            # their prefix (no fixed column) takes the empty prefix's place and starts.
            free = [p for p in pool[1:] if p.x.numel() == 0]
            if free:
                top = max(free, key=lambda p: p.n_stages)
                pool = [top] + [p for p in pool[1:] if p.x.numel()]
        acq = self.acquisition(obs)
        starts = self._starts(obs, acq, pool)
        keep = [i for i, st in enumerate(starts) if len(st)]
        pool, starts = [pool[i] for i in keep], [starts[i] for i in keep]
        ranked = self._rounded(acq, self._optimize_pool(acq, pool, starts, obs.space), obs.space)
        ranked.sort(key=lambda p: p.acq_value, reverse=True)
        capped = (
            (self.give_up is not None or self.min_saving is not None)
            and isinstance(acq, LogEIPerCost)
            and acq.uses_cost
        )
        if capped:
            ranked, best = self._within_cap(acq, obs, ranked)
        if self.memoize:
            ranked = acquisition_terms(acq, ranked)
            if capped:  # what the cap measured against, beside each proposal's terms
                ranked = [
                    replace(p, acq_terms={**p.acq_terms, "log_ei_best": best}) for p in ranked
                ]
        return replace(ranked[0], alternatives=tuple(ranked[1:]))

    def _within_cap(
        self, acq: LogEIPerCost, obs: Observations, ranked: list[Proposal]
    ) -> tuple[list[Proposal], float]:
        """``ranked`` with the best cost-blind candidates added and reordered: first the
        eligible proposals (by acquisition, best first), then the others (the runners-up
        used on repeats); and the best log EI found. Eligible: the best cost-blind
        candidate, and any proposal whose log EI is within ``give_up`` nats of it and whose
        expected inverse cost is at least ``min_saving`` times its."""
        blind = LogEIPerCost(acq.model, None, None, eta=0.0, log_ei=acq.log_ei)
        d = obs.space.dim
        raw = SobolEngine(d, scramble=True, seed=obs.seed + 1).draw(
            self.raw_samples, dtype=torch.double
        )
        with torch.no_grad():
            values = blind(raw.unsqueeze(-2))
        top = values.topk(min(self.num_restarts, raw.shape[0])).indices
        found = self._optimize_pool(blind, [None], [raw[top].unsqueeze(-2)], obs.space)
        ranked = ranked + self._rounded(acq, found, obs.space)
        X = torch.stack([p.x for p in ranked]).unsqueeze(-2)
        with torch.no_grad():
            quality = blind(X).reshape(-1)
        top = int(quality.argmax())
        best = float(quality[top])
        eligible = quality >= best - (math.inf if self.give_up is None else self.give_up)
        if self.min_saving is not None:
            with torch.no_grad():
                acq.n_cached = torch.tensor(
                    [0 if p.prefix is None else p.prefix.n_stages for p in ranked]
                )
                lic = acq.log_inverse_cost(X).reshape(-1)
            saving = lic - lic[top]
            eligible &= saving >= math.log(self.min_saving)
        eligible[top] = True
        order = sorted(
            range(len(ranked)), key=lambda j: (not bool(eligible[j]), -float(ranked[j].acq_value))
        )
        return [ranked[j] for j in order], best

    @staticmethod
    def _rounded(
        acq: CostAcquisition, proposals: list[Proposal], space: SearchSpace
    ) -> list[Proposal]:
        """The proposals at the configurations that will really run (ints rounded,
        categoricals binned, floats as decoded; a prefix's columns as cached), each
        re-scored there: L-BFGS ranks relaxed points, and rounding can move a candidate
        far from the optimum it found (an int with few values, a categorical)."""
        if not proposals:
            return proposals
        X = torch.stack([space.encode(space.decode(p.x)) for p in proposals])  # B x d
        n_cached = torch.zeros(len(proposals), dtype=torch.long)
        for j, p in enumerate(proposals):
            if p.prefix is not None:
                X[j, : p.prefix.x.numel()] = p.prefix.x
                n_cached[j] = p.prefix.n_stages
        with torch.no_grad():
            acq.n_cached = n_cached
            values = acq(X.unsqueeze(-2))
        return [replace(p, x=X[j], acq_value=float(values[j])) for j, p in enumerate(proposals)]

    def _starts(
        self, obs: Observations, acq: CostAcquisition, pool: list[Prefix | None]
    ) -> list[Tensor]:
        """L-BFGS starts for each prefix of the pool (``k_i x 1 x d`` each, possibly empty):
        the best of its raw Sobol points, its fixed columns set to the cached values. The raw
        points of the whole pool are screened in one batched acquisition call; the empty
        prefix keeps ``num_restarts`` starts, and the cached prefixes share ``prefix_starts``,
        given to the best raw points over all of them, at most ``prefix_restarts`` each (so
        a large pool is screened widely but costs L-BFGS only where the acquisition is
        high)."""
        d = obs.space.dim
        raw_n = [self.raw_samples] + [self.prefix_raw_samples] * (len(pool) - 1)
        values, n_fixed, n_cached = _pool_tensors(pool, obs.space)
        sobol = SobolEngine(d, scramble=True, seed=obs.seed).draw(max(raw_n), dtype=torch.double)
        owner = torch.cat([torch.full((n,), i) for i, n in enumerate(raw_n)])  # R
        raw = torch.cat([sobol[:n] for n in raw_n])  # R x d
        fixed_cols = torch.arange(d) < n_fixed[owner].unsqueeze(-1)  # R x d
        raw = torch.where(fixed_cols, values[owner], raw)
        with torch.no_grad():
            acq.n_cached = n_cached[owner]
            raw_values = acq(raw.unsqueeze(-2))  # R
        picked: list[list[int]] = [[] for _ in pool]
        idx = (owner == 0).nonzero().squeeze(-1)
        picked[0] = idx[raw_values[idx].topk(min(self.num_restarts, idx.numel())).indices].tolist()
        left = self.prefix_starts
        for j in raw_values.argsort(descending=True).tolist():
            if left == 0:
                break
            i = int(owner[j])
            if i > 0 and len(picked[i]) < self.prefix_restarts:
                picked[i].append(j)
                left -= 1
        return [raw[torch.tensor(p, dtype=torch.long)].unsqueeze(-2) for p in picked]

    def _optimize_pool(
        self,
        acq: CostAcquisition,
        pool: list[Prefix | None],
        starts: list[Tensor],
        space: SearchSpace,
    ) -> list[Proposal]:
        """All prefixes in ONE multi-start L-BFGS-B run (about one call's cost instead of one
        per prefix); :class:`_PrefixPool` forces each start's prefix columns and charges its δ.

        - BoTorch's parallel mode, where available: separate problems that leave the batch as
          they converge, so each start carries its prefix index in an extra input column,
          held by per-start tensor ``fixed_features`` (documented for this mode only).
        - Else its serial mode (e.g. scipy >= 1.18): one scipy problem, the sum over starts,
          evaluated on the whole batch at once, so the prefix is applied by position (its
          columns get zero gradient and are overwritten anyway).
        """
        d = space.dim
        values, n_fixed, n_cached = _pool_tensors(pool, space)
        owner = torch.cat([torch.full((len(s),), i) for i, s in enumerate(starts)])  # B
        ics = torch.cat(starts)  # B x 1 x d
        lower, upper = torch.zeros(d, dtype=ics.dtype), torch.ones(d, dtype=ics.dtype)
        if batched_lbfgs_available(self.maxiter):
            ics = torch.cat([ics, owner.view(-1, 1, 1).to(ics)], dim=-1)  # B x 1 x (d + 1)
            lower = torch.cat([lower, torch.zeros(1).to(ics)])
            upper = torch.cat([upper, torch.full((1,), len(pool)).to(ics)])
            wrapped = _PrefixPool(acq, values, n_fixed, n_cached)
            mode: dict[str, Any] = {"fixed_features": {d: owner.to(ics)}, "use_parallel_mode": True}
        else:
            wrapped = _PrefixPool(acq, values, n_fixed, n_cached, owner=owner)
            mode = {"use_parallel_mode": False}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizationWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            X, vals = gen_candidates_scipy(
                initial_conditions=ics,
                acquisition_function=wrapped,
                lower_bounds=lower,
                upper_bounds=upper,
                options={"maxiter": self.maxiter},
                **mode,
            )
        X = wrapped.resolve(X.detach()).reshape(-1, d)
        return [Proposal(X[j], pool[int(owner[j])], float(vals[j])) for j in range(owner.numel())]


def acquisition_terms(acq: CostAcquisition, ranked: list[Proposal]) -> list[Proposal]:
    """``ranked`` (scored proposals, best first), each with its ``acq_terms``.

    The acquisition is ``log EI + eta * log I(x; delta)`` (:class:`LogEIPerCost`), so one
    batched call of the cost term alone splits every ``acq_value`` into its two terms. Keys:

    - ``log_ei``: the quality term log EI(x), in nats (with ``failures="model"``, once a
      trial failed, log EI(x) + log P(success | x)).
    - ``log_success``: log P(success | x), with ``failures="model"`` once a trial failed
      (for both trade-offs), with ``log_success_fresh``.
    - ``cost_term``: ``eta * log I(x; delta)``, what the cost added to the acquisition.
    - ``log_inv_cost``: log I(x; delta) = log E[1/C(x; delta)], uncooled.
    - ``eta``: the cost-cooling exponent of this ask; ``prefix_stages``: delta.
    - ``log_ei_fresh``, ``cost_term_fresh``, ``log_inv_cost_fresh``: the same of the best
      candidate with the empty prefix (no hyperparameter reused; only leading stages
      without parameters may load): what EEIPU would have proposed without memoization.
      Left out when no fresh candidate was scored.

    A winner that reuses a prefix has ``log_ei + cost_term >= log_ei_fresh +
    cost_term_fresh`` (it won); ``log_ei_fresh - log_ei`` is the quality it gave up for
    ``log_inv_cost - log_inv_cost_fresh``, the log of how many times cheaper it is expected
    to be (in expected inverse cost).

    For the Gittins index (:class:`GittinsIndex`, no sum of terms) the keys are ``index``
    (``acq_value``: the standardized threshold above the incumbent), ``log_inv_cost``,
    ``lam`` (λ) and ``prefix_stages``, with ``index_fresh`` and ``log_inv_cost_fresh``.
    """
    if not ranked:
        return ranked
    X = torch.stack([p.x for p in ranked]).unsqueeze(-2)  # B x 1 x d
    delta = [0 if p.prefix is None else p.prefix.n_stages for p in ranked]
    success = acq.success
    with torch.no_grad():
        acq.n_cached = torch.tensor(delta, dtype=torch.long)
        log_inv_cost = acq.log_inverse_cost(X).reshape(-1).tolist()  # B
        log_p = None if success is None else log_success(success, X).reshape(-1).tolist()
    if isinstance(acq, GittinsIndex):
        compared = ("index", "log_inv_cost")
        terms = [
            {"index": float(p.acq_value), "log_inv_cost": float(lic), "lam": acq.lam}
            for p, lic in zip(ranked, log_inv_cost, strict=True)
        ]
    else:
        compared = ("log_ei", "cost_term", "log_inv_cost")
        terms = []
        for p, lic in zip(ranked, log_inv_cost, strict=True):
            cost_term = acq.eta * lic if acq.uses_cost else 0.0
            terms.append(
                {
                    "log_ei": float(p.acq_value) - cost_term,
                    "cost_term": cost_term,
                    "log_inv_cost": float(lic),
                    "eta": acq.eta,
                }
            )
    if log_p is not None:
        compared += ("log_success",)
        for t, lp in zip(terms, log_p, strict=True):
            t["log_success"] = float(lp)
    for t, k in zip(terms, delta, strict=True):
        t["prefix_stages"] = k
    # Fresh: no hyperparameter reused (at most leading stages without any are loaded).
    fresh = next(
        (
            t
            for t, p in zip(terms, ranked, strict=True)
            if p.prefix is None or not p.prefix.x.numel()
        ),
        None,
    )
    if fresh is not None:
        fresh = {f"{key}_fresh": fresh[key] for key in compared}
        for t in terms:
            t.update(fresh)
    return [replace(p, acq_terms=t) for p, t in zip(ranked, terms, strict=True)]


def _tensors_to_json(obj: Any) -> Any:
    """Nested dicts/lists of tensors as strict JSON (float64 round-trips exactly through
    repr; non-finite values, such as constraint bounds, become the strings 'inf', 'nan')."""
    if isinstance(obj, Tensor):
        data = obj.detach().cpu().reshape(-1).tolist()
        return {
            "__tensor__": str(obj.dtype).removeprefix("torch."),
            "shape": list(obj.shape),
            "data": [v if not isinstance(v, float) or math.isfinite(v) else str(v) for v in data],
        }
    if isinstance(obj, dict):
        return {k: _tensors_to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_tensors_to_json(v) for v in obj]
    return obj


def _tensors_from_json(obj: Any) -> Any:
    if isinstance(obj, dict) and "__tensor__" in obj:
        dtype = getattr(torch, obj["__tensor__"])
        data = [float(v) if isinstance(v, str) else v for v in obj["data"]]
        return torch.tensor(data, dtype=dtype).reshape(obj["shape"])
    if isinstance(obj, dict):
        return {k: _tensors_from_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_tensors_from_json(v) for v in obj]
    return obj


def _pool_tensors(pool: list[Prefix | None], space: SearchSpace) -> tuple[Tensor, Tensor, Tensor]:
    """The pool as tensors: ``P x d`` fixed values (first ``n_fixed`` columns of each row),
    ``P`` numbers of fixed columns and ``P`` numbers of cached stages δ."""
    values = torch.zeros(len(pool), space.dim, dtype=torch.double)
    n_fixed = torch.zeros(len(pool), dtype=torch.long)
    n_cached = torch.zeros(len(pool), dtype=torch.long)
    for i, prefix in enumerate(pool):
        if prefix is not None:
            n_fixed[i] = space.prefix_dim(prefix.n_stages)
            values[i, : n_fixed[i]] = prefix.x
            n_cached[i] = prefix.n_stages
    return values, n_fixed, n_cached


class _PrefixPool(AcquisitionFunction):
    """``acq`` over inputs with an extra last column: the index of a prefix of the pool.

    The prefix's columns are forced to its cached values (so their gradient is zero and
    they never move) and the acquisition charges its δ cached stages.
    """

    def __init__(
        self,
        acq: CostAcquisition,
        values: Tensor,
        n_fixed: Tensor,
        n_cached: Tensor,
        owner: Tensor | None = None,
    ):
        super().__init__(model=acq.model)
        self.acq = acq
        self.values = values  # P x d
        self.n_fixed = n_fixed  # P
        self.n_cached = n_cached  # P
        self.owner = owner  # B, or None: the index is the inputs' extra last column

    def _split(self, X: Tensor) -> tuple[Tensor, Tensor]:
        """``b x 1 x (d+1)`` (or ``B x 1 x d`` with ``owner``) -> (``b x 1 x d`` inputs with
        prefixes applied, ``b`` prefix indices)."""
        if self.owner is None:
            d = X.shape[-1] - 1
            idx = X[..., 0, d].round().long()  # b
        else:
            d = X.shape[-1]
            if X.shape[:-2] != self.owner.shape:
                raise OptimizerError(
                    f"expected the whole batch of {self.owner.numel()} starts at once, but got "
                    f"inputs of shape {tuple(X.shape)}"
                )
            idx = self.owner
        fixed = torch.arange(d, device=X.device) < self.n_fixed[idx].unsqueeze(-1)  # b x d
        Xd = torch.where(fixed.unsqueeze(-2), self.values[idx].unsqueeze(-2).to(X), X[..., :d])
        return Xd, idx

    def resolve(self, X: Tensor) -> Tensor:
        """The real candidates (``b x 1 x d``) behind extended inputs."""
        return self._split(X)[0]

    def forward(self, X: Tensor) -> Tensor:
        Xd, idx = self._split(X)
        self.acq.n_cached = self.n_cached[idx]
        return self.acq(Xd)


def batched_lbfgs_available(maxiter: int = 200) -> bool:
    """Whether BoTorch can run our multi-start L-BFGS-B as a batch of separate problems
    (its parallel mode, which takes per-start ``fixed_features``). BoTorch turns it off for
    scipy versions it has not tested (e.g. scipy >= 1.18 in BoTorch 0.18)."""
    return not botorch_gen.get_reasons_against_fast_path(
        method="L-BFGS-B", with_grad=True, minimize_options={"maxiter": maxiter}, timeout_sec=None
    )


register_method("random", RandomSearchOptions)(RandomSearch)
# Options: eeipu._options (declared there without torch, for config validation).
register_method("ei", EIOptions)(lambda **kw: CostAwareEI(cost=None, **kw))
register_method("eips", EIPSOptions)(lambda **kw: CostAwareEI(cost="total", cooling=False, **kw))
register_method("carbo", CArBOOptions)(lambda **kw: CostAwareEI(cost="total", cooling=True, **kw))
register_method("ms_carbo", MSCArBOOptions)(
    lambda **kw: CostAwareEI(cost="stage", cooling=True, **kw)
)
register_method("eeipu", EEIPUOptions)(
    lambda **kw: CostAwareEI(cost="stage", cooling=True, memoize=True, **kw)
)
