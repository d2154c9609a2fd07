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

The cost-aware EI family is one class, :class:`CostAwareEI`, composed of parts
(``eeipu/_parts.py``): a quality term (:class:`Quality`), a cost term (:class:`CostTerm`),
a trade-off (:class:`Ratio`, :class:`Gittins`), a failure model (:class:`ImputeFailures`,
:class:`ModelFailures`) and the shared search settings (:class:`AcquisitionSearch`, and
:class:`PrefixSearch` for memoization). Each method is a short composition of them from its
typed options (the ``_ei`` ... ``_eeipu`` functions at the end of this module): ``eeipu``
uses noisy EI (``incumbent="noisy"``, BoTorch's qLogNEI) by default, the others LogEI on
the best observed value (``incumbent="observed"``), as in the literature. ``eeipu`` also
models failed trials (``failures="model"``: EI times the probability of success); the
others impute them with the worst observed value, as the literature's code does.

A method is handed the told trials as they are (:class:`Observations`: failed ones with a
NaN objective) and builds its own prefix pool (:meth:`Method.prefix_pool`).

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
from botorch.exceptions.warnings import OptimizationWarning
from botorch.generation import gen as botorch_gen
from botorch.generation.gen import gen_candidates_scipy
from botorch.models import SingleTaskGP
from linear_operator.utils.warnings import NumericalWarning
from torch import Tensor
from torch.quasirandom import SobolEngine

from eeipu._acquisition import GittinsIndex, LogEIPerCost, log_success
from eeipu._cache import CacheView
from eeipu._errors import OptimizerError
from eeipu._models import CostModel, conditioned_gp, fit_gp
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
from eeipu._parts import (
    AcquisitionSearch,
    CostTerm,
    Gittins,
    GPFits,
    ImputeFailures,
    PrefixSearch,
    Quality,
    Ratio,
    failure_model,
    tradeoff,
)
from eeipu._prefixes import Prefix, build_prefix_pool
from eeipu._space import SearchSpace
from eeipu._trial import Trial

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


@dataclass
class Observations:
    """Everything a method may use to propose, in the optimizer's internal scale.

    Attributes:
        space: The search space.
        X: ``n x d`` encoded inputs of told trials (then of pending ones, see ``n_pending``).
        Y: ``n x 1`` objective, to be *maximized*; NaN for failed trials (as told: what
            they teach is the method's failure model, see :func:`impute_failed`).
        costs: ``n x S`` measured stage costs (NaN where a stage did not run).
        cached: ``n x S`` bool, stages that were loaded from the cache.
        eta: Cost-cooling exponent η for this ask.
        prefixes: Ranked pool of cached prefixes, the one the method built
            (:meth:`Method.prefix_pool`; empty for methods without memoization).
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
            (their ``Y`` is NaN); None when none failed.
        trials: The told trials (other studies' priors first), as they are: rows
            ``0..n_told-1`` of ``X``, except when no trial is complete (then ``X`` is empty).
            The optimizer's own, not copies (an ask must not copy the history): read only.
        direction: The study's direction (``Y`` is signed to be maximized).
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
    trials: tuple[Trial, ...] = ()
    direction: str = "maximize"

    @property
    def n_told(self) -> int:
        """The told rows of ``X`` (the pending ones follow)."""
        return self.X.shape[0] - self.n_pending


def impute_failed(obs: Observations) -> Observations:
    """``obs`` with failed trials' ``Y`` set to the worst observed value, so that an
    objective GP steers away from them (the failure model of the literature's code)."""
    if obs.failed is None:
        return obs
    return replace(obs, Y=_impute_worst(obs.Y, obs.n_told))


def _impute_worst(Y: Tensor, n_told: int | None = None) -> Tensor:
    """``Y`` with its NaN rows set to the least of the first ``n_told`` rows' values."""
    told = Y if n_told is None else Y[:n_told]
    ok = ~torch.isnan(told)
    if ok.all() or not ok.any():
        return Y
    return torch.where(torch.isnan(Y), told[ok].min(), Y)


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
    #: Whether the default :meth:`prefix_pool` builds the (costly) prefix pool.
    uses_prefixes: bool = False

    @abstractmethod
    def propose(self, obs: Observations) -> Proposal:
        """Return the next point to evaluate."""

    def fantasize(self, X: Tensor, Y: Tensor, X_pending: Tensor) -> Tensor:
        """Kriging believer: stand-in outcomes (``p x 1``) for trials still running at
        ``X_pending`` (``p x d``), the posterior mean of an objective GP on the told ``X``
        (``n x d``) and ``Y`` (``n x 1``). The optimizer appends them to the observations, so
        that the acquisition does not propose those points, or their neighbours, again.

        ``Y`` is NaN for failed trials; this default imputes them (:func:`impute_failed`)
        and fits that GP; methods that carry fitted hyperparameters from one ask to the next
        condition a GP with them instead (:class:`WarmStartState`).
        """
        model = fit_gp(X, _impute_worst(Y))
        return _posterior_mean(model, X_pending).to(Y)

    def prefix_pool(self, obs: Observations, cache: CacheView, max_prefixes: int) -> list[Prefix]:
        """The cached prefixes this method's proposals may reuse (``obs.prefixes``): built
        once per ask, before :meth:`propose`, from ``obs.trials`` and what ``cache`` holds.

        This default builds the pool of :func:`build_prefix_pool` (its draws from
        ``obs.rng``) when :attr:`uses_prefixes` is set, else none.
        """
        if not self.uses_prefixes:
            return []
        return build_prefix_pool(obs.space, obs.trials, cache, max_prefixes, obs.direction, obs.rng)

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
        model = None if init is None else conditioned_gp(X, _impute_worst(Y), init)
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
        >>> Options = options_type(CascadeBO, "num_restarts", "maxiter", name="Options")
        >>> Options(num_restarts=2)
        Options(num_restarts=2, maxiter=200)
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


class CostAwareEI(WarmStartState, Method):
    """A cost-aware EI method composed of parts (``eeipu/_parts.py``): a quality term, an
    optional cost term, a trade-off and a failure model, searched with shared settings.

    With ``prefixes`` (a :class:`PrefixSearch`, memoization) the candidates are generated
    over the prefix pool: the empty prefix plus each cached prefix, whose dimensions are
    fixed to the cached values while the rest is optimized, charging the cached stages
    their load cost (δ = prefix length). The raw starts of all prefixes are screened in one
    batched call, then optimized together in one multi-start L-BFGS-B run: BoTorch's
    parallel mode where it is available (each start carries its prefix in a held input
    column), else its serial mode (one scipy problem over the whole batch, each start's
    prefix applied by position), e.g. for scipy >= 1.18. The best point over the pool wins.

    Args:
        quality: The quality term (log EI on an incumbent, or noisy EI).
        cost: The cost term, or None (plain EI).
        tradeoff: How quality and cost combine (:class:`Ratio`, :class:`Gittins`).
        failures: What failed trials teach (:class:`ImputeFailures`, :class:`ModelFailures`).
        search: The acquisition search settings.
        prefixes: The prefix-pool search (needs a per-stage cost term), or None.

    Example:
        >>> carbo = CostAwareEI(cost=CostTerm(per_stage=False), search=AcquisitionSearch())
    """

    def __init__(
        self,
        *,
        quality: Quality | None = None,
        cost: CostTerm | None = None,
        tradeoff: Ratio | Gittins | None = None,
        failures: ImputeFailures | None = None,
        search: AcquisitionSearch | None = None,
        prefixes: PrefixSearch | None = None,
    ) -> None:
        tradeoff = Ratio() if tradeoff is None else tradeoff
        if isinstance(tradeoff, Gittins) and cost is None:
            raise OptimizerError("`tradeoff='gittins'` needs a cost model (a CostTerm)")
        if prefixes is not None and (cost is None or not cost.per_stage):
            raise OptimizerError(
                "`prefixes` (memoization) needs a per-stage cost term (CostTerm(per_stage=True))"
            )
        self.quality = Quality() if quality is None else quality
        self.cost = cost
        self.tradeoff = tradeoff
        self.failures = ImputeFailures() if failures is None else failures
        self.search = AcquisitionSearch() if search is None else search
        self.prefixes = prefixes
        self.uses_prefixes = prefixes is not None
        self.fits = GPFits(self.search.warm_start)

    # WarmStartState's view of the fits (saved and restored by state_dict).
    @property
    def warm_start(self) -> bool:
        return self.search.warm_start

    @warm_start.setter
    def warm_start(self, on: bool) -> None:
        self.search = replace(self.search, warm_start=on)
        self.fits.warm_start = on

    @property
    def _init(self) -> dict[str, Any]:
        return self.fits.init

    @_init.setter
    def _init(self, init: dict[str, Any]) -> None:
        self.fits.init = init

    # ------------------------------------------------------------------ models
    def cost_model(self, obs: Observations) -> CostModel | None:
        """Fit the cost model this method uses (None for plain EI)."""
        if self.cost is None:
            return None
        return self.cost.model(obs, self.fits, self.search.mc_samples)

    def cost_hyperparameters(self) -> list[dict[str, Any] | None] | None:
        if self.cost is None or not self.cost.per_stage or self.cost.inputs != "prefix":
            return None  # another model than Optimizer.expected_cost's
        return self._init.get("cost")

    def acquisition(self, obs: Observations, n_cached: int | Tensor = 0) -> CostAcquisition:
        """The fitted acquisition for candidates whose first ``n_cached`` stages are cached."""
        obs = impute_failed(obs)
        rows = self.failures.rows(obs)
        success = self.failures.success(obs, self.fits)
        acq = self.tradeoff.acquisition(self, obs, rows, success)
        acq.n_cached = n_cached
        return acq

    # ------------------------------------------------------------------ proposal
    def propose(self, obs: Observations) -> Proposal:
        with warnings.catch_warnings():
            # qLogNEI's joint posterior over configurations run twice (a memoizing study
            # re-runs some) is not p.d.: jitter is added, as it should be; no warning per ask.
            warnings.simplefilter("ignore", NumericalWarning)
            return self._propose(impute_failed(obs))

    def _pool(self, obs: Observations) -> list[Prefix | None]:
        """The prefixes to search: the empty one (None), then the cached ones of the pool."""
        pool: list[Prefix | None] = [None]
        if self.prefixes is None:
            return pool
        pool += [p for p in obs.prefixes if obs.space.prefix_dim(p.n_stages) < obs.space.dim]
        # Leading stages without parameters, once cached, are loaded by every candidate:
        # their prefix (no fixed column) takes the empty prefix's place and starts.
        free = [p for p in pool[1:] if p.x.numel() == 0]
        if free:
            top = max(free, key=lambda p: p.n_stages)
            pool = [top] + [p for p in pool[1:] if p.x.numel()]
        return pool

    def _propose(self, obs: Observations) -> Proposal:
        pool = self._pool(obs)
        acq = self.acquisition(obs)
        starts = self._starts(obs, acq, pool)
        keep = [i for i, st in enumerate(starts) if len(st)]
        pool, starts = [pool[i] for i in keep], [starts[i] for i in keep]
        ranked = self._rounded(acq, self._optimize_pool(acq, pool, starts, obs.space), obs.space)
        ranked.sort(key=lambda p: p.acq_value, reverse=True)
        capped = self.tradeoff.capped and isinstance(acq, LogEIPerCost) and acq.uses_cost
        if capped:
            ranked, best = self._within_cap(acq, obs, ranked)
        if self.prefixes is not None:
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
            self.search.raw_samples, dtype=torch.double
        )
        with torch.no_grad():
            values = blind(raw.unsqueeze(-2))
        top = values.topk(min(self.search.num_restarts, raw.shape[0])).indices
        found = self._optimize_pool(blind, [None], [raw[top].unsqueeze(-2)], obs.space)
        ranked = ranked + self._rounded(acq, found, obs.space)
        X = torch.stack([p.x for p in ranked]).unsqueeze(-2)
        with torch.no_grad():
            quality = blind(X).reshape(-1)
        top = int(quality.argmax())
        best = float(quality[top])
        eligible = quality >= best - (
            math.inf if self.tradeoff.give_up is None else self.tradeoff.give_up
        )
        if self.tradeoff.min_saving is not None:
            with torch.no_grad():
                acq.n_cached = torch.tensor(
                    [0 if p.prefix is None else p.prefix.n_stages for p in ranked]
                )
                lic = acq.log_inverse_cost(X).reshape(-1)
            saving = lic - lic[top]
            eligible &= saving >= math.log(self.tradeoff.min_saving)
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
        ps = self.prefixes or PrefixSearch()  # only the empty prefix without a pool
        raw_n = [self.search.raw_samples] + [ps.prefix_raw_samples] * (len(pool) - 1)
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
        picked[0] = idx[
            raw_values[idx].topk(min(self.search.num_restarts, idx.numel())).indices
        ].tolist()
        left = ps.prefix_starts
        for j in raw_values.argsort(descending=True).tolist():
            if left == 0:
                break
            i = int(owner[j])
            if i > 0 and len(picked[i]) < ps.prefix_restarts:
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
        if batched_lbfgs_available(self.search.maxiter):
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
                options={"maxiter": self.search.maxiter},
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
    compared, terms = _split_terms(acq, ranked, log_inv_cost)
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


def _split_terms(
    acq: CostAcquisition, ranked: list[Proposal], log_inv_cost: list[float]
) -> tuple[tuple[str, ...], list[dict[str, float]]]:
    """Each proposal's acquisition split into its terms (see :func:`acquisition_terms`),
    and the keys compared with the best fresh candidate."""
    if isinstance(acq, GittinsIndex):
        terms = [
            {"index": float(p.acq_value), "log_inv_cost": float(lic), "lam": acq.lam}
            for p, lic in zip(ranked, log_inv_cost, strict=True)
        ]
        return ("index", "log_inv_cost"), terms
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
    return ("log_ei", "cost_term", "log_inv_cost"), terms


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


# ---------------------------------------------------------------------- the built-ins
# Each method is a composition of parts, from its typed options (eeipu._options, declared
# there without torch, for config validation).
def _typed(compose: Callable[[Any], Method], kind: type) -> Callable[..., Method]:
    """A factory (keyword options -> method) that composes ``kind(**options)``."""

    def factory(**options: Any) -> Method:
        return compose(kind(**options))

    factory.__name__ = factory.__qualname__ = compose.__name__.lstrip("_")
    return factory


def _ei(o: EIOptions) -> Method:
    """Log EI (the quality term alone)."""
    return CostAwareEI(
        quality=Quality(o.incumbent),
        failures=failure_model(o.failures),
        search=AcquisitionSearch.of(o),
    )


def _eips(o: EIPSOptions) -> Method:
    """Log EI per unit expected total cost, uncooled."""
    cost = CostTerm(per_stage=False, cooling=False, weight=o.cost_weight)
    return _with_cost(o, cost)


def _carbo(o: CArBOOptions) -> Method:
    """Log EI per unit expected total cost, cooled (CArBO)."""
    return _with_cost(o, CostTerm(per_stage=False, cooling=True, weight=o.cost_weight))


def _ms_carbo(o: MSCArBOOptions) -> Method:
    """Log EI per unit expected cost of the stages, cooled, without memoization."""
    return _with_cost(o, _stage_cost(o))


def _eeipu(o: EEIPUOptions) -> Method:
    """Noisy log EI times P(success) per unit expected memoized cost, cooled, over the
    prefix pool."""
    return _with_cost(o, _stage_cost(o), prefixes=PrefixSearch.of(o))


def _stage_cost(o: MSCArBOOptions) -> CostTerm:
    return CostTerm(weight=o.cost_weight, inputs=o.cost_inputs, load_eps=o.load_eps)


def _with_cost(o: Any, cost: CostTerm, prefixes: PrefixSearch | None = None) -> Method:
    """The cost-aware EI of options ``o`` with ``cost``."""
    return CostAwareEI(
        quality=Quality(o.incumbent),
        cost=cost,
        tradeoff=tradeoff(o.tradeoff, getattr(o, "give_up", None), getattr(o, "min_saving", None)),
        failures=failure_model(o.failures),
        search=AcquisitionSearch.of(o),
        prefixes=prefixes,
    )


register_method("random", RandomSearchOptions)(RandomSearch)
for _compose, _kind in (
    (_ei, EIOptions),
    (_eips, EIPSOptions),
    (_carbo, CArBOOptions),
    (_ms_carbo, MSCArBOOptions),
    (_eeipu, EEIPUOptions),
):
    register_method(_compose.__name__.lstrip("_"), _kind)(_typed(_compose, _kind))
