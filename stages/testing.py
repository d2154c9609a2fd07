"""Test pipelines for the framework's own default job and tests: the synthetic problem of
:mod:`eeipu.testing` as a chain of stages, and a variant whose stages sleep their cost.

``flows/conf/pipeline/synthetic.yaml`` (the default pipeline of ``eeipu tune``) runs
:func:`synthetic_pipeline`. :func:`slept_synthetic_pipeline` is for wall-clock effects
(parallel trials on several workers, cache hits): a stage that runs sleeps ``scale`` seconds
per unit of its simulated cost; a cache hit only loads. Objective, costs and cache keys are
those of :func:`synthetic_pipeline` (the sleeping wrapper is part of each stage's code, so
the two never share cache entries).

Example:
    >>> synthetic_pipeline().stage_names
    ['prep', 'train', 'finetune']
    >>> slept_synthetic_pipeline(scale=0.1).stage_names
    ['prep', 'train', 'finetune']
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from eeipu.testing import SyntheticProblem
from stages import Pipeline, Reported, Stage

__all__ = ["slept_synthetic_pipeline", "synthetic_pipeline"]


def synthetic_pipeline(
    problem: SyntheticProblem | None = None,
    *,
    dims: Sequence[int] | None = None,
    seed: int = 0,
    version: str | None = None,
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
        version: An explicit version for every stage, standing for their code in the cache
            keys (``None``: the keys follow the code; see :class:`stages.Stage`).
        fail_stage: Fault injection (tests, demos): this stage raises ``RuntimeError``
            whenever its first parameter ``x0`` exceeds ``fail_above``.
        fail_above: The threshold for ``fail_stage``.
        load_cost: Simulated cost of a cache hit (as in :func:`eeipu.testing.simulate`).

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
        if problem.stage_fails(name, kwargs, upstream):
            raise RuntimeError(f"simulated failure of stage {name!r} (fail_share, fail_random)")
        value, cost = problem.run_stage(name, upstream, kwargs)
        return Reported(value, cost=cost)

    run.__name__ = run.__qualname__ = f"synthetic_{name}"
    return run


def slept_synthetic_pipeline(scale: float = 0.1, **kwargs: Any) -> Pipeline:
    """:func:`synthetic_pipeline` (``kwargs``), each stage sleeping ``scale`` s per cost unit.

    Raises:
        ValueError: ``scale`` is negative.
    """
    if not scale >= 0:
        raise ValueError(f"`scale` must be >= 0, but got {scale!r}")
    base = synthetic_pipeline(**kwargs)
    stages = [replace(s, func=_sleeping(s.func, scale)) for s in base.stages]
    return Pipeline(stages, metric=base.metric, load_cost=getattr(base, "load_cost", None))


def _sleeping(func: Any, scale: float) -> Any:
    def run(**kwargs: Any) -> Any:
        out = func(**kwargs)
        if isinstance(out, Reported):
            time.sleep(scale * out.cost)
        return out

    run.__name__ = run.__qualname__ = f"slept_{func.__name__}"
    return run
