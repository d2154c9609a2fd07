"""Test problems for optimizers: the literature's synthetic multi-stage problem and an
in-process study on it with an exactly simulated cache. Pure library code (no Prefect).

Objective (maximized) = sum over stages of a *negated* standard test function of that
stage's parameters (BoTorch's ``botorch.test_functions``). Each stage also has a smooth,
positive, seeded cost of its own parameters, reported in simulated units (never slept),
with the first stage the most expensive, so memoizing early stages pays off.
:func:`simulate` runs an :class:`~eeipu.Optimizer` on it in process: a stage is a cache hit
when it and all its upstream stages ran before with the same values, and a hit costs
``load_cost`` instead of the stage's simulated cost. This drives the same ask/tell loop as
the real pipelines (no copy of it) and is what the tests and benchmarks use where Prefect
would only add time. ``stages.testing.synthetic_pipeline`` builds the same problem as a
pipeline of stages.

Example:
    >>> from eeipu import Optimizer, SearchSpace
    >>> from eeipu.testing import SyntheticProblem, simulate
    >>> problem = SyntheticProblem()                     # 3 stages, 2/3/2 parameters
    >>> space = problem.space_dict()                     # for eeipu.SearchSpace.from_dict
    >>> value, cost = problem.run_stage("prep", 0.0, {"x0": 1.0, "x1": 2.0})
    >>> opt = Optimizer(SearchSpace.from_dict(space), budget=30.0, seed=0)
    >>> trials = simulate(opt, problem)
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from botorch.test_functions import Ackley, Branin, Hartmann, Levy, StyblinskiTang
from botorch.test_functions.synthetic import SyntheticTestFunction

from eeipu import HistoryCacheView, Optimizer, Trial, cached_prefix

__all__ = [
    "VARIANTS",
    "SimulatedCache",
    "SimulatedProblem",
    "SyntheticProblem",
    "simulate",
    "synthetic_variant",
]

_DEFAULT_NAMES = ("prep", "train", "finetune")


def _generator(key: Any) -> torch.Generator:
    """A torch generator seeded by the canonical JSON of ``key`` (a draw that reproduces in
    any process)."""
    text = json.dumps(key, sort_keys=True)
    return torch.Generator().manual_seed(int(hashlib.sha256(text.encode()).hexdigest()[:15], 16))


def _test_function(k: int, dim: int) -> SyntheticTestFunction:
    """Stage k's test function: Branin, Hartmann, Styblinski-Tang, Ackley in turn, falling
    back to a dimension-agnostic function where the preferred one has a fixed dimension."""
    slot = k % 4
    if slot == 0:
        return Branin() if dim == 2 else Ackley(dim=dim)
    if slot == 1:
        return Hartmann(dim=dim) if dim in (3, 4, 6) else Levy(dim=dim)
    if slot == 2:
        return StyblinskiTang(dim=dim)
    return Ackley(dim=dim)


def _cost_coefficients(seed: int, dims: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per stage, the seeded amplitudes and phases of its cost's dependence on its parameters."""
    coefs = []
    for k, d in enumerate(dims):
        gen = torch.Generator().manual_seed(seed * 1009 + k)
        amp = torch.randn(d, generator=gen, dtype=torch.double) / math.sqrt(d)
        phase = torch.rand(d, generator=gen, dtype=torch.double)
        coefs.append((amp, phase))
    return coefs


def _trap_scales(
    functions: Sequence[SyntheticTestFunction], trap: Sequence[float]
) -> tuple[float, ...]:
    """Per stage, a quarter of the median gap ``f - f*`` over its domain (1.0 without a trap)."""
    scales = []
    for fn, t in zip(functions, trap, strict=True):
        if t == 0.0:
            scales.append(1.0)
            continue
        u = torch.quasirandom.SobolEngine(fn.dim, scramble=True, seed=0).draw(
            1024, dtype=torch.double
        )
        lo, hi = fn.bounds[0].double(), fn.bounds[1].double()
        gap = fn.evaluate_true(lo + u * (hi - lo)) - float(fn.optimal_value)
        scales.append(float(gap.median()) / 4)
    return tuple(scales)


def _fail_rules(
    seed: int, dims: Sequence[int], share: Sequence[float]
) -> tuple[tuple[torch.Tensor, float] | None, ...]:
    """Per stage, its failing half-space ``w · u > q`` of the unit cube (None: never fails)."""
    rules: list[tuple[torch.Tensor, float] | None] = []
    for k, (d, f) in enumerate(zip(dims, share, strict=True)):
        if f == 0.0:
            rules.append(None)
            continue
        gen = torch.Generator().manual_seed(seed * 1009 + k + 7919)
        w = torch.randn(d, generator=gen, dtype=torch.double)
        w = w / w.norm()
        u = torch.quasirandom.SobolEngine(d, scramble=True, seed=0).draw(4096, dtype=torch.double)
        rules.append((w, float(torch.quantile(u @ w, 1.0 - f))))
    return tuple(rules)


@dataclass(frozen=True)
class SyntheticProblem:
    """A seeded synthetic pipeline.

    Args:
        dims: Number of parameters of each stage, in stage order (default 2/3/2).
        seed: Seed of the cost functions (the objective has no randomness).
        base_costs: Typical cost of each stage; default ``8 / 3**k``, so the first stage is
            the most expensive. Pass a list to make another stage dominate.
        names: Stage names; default ``prep, train, finetune`` for 3 stages, else
            ``stage0 .. stageN``.
        cost_variation: Strength of the cost's dependence on the parameters (log scale).
        noise_sd: Standard deviation of Gaussian noise on the *observed* objective
            (:meth:`evaluate`, and the last of :meth:`stage_outputs`); :meth:`true_objective`
            stays noise-free. The noise of a configuration is drawn from ``seed`` and the
            configuration itself (an optimizer never repeats one, so this is i.i.d. noise
            that reproduces exactly). The Prefect pipeline (``stages.testing.synthetic_pipeline``) is
            noise-free.
        cost_trap: Per stage, the log factor by which its cost grows at its test
            function's optimum: cost x ``exp(trap * closeness)``, closeness in (0, 1],
            ``exp(-(f(x) - f*) / scale)`` with ``scale`` a quarter of the median gap
            ``f - f*`` over the stage's domain. 0 (default) for none: with ``log(8)`` the
            stage costs up to 8x more near its optimum, so the cheap region is not where
            the best values are.
        fail_share: Per stage, the share of its domain where it fails (raises, as a
            diverging training run does): a half-space of its unit cube, ``w · u > q`` with
            ``w`` a direction drawn from ``seed`` and ``q`` the ``1 - share`` quantile of
            ``w · u`` over the cube. 0 (default) for none. A configuration fails at the
            first stage that fails (:meth:`failed_stage`); the stages after it do not run.
        fail_cost: The share of its cost a failing stage is charged (it crashes part-way).
        fail_random: The probability that a configuration fails whatever its parameters
            (a preempted or out-of-memory run): each stage fails with probability
            ``1 - (1 - fail_random) ** (1 / n_stages)``, drawn from ``seed`` and the
            configuration up to it (:meth:`stage_fails`), so it reproduces exactly, in
            :func:`simulate` and in ``stages.testing.synthetic_pipeline`` alike.
    """

    dims: Sequence[int] = (2, 3, 2)
    seed: int = 0
    base_costs: Sequence[float] | None = None
    names: Sequence[str] | None = None
    cost_variation: float = 0.5
    noise_sd: float = 0.0
    cost_trap: Sequence[float] | None = None
    fail_share: Sequence[float] | None = None
    fail_cost: float = 0.5
    fail_random: float = 0.0
    _functions: list[SyntheticTestFunction] = field(init=False, repr=False, compare=False)
    _cost_coef: list[tuple[torch.Tensor, torch.Tensor]] = field(
        init=False, repr=False, compare=False
    )
    _trap_scale: tuple[float, ...] = field(init=False, repr=False, compare=False)
    _fail_rule: tuple[tuple[torch.Tensor, float] | None, ...] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        dims = tuple(int(d) for d in self.dims)
        if not dims or any(d < 1 for d in dims):
            raise ValueError(f"every stage needs at least one parameter, but got dims={dims}")
        object.__setattr__(self, "dims", dims)
        if self.names is None:
            names = (
                _DEFAULT_NAMES if len(dims) == 3 else tuple(f"stage{k}" for k in range(len(dims)))
            )
        else:
            names = tuple(self.names)
        if len(names) != len(dims) or len(set(names)) != len(names):
            raise ValueError(f"need {len(dims)} distinct stage names, but got {names}")
        object.__setattr__(self, "names", names)
        base = (
            [8.0 / 3.0**k for k in range(len(dims))]
            if self.base_costs is None
            else list(self.base_costs)
        )
        if len(base) != len(dims) or any(not (b > 0 and math.isfinite(b)) for b in base):
            raise ValueError(f"base_costs must be {len(dims)} positive numbers, but got {base}")
        object.__setattr__(self, "base_costs", tuple(float(b) for b in base))
        object.__setattr__(self, "_functions", [_test_function(k, d) for k, d in enumerate(dims)])
        object.__setattr__(self, "_cost_coef", _cost_coefficients(self.seed, dims))
        if not (self.noise_sd >= 0 and math.isfinite(self.noise_sd)):
            raise ValueError(f"noise_sd must be a finite number >= 0, but got {self.noise_sd}")
        trap = (0.0,) * len(dims) if self.cost_trap is None else tuple(map(float, self.cost_trap))
        if len(trap) != len(dims) or any(not math.isfinite(t) for t in trap):
            raise ValueError(f"cost_trap must be {len(dims)} finite numbers, but got {trap}")
        object.__setattr__(self, "cost_trap", trap)
        object.__setattr__(self, "_trap_scale", _trap_scales(self._functions, trap))
        share = (
            (0.0,) * len(dims) if self.fail_share is None else tuple(map(float, self.fail_share))
        )
        if len(share) != len(dims) or any(not 0 <= f < 1 for f in share):
            raise ValueError(f"fail_share must be {len(dims)} numbers in [0, 1), but got {share}")
        if not 0 <= self.fail_random < 1:
            raise ValueError(f"fail_random must be in [0, 1), but got {self.fail_random}")
        if not 0 < self.fail_cost <= 1:
            raise ValueError(f"fail_cost must be in (0, 1], but got {self.fail_cost}")
        object.__setattr__(self, "fail_share", share)
        object.__setattr__(self, "_fail_rule", _fail_rules(self.seed, dims, share))

    # ------------------------------------------------------------------ search space
    def space_dict(self) -> dict[str, dict[str, dict[str, Any]]]:
        """The search space in eeipu's schema: the test functions' declared bounds."""
        space: dict[str, dict[str, dict[str, Any]]] = {}
        for name, fn in zip(self.names, self._functions, strict=True):
            bounds = fn.bounds
            space[name] = {
                f"x{i}": {"type": "float", "low": float(bounds[0, i]), "high": float(bounds[1, i])}
                for i in range(fn.dim)
            }
        return space

    def optimum(self) -> float:
        """The best achievable objective (sum of the negated known optima)."""
        return -sum(float(fn.optimal_value) for fn in self._functions)

    # ------------------------------------------------------------------ stages
    def _index(self, stage: str) -> int:
        try:
            return list(self.names).index(stage)
        except ValueError:
            raise KeyError(f"unknown stage {stage!r}; stages are {list(self.names)}") from None

    def _x(self, k: int, params: Mapping[str, Any]) -> torch.Tensor:
        return torch.tensor(
            [float(params[f"x{i}"]) for i in range(self.dims[k])], dtype=torch.double
        )

    def stage_value(self, stage: str, params: Mapping[str, Any]) -> float:
        """This stage's contribution to the objective: the negated test function."""
        k = self._index(stage)
        return -float(self._functions[k].evaluate_true(self._x(k, params).unsqueeze(0)))

    def stage_cost(self, stage: str, params: Mapping[str, Any]) -> float:
        """Smooth, positive, seeded cost of running this stage with these parameters."""
        k = self._index(stage)
        fn = self._functions[k]
        lo, hi = fn.bounds[0].double(), fn.bounds[1].double()
        u = (self._x(k, params) - lo) / (hi - lo)  # position in the unit cube
        amp, phase = self._cost_coef[k]
        wiggle = torch.sum(amp * torch.cos(math.pi * (u + phase)))
        log_factor = self.cost_variation * float(wiggle)
        if self.cost_trap[k]:
            gap = float(fn.evaluate_true(self._x(k, params).unsqueeze(0))) - float(fn.optimal_value)
            log_factor += self.cost_trap[k] * math.exp(-max(gap, 0.0) / self._trap_scale[k])
        return float(self.base_costs[k] * math.exp(log_factor))

    def stage_fails(self, stage: str, params: Mapping[str, Any], upstream: float = 0.0) -> bool:
        """Whether this stage fails (raises) with these parameters: in its failing region
        (``fail_share``), or at random (``fail_random``: each stage with the probability
        that makes the whole pipeline fail with ``fail_random``, drawn from ``seed``, the
        stage, its parameters and ``upstream``, the running objective sum it receives,
        which stands for the upstream configuration)."""
        k = self._index(stage)
        rule = self._fail_rule[k]
        if rule is not None:
            fn = self._functions[k]
            lo, hi = fn.bounds[0].double(), fn.bounds[1].double()
            u = (self._x(k, params) - lo) / (hi - lo)
            if float(u @ rule[0]) > rule[1]:
                return True
        if not self.fail_random:
            return False
        per_stage = 1.0 - (1.0 - self.fail_random) ** (1.0 / len(self.names))
        key = [self.seed, "fail", stage, dict(params), repr(float(upstream))]
        return float(torch.rand(1, generator=_generator(key), dtype=torch.double)) < per_stage

    def failed_stage(self, params: Mapping[str, Mapping[str, Any]]) -> str | None:
        """The first stage that fails for this configuration, None when it runs to the end."""
        total = 0.0
        for name in self.names:
            if self.stage_fails(name, params[name], total):
                return name
            total += self.stage_value(name, params[name])
        return None

    def run_stage(
        self, stage: str, upstream: float, params: Mapping[str, Any]
    ) -> tuple[float, float]:
        """Run one stage: returns (running objective sum, simulated cost)."""
        return upstream + self.stage_value(stage, params), self.stage_cost(stage, params)

    def evaluate(self, params: Mapping[str, Mapping[str, Any]]) -> tuple[float, dict[str, float]]:
        """Run every stage: returns (observed objective, {stage: cost})."""
        total, costs = 0.0, {}
        for name in self.names:
            total, costs[name] = self.run_stage(name, total, params[name])
        return total + self.noise(params), costs

    def true_objective(self, params: Mapping[str, Mapping[str, Any]]) -> float:
        """The noise-free objective (equal to :meth:`evaluate`'s when ``noise_sd`` is 0)."""
        return sum(self.stage_value(name, params[name]) for name in self.names)

    def noise(self, params: Mapping[str, Mapping[str, Any]]) -> float:
        """The observation noise of this configuration (0.0 when ``noise_sd`` is 0)."""
        if not self.noise_sd:
            return 0.0
        config = {n: dict(params[n]) for n in self.names}
        return self.noise_sd * float(
            torch.randn(1, generator=_generator([self.seed, config]), dtype=torch.double)
        )

    def stage_outputs(self, params: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
        """Each stage's scalar output: the running objective sum after it, so the last
        stage's output is the (observed, noisy) objective (for cascade methods,
        ``Optimizer.tell``'s ``stage_outputs``)."""
        total, out = 0.0, {}
        for name in self.names:
            total += self.stage_value(name, params[name])
            out[name] = total
        out[self.names[-1]] += self.noise(params)
        return out


# The benchmark settings (benchmarks/suite.py). Each variant keeps the 3-stage default's
# total typical cost per full trial (8 + 8/3 + 8/9 ≈ 11.56 units), so a budget means the
# same number of full evaluations in every variant.
_TOTAL = 8.0 + 8.0 / 3.0 + 8.0 / 9.0
_TEN_DECAY = [1.5**-k for k in range(10)]
VARIANTS: dict[str, dict[str, Any]] = {
    # The literature's setting: 2/3/2 parameters, costs 8 / 8/3 / 8/9 (first stage dearest).
    "synthetic3": {"dims": (2, 3, 2)},
    # 10 stages (24 parameters), costs decaying by 1.5x per stage from the first.
    "synthetic10": {
        "dims": (2, 3, 2, 2, 3, 2, 2, 3, 2, 3),
        "base_costs": tuple(_TOTAL * w / sum(_TEN_DECAY) for w in _TEN_DECAY),
    },
    # High-dimensional: 6/8/6 parameters (Ackley-6, Levy-8, Styblinski-Tang-6).
    "highdim": {"dims": (6, 8, 6)},
    # The 3-stage setting with the cost order reversed: the *last* stage is the dearest, so
    # a cached prefix saves at most ~30% of a trial and memoization can barely help.
    "last_expensive": {"dims": (2, 3, 2), "base_costs": (8.0 / 9.0, 8.0 / 3.0, 8.0)},
    # synthetic3 with Gaussian noise (sd 4, ~5% of the objective's range) on the observed
    # objective; methods are scored by the true value of the trial they would report.
    "noisy": {"dims": (2, 3, 2), "noise_sd": 4.0},
    # A cost trap: 4 stages (Branin, Hartmann-3, Styblinski-Tang-2, Ackley-2), the first
    # the dearest, and its cost grows up to 8x towards its optimum: the cheap region of
    # the first stage is not where the best values are.
    "cost_trap": {
        "dims": (2, 3, 2, 2),
        "base_costs": tuple(_TOTAL * w / 15.0 for w in (8.0, 4.0, 2.0, 1.0)),
        "cost_trap": (math.log(8.0), 0.0, 0.0, 0.0),
    },
    # synthetic3 with failing stages: train fails in a quarter of its domain and finetune
    # in another quarter (half-spaces drawn per seed), so ~44% of random configurations
    # fail; a failing stage is charged half its cost and the stages after it do not run.
    "failures": {"dims": (2, 3, 2), "fail_share": (0.0, 0.25, 0.25)},
    # synthetic3 where 20% of the configurations fail at random (a stage drawn uniformly),
    # whatever their parameters: nothing to learn about where failures are.
    "flaky": {"dims": (2, 3, 2), "fail_random": 0.2},
}


def synthetic_variant(name: str, seed: int = 0) -> SyntheticProblem:
    """One of the benchmark's synthetic settings (see ``VARIANTS``), costs seeded by ``seed``.

    Example:
        >>> synthetic_variant("last_expensive", seed=3).base_costs[-1]
        8.0
    """
    if name not in VARIANTS:
        raise ValueError(f"unknown synthetic variant {name!r}; known: {sorted(VARIANTS)}")
    return SyntheticProblem(seed=seed, **VARIANTS[name])


class SimulatedProblem(Protocol):
    """What :func:`simulate` needs of a problem (:class:`SyntheticProblem`
    and the benchmark family's generated problems provide it)."""

    names: Sequence[str]
    fail_cost: float

    def evaluate(self, params: Mapping[str, Mapping[str, Any]]) -> tuple[float, dict[str, float]]:
        """(observed objective, {stage: simulated cost}) of a full run."""
        ...

    def stage_outputs(self, params: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
        """Each stage's scalar output (the last one's is the observed objective)."""
        ...

    def failed_stage(self, params: Mapping[str, Mapping[str, Any]]) -> str | None:
        """The first stage that fails for this configuration, None when none does."""
        ...


class SimulatedCache(HistoryCacheView):
    """The cache of a simulated study: every stage that ran, keyed by its upstream values."""

    def lookup(self, params: Mapping[str, Mapping[str, Any]]) -> list[str]:
        """The leading stages of ``params`` that are cached."""
        return list(cached_prefix(self, self._stages, params))


def simulate(
    optimizer: Optimizer,
    problem: SimulatedProblem,
    *,
    load_cost: float | Mapping[str, float] = 0.01,
    max_trials: int | None = None,
    on_trial: Callable[[Trial, Optimizer], None] | None = None,
) -> list[Trial]:
    """Ask/tell until the optimizer's budget is spent (or ``max_trials`` were told).

    Args:
        optimizer: A fresh optimizer over ``problem.space_dict()``.
        problem: The synthetic problem providing objective and stage costs.
        load_cost: Cost charged for a cache hit: one for every stage, or per stage name.
        max_trials: Optional cap on the number of trials.
        on_trial: Called after each tell (progress output, say).

    Returns:
        The told trials.
    """
    cache = SimulatedCache(problem.names)
    loads = (
        dict(load_cost)
        if isinstance(load_cost, Mapping)
        else dict.fromkeys(problem.names, float(load_cost))
    )
    if set(loads) != set(problem.names):
        raise ValueError(
            f"`load_cost` must name every stage {list(problem.names)}, but got {sorted(loads)}"
        )
    while not optimizer.done and (max_trials is None or len(optimizer.trials) < max_trials):
        trial = optimizer.ask(cache=cache)
        hits = cache.lookup(trial.params)
        objective, costs = problem.evaluate(trial.params)
        costs = {s: (loads[s] if s in hits else c) for s, c in costs.items()}
        outputs: dict[str, float] | None = problem.stage_outputs(trial.params)
        failed = problem.failed_stage(trial.params)
        if failed is not None:  # it crashed part-way; the stages after it did not run
            ran = problem.names[: problem.names.index(failed) + 1]
            costs = {s: costs[s] for s in ran}
            costs[failed] *= problem.fail_cost
            objective, outputs = None, {s: outputs[s] for s in ran[:-1]} or None
        told = optimizer.tell(
            trial,
            objective=objective,
            costs=costs,
            cached=hits,
            stage_outputs=outputs,
        )
        cache.add(trial.params, [s for s in problem.names if s in costs and s != failed])
        if on_trial is not None:
            on_trial(told, optimizer)
    return optimizer.trials
