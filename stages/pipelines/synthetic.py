"""The literature's synthetic multi-stage problem, as plain functions and as a pipeline.

Objective (maximized) = sum over stages of a *negated* standard test function of that
stage's parameters (BoTorch's ``botorch.test_functions``). Each stage also has a smooth,
positive, seeded cost of its own parameters, reported in simulated units (never slept),
with the first stage the most expensive, so memoizing early stages pays off.
:func:`synthetic_pipeline` builds the same problem from ``stages``' public API.

Example:
    >>> from stages.pipelines import SyntheticProblem, synthetic_pipeline
    >>> problem = SyntheticProblem()                     # 3 stages, 2/3/2 parameters
    >>> space = problem.space_dict()                     # for eeipu.SearchSpace.from_dict
    >>> value, cost = problem.run_stage("prep", 0.0, {"x0": 1.0, "x1": 2.0})
    >>> synthetic_pipeline(problem).stage_names
    ['prep', 'train', 'finetune']
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from botorch.test_functions import Ackley, Branin, Hartmann, Levy, StyblinskiTang
from botorch.test_functions.synthetic import SyntheticTestFunction

from stages import Pipeline, Reported, Stage

__all__ = ["VARIANTS", "SyntheticProblem", "synthetic_pipeline", "synthetic_variant"]

_DEFAULT_NAMES = ("prep", "train", "finetune")


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
    """

    dims: Sequence[int] = (2, 3, 2)
    seed: int = 0
    base_costs: Sequence[float] | None = None
    names: Sequence[str] | None = None
    cost_variation: float = 0.5
    _functions: list[SyntheticTestFunction] = field(init=False, repr=False, compare=False)
    _cost_coef: list[tuple[torch.Tensor, torch.Tensor]] = field(
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
        coefs = []
        for k, d in enumerate(dims):
            gen = torch.Generator().manual_seed(self.seed * 1009 + k)
            amp = torch.randn(d, generator=gen, dtype=torch.double) / math.sqrt(d)
            phase = torch.rand(d, generator=gen, dtype=torch.double)
            coefs.append((amp, phase))
        object.__setattr__(self, "_cost_coef", coefs)

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
        return float(self.base_costs[k] * torch.exp(self.cost_variation * wiggle))

    def run_stage(
        self, stage: str, upstream: float, params: Mapping[str, Any]
    ) -> tuple[float, float]:
        """Run one stage: returns (running objective sum, simulated cost)."""
        return upstream + self.stage_value(stage, params), self.stage_cost(stage, params)

    def evaluate(self, params: Mapping[str, Mapping[str, Any]]) -> tuple[float, dict[str, float]]:
        """Run every stage: returns (objective, {stage: cost})."""
        total, costs = 0.0, {}
        for name in self.names:
            total, costs[name] = self.run_stage(name, total, params[name])
        return total, costs

    def stage_outputs(self, params: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
        """Each stage's scalar output: the running objective sum after it, so the last
        stage's output is the objective (for cascade methods, ``Optimizer.tell``'s
        ``stage_outputs``)."""
        total, out = 0.0, {}
        for name in self.names:
            total += self.stage_value(name, params[name])
            out[name] = total
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


def synthetic_pipeline(
    problem: SyntheticProblem | None = None,
    *,
    dims: Sequence[int] | None = None,
    seed: int = 0,
    version: str = "1",
    fail_stage: str | None = None,
    fail_above: float | None = None,
    load_cost: float = 0.01,
) -> Pipeline:
    """The synthetic problem as a chain of stages.

    Each stage reads the previous stage's running objective sum (the first reads nothing),
    adds its own negated test function and reports the problem's simulated cost through
    :class:`stages.Reported`. The sink's output is the objective.

    Args:
        problem: The problem (default ``SyntheticProblem()``: prep -> train -> finetune).
        dims: Parameters per stage, when no ``problem`` is given (default 2/3/2).
        seed: Seed of the problem's cost functions, when no ``problem`` is given.
        version: Version of every stage (part of the cache keys).
        fail_stage: Fault injection (tests, demos): this stage raises ``RuntimeError``
            whenever its first parameter ``x0`` exceeds ``fail_above``.
        fail_above: The threshold for ``fail_stage``.
        load_cost: Simulated cost of a cache hit (as in :func:`stages.pipelines.simulate`).

    Example:
        >>> pipe = synthetic_pipeline()
        >>> pipe.stage_names
        ['prep', 'train', 'finetune']
    """
    if problem is None:
        problem = SyntheticProblem(dims=tuple(dims or (2, 3, 2)), seed=seed)
    if fail_stage is not None and fail_stage not in problem.names:
        raise ValueError(
            f"`fail_stage` must be one of {list(problem.names)}, but got {fail_stage!r}"
        )
    stages = []
    previous: str | None = None
    for name, section in problem.space_dict().items():
        stages.append(
            Stage(
                func=_stage_function(
                    problem, name, previous, fail_above if name == fail_stage else None
                ),
                name=name,
                inputs=(previous,) if previous else (),
                version=version,
                space=section,
            )
        )
        previous = name
    return Pipeline(stages, load_cost=load_cost)


def _stage_function(
    problem: SyntheticProblem, name: str, previous: str | None, fail_above: float | None
) -> Any:
    # Inputs arrive by name, so each stage gets a function whose keyword is the upstream
    # stage's output name; hyperparameters arrive as **params.
    def run(**kwargs: Any) -> Reported[float]:
        upstream = float(kwargs.pop(previous)) if previous else 0.0
        if fail_above is not None and kwargs["x0"] > fail_above:
            raise RuntimeError(f"injected failure: x0={kwargs['x0']} > {fail_above}")
        value, cost = problem.run_stage(name, upstream, kwargs)
        return Reported(value, cost=cost)

    run.__name__ = run.__qualname__ = f"synthetic_{name}"
    return run
