"""Example pipelines built from plain functions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from stages._pipeline import Pipeline, Reported, Stage
from stages.synthetic import SyntheticProblem

__all__ = ["synthetic_pipeline"]


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
    :class:`~stages.Reported`. The sink's output is the objective.

    Args:
        problem: The problem (default ``SyntheticProblem()``: prep -> train -> finetune).
        dims: Parameters per stage, when no ``problem`` is given (default 2/3/2).
        seed: Seed of the problem's cost functions, when no ``problem`` is given.
        version: Version of every stage (part of the cache keys).
        fail_stage: Fault injection (tests, demos): this stage raises ``RuntimeError``
            whenever its first parameter ``x0`` exceeds ``fail_above``.
        fail_above: The threshold for ``fail_stage``.
        load_cost: Simulated cost of a cache hit (as in :func:`stages.simulate.simulate`).

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
