"""How the optimizer learns what is cached: a one-method protocol.

The pipeline layer implements :class:`CacheView` on top of the real store; without one, the
optimizer uses :class:`HistoryCacheView`, built from its own told trials.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

__all__ = ["CacheView", "HistoryCacheView", "cached_prefix", "canonical_json"]

Params = Mapping[str, Mapping[str, Any]]


def canonical_json(obj: Any) -> str:
    """Canonical JSON of hyperparameters: sorted keys, no spaces, floats by ``repr``.

    Two equal parameter dicts always give the same string, in any process or machine, so
    the string (or its hash) is a stable cache key. Non-finite floats are rejected.

    Example:
        >>> canonical_json({"b": 1, "a": {"lr": 0.1}})
        '{"a":{"lr":0.1},"b":1}'
    """

    def check(o: Any) -> Any:
        if isinstance(o, float) and not math.isfinite(o):
            raise ValueError(f"hyperparameter values must be finite, but got {o!r}")
        if isinstance(o, Mapping):
            return {str(k): check(v) for k, v in o.items()}
        if isinstance(o, list | tuple):
            return [check(v) for v in o]
        return o

    return json.dumps(check(obj), sort_keys=True, separators=(",", ":"), allow_nan=False)


@runtime_checkable
class CacheView(Protocol):
    """What the optimizer asks a cache: is this stage's output stored?

    ``params`` maps each stage name to its hyperparameters, for ``stage`` and every stage
    upstream of it (later stages may be present and must be ignored). The answer must come
    from the store itself; an implementation is free to list the store once and answer many
    questions from that listing (the optimizer calls it many times per ``ask``).
    """

    def is_cached(self, stage: str, params: Params) -> bool:
        """True when the output of ``stage`` for these upstream parameters is stored."""
        ...


def cached_prefix(view: CacheView, stages: Iterable[str], params: Params) -> tuple[str, ...]:
    """The leading run of ``stages`` whose outputs ``view`` holds for these parameters."""
    out: list[str] = []
    for stage in stages:
        if not view.is_cached(stage, params):
            break
        out.append(stage)
    return tuple(out)


class HistoryCacheView:
    """A cache view derived from told trials: a stage is cached when an earlier trial
    completed it with the same hyperparameters for it and all its upstream stages.

    Args:
        stages: Stage names in pipeline (topological) order.
        completed: Parameter dicts (``{stage: {param: value}}``) of trials whose stages all
            completed.
    """

    def __init__(self, stages: Iterable[str], completed: Iterable[Params] = ()) -> None:
        self._stages = list(stages)
        self._keys: set[str] = set()
        for params in completed:
            self.add(params)

    def _key(self, stage: str, params: Params) -> str:
        upto = self._stages[: self._stages.index(stage) + 1]
        return canonical_json([[s, dict(params[s])] for s in upto])

    def add(self, params: Params, stages: Iterable[str] | None = None) -> None:
        """Record that ``stages`` (default: all) ran with these parameters."""
        for stage in self._stages if stages is None else stages:
            self._keys.add(self._key(stage, params))

    def is_cached(self, stage: str, params: Params) -> bool:
        return self._key(stage, params) in self._keys
