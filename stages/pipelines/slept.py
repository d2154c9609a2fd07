"""The synthetic pipeline with real wall time: every stage sleeps its simulated cost.

For measuring wall-clock effects (parallel trials on several workers, cache hits): a stage
that runs sleeps ``scale`` seconds per unit of its simulated cost; a cache hit only loads.
Objective, costs and cache keys are those of :func:`stages.pipelines.synthetic_pipeline`
(the sleeping wrapper is part of each stage's code, so the two never share cache entries).

Example:
    >>> pipe = slept_synthetic_pipeline(scale=0.1)
    >>> pipe.stage_names
    ['prep', 'train', 'finetune']
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from stages import Pipeline, Reported
from stages.pipelines.synthetic import synthetic_pipeline

__all__ = ["slept_synthetic_pipeline"]


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
