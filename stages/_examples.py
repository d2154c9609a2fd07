"""Example pipelines built from plain functions."""

from __future__ import annotations

from typing import Any

from stages._pipeline import Pipeline, Reported, Stage
from stages.synthetic import SyntheticProblem

__all__ = ["synthetic_pipeline"]


def synthetic_pipeline(problem: SyntheticProblem | None = None, *, version: str = "1") -> Pipeline:
    """The synthetic problem as a chain of stages.

    Each stage reads the previous stage's running objective sum (the first reads nothing),
    adds its own negated test function and reports the problem's simulated cost through
    :class:`~stages.Reported`. The sink's output is the objective.

    Args:
        problem: The problem (default ``SyntheticProblem()``: prep -> train -> finetune).
        version: Version of every stage (part of the cache keys).

    Example:
        >>> pipe = synthetic_pipeline()
        >>> pipe.stage_names
        ['prep', 'train', 'finetune']
    """
    problem = problem or SyntheticProblem()
    stages = []
    previous: str | None = None
    for name, section in problem.space_dict().items():
        stages.append(
            Stage(
                func=_stage_function(problem, name, previous),
                name=name,
                inputs=(previous,) if previous else (),
                version=version,
                space=section,
            )
        )
        previous = name
    return Pipeline(stages)


def _stage_function(problem: SyntheticProblem, name: str, previous: str | None) -> Any:
    # Inputs arrive by name, so each stage gets a function whose keyword is the upstream
    # stage's output name; hyperparameters arrive as **params.
    def run(**kwargs: Any) -> Reported[float]:
        upstream = float(kwargs.pop(previous)) if previous else 0.0
        value, cost = problem.run_stage(name, upstream, kwargs)
        return Reported(value, cost=cost)

    run.__name__ = run.__qualname__ = f"synthetic_{name}"
    return run
