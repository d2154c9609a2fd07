"""Run one configuration through a pipeline, stage by stage, as Prefect tasks."""

from __future__ import annotations

import logging
import numbers
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from prefect.utilities.annotations import quote

from stages._errors import StageError, StoreError, StoreUnavailable
from stages._pipeline import Params, Pipeline
from stages._prefect import (
    PlannedHitMissing,
    StageOutput,
    forget_entered,
    load_started,
    stage_task,
    was_entered,
)
from stages._store import Store

__all__ = ["TrialResult", "run_pipeline"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialResult:
    """What one configuration cost and produced.

    Attributes:
        objective: The sink's objective (``Pipeline.metric`` entry when it returns a dict).
        costs: ``{stage: cost}``. A stage that ran costs its reported cost, else its
            function's wall-clock seconds; a cache hit costs its measured load time (from
            the start of its payload read to the end of its task: the read, the checksum
            and the unpickling, not Prefect's set-up of the task run); a skipped stage
            (``lazy=True`` only) costs 0.
        cached: ``{stage: bool}``, True for cache hits and skipped stages.
        keys: ``{stage: Merkle cache key}``.
        seconds: ``{stage: wall-clock seconds}`` of each stage's Prefect task (0 if skipped).
        output: The sink's raw output (e.g. a dict of all metrics; see ``metrics``).
        skipped: Stages neither run nor loaded, because everything downstream of them
            was loaded from the cache (``lazy=True`` only).
        adopted: Stages loaded from entries that an interrupted earlier attempt of this
            same trial stored (``adopt_after``): charged their compute cost, not cached.
    """

    objective: float
    costs: dict[str, float]
    cached: dict[str, bool]
    keys: dict[str, str]
    seconds: dict[str, float]
    output: Any = None
    skipped: frozenset[str] = field(default_factory=frozenset)
    adopted: frozenset[str] = field(default_factory=frozenset)

    @property
    def cached_stages(self) -> frozenset[str]:
        """Names of the stages that did not run."""
        return frozenset(s for s, hit in self.cached.items() if hit)

    @property
    def total_cost(self) -> float:
        return float(sum(self.costs.values()))

    @property
    def metrics(self) -> dict[str, float]:
        """Every scalar the sink returned, by name, when it returns a mapping (the
        objective's entry among them); ``{}`` when it returns a bare number."""
        if not isinstance(self.output, Mapping):
            return {}
        return {
            str(k): v for k, v in ((k, _scalar(v)) for k, v in self.output.items()) if v is not None
        }


def _scalar(value: Any) -> float | None:
    """``value`` as a float when it is a real number (numpy and 0-d tensors included)."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        item = value.item()
        return float(item) if isinstance(item, numbers.Real) else None
    return None


class _Replan(Exception):
    """A planned cache hit vanished before it was loaded: run again without skipping."""


def run_pipeline(
    pipeline: Pipeline,
    params: Params,
    store: Store,
    *,
    retries: int = 0,
    retry_delay_seconds: float = 0.0,
    lazy: bool = False,
    adopt_after: float | None = None,
) -> TrialResult:
    """Run one configuration; every stage is a Prefect task cached in ``store``.

    Works inside a Prefect flow (the trial subflow) and outside one. A stage whose Merkle
    key is in the store is loaded (Prefect reports its task run as ``Cached``); others run
    and are stored.

    Args:
        pipeline: The pipeline.
        params: ``{stage: {param: value}}`` for every stage with hyperparameters.
        store: Where stage results live.
        retries: Prefect task retries per stage.
        retry_delay_seconds: Prefect's wait between a stage's retries.
        lazy: Skip loading cached stages whose output nothing needs (upstream of another
            cache hit). Saves downloads of large intermediates; skipped stages cost 0.
        adopt_after: Re-running a trial whose first attempt was interrupted (a crash):
            entries of this trial written at or after this time (``time.time()``) were
            computed by that attempt, so they are charged their recorded compute cost and
            reported as run, not cached. The trial then costs what it would have cost
            without the crash, and nothing stored is computed twice.

    Returns:
        The :class:`TrialResult`.

    Raises:
        ValueError: ``params`` do not fit the pipeline's search space.
        StageError: A stage failed (or the sink returned no objective); carries the stage,
            its key and the costs spent so far, with the cause chained.
        StoreUnavailable: The storage stayed unreachable through its retries.

    Example:
        >>> from stages import Pipeline, Store, stage, run_pipeline  # doctest: +SKIP
        >>> store = Store(".eeipu/cache")  # doctest: +SKIP
        >>> result = run_pipeline(pipe, {"score": {"w": 0.5}}, store)  # doctest: +SKIP
        >>> result.objective, result.cached  # doctest: +SKIP
    """
    keys = pipeline.keys(params)
    own = {s.name: s.normalize(params.get(s.name)) for s in pipeline.stages}
    if lazy:
        try:
            return _run(
                pipeline,
                own,
                keys,
                store,
                (retries, retry_delay_seconds),
                _plan(pipeline, keys, store),
                adopt_after,
            )
        except _Replan:
            logger.info("a cache entry vanished while the trial ran; running it again in full")
    return _run(pipeline, own, keys, store, (retries, retry_delay_seconds), None, adopt_after)


def _plan(pipeline: Pipeline, keys: Mapping[str, str], store: Store) -> tuple[set[str], set[str]]:
    """(needed, hits): walk back from the sink; a hit's inputs are not needed for it."""
    needed, hits = {pipeline.sink.name}, set()
    for s in reversed(pipeline.stages):
        if s.name not in needed:
            continue
        if store.exists(keys[s.name]):
            hits.add(s.name)
        else:
            needed.update(u.name for u in pipeline.upstream(s.name))
    return needed, hits


def _run(
    pipeline: Pipeline,
    own: Mapping[str, dict[str, Any]],
    keys: Mapping[str, str],
    store: Store,
    retries: tuple[int, float],
    plan: tuple[set[str], set[str]] | None,
    adopt_after: float | None = None,
) -> TrialResult:
    values: dict[str, Any] = {}  # by output name
    costs: dict[str, float] = {}
    seconds: dict[str, float] = {}
    cached: dict[str, bool] = {}
    skipped: set[str] = set()
    adopted: set[str] = set()
    for s in pipeline.stages:
        key = keys[s.name]
        if plan is not None and s.name not in plan[0]:
            costs[s.name], seconds[s.name], cached[s.name] = 0.0, 0.0, True
            skipped.add(s.name)
            continue
        expect_hit = plan is not None and s.name in plan[1]
        inputs = None if expect_hit else quote({i: values[i] for i in s.inputs})
        task = stage_task(
            s,
            store,
            retries=retries[0],
            retry_delay_seconds=retries[1],
            task_run_name=f"{s.name}-{key[:8]}",
        )
        start = time.perf_counter()
        for attempt in range(2):
            forget_entered(key)
            state = task(
                params=own[s.name],
                input_keys=[keys[u.name] for u in pipeline.upstream(s.name)],
                inputs=inputs,
                return_state=True,
            )
            if attempt == 0 and not state.is_completed():
                exc = state.result(raise_on_failure=False)
                if isinstance(exc, StoreUnavailable):
                    raise exc  # the storage is down: not the stage's fault, not corruption
                load_failed = isinstance(exc, StoreError) or not was_entered(key)
                if load_failed and store.exists(key):
                    # A stored entry that fails its checksum (bit flips, truncation) or does
                    # not load (another version's pickle) is never returned: report it, drop
                    # it, recompute.
                    logger.warning(
                        "cache entry of stage %r (key %s) is unreadable (%s); recomputing it",
                        s.name,
                        key,
                        exc,
                    )
                    store.delete(key)
                    if inputs is None:
                        raise _Replan from exc
                    continue
            break
        end = time.perf_counter()
        wall = end - start
        seconds[s.name] = wall
        if not state.is_completed():
            exc = state.result(raise_on_failure=False)
            if isinstance(exc, PlannedHitMissing):
                raise _Replan from exc
            if isinstance(exc, StoreUnavailable):
                raise exc
            costs[s.name] = wall
            cause = f"{type(exc).__name__}: {exc}"
            raise StageError(
                f"stage {s.name!r} failed (key {key}): {cause}",
                stage=s.name,
                key=key,
                costs=costs,
                seconds=seconds,
                cause=cause,
                cached=[n for n, hit in cached.items() if hit],
            ) from (exc if isinstance(exc, BaseException) else None)
        out: StageOutput = state.result()
        hit = state.name == "Cached"
        if hit and adopt_after is not None and _written_since(store, key, adopt_after):
            hit = False
            adopted.add(s.name)
        cached[s.name] = hit
        if hit:
            began = load_started(key)
            load = wall if began is None or began < start else end - began
            costs[s.name] = load if pipeline.load_cost is None else pipeline.load_cost
        else:
            costs[s.name] = out.cost  # a loaded StageOutput keeps the cost of its run
        values[s.output] = out.value
        logger.debug(
            "stage %s key %s %s in %.3fs", s.name, key[:12], "loaded" if hit else "ran", wall
        )
    sink = pipeline.sink
    try:
        objective = pipeline.objective(values[sink.output])
    except ValueError as exc:
        raise StageError(
            f"stage {sink.name!r} produced no objective (key {keys[sink.name]}): {exc}",
            stage=sink.name,
            key=keys[sink.name],
            costs=costs,
            seconds=seconds,
            cause=f"produced no objective: {exc}",
            cached=[n for n, hit in cached.items() if hit],
        ) from exc
    return TrialResult(
        objective=objective,
        costs=costs,
        cached=cached,
        keys=dict(keys),
        seconds=seconds,
        output=values[sink.output],
        skipped=frozenset(skipped),
        adopted=frozenset(adopted),
    )


def _written_since(store: Store, key: str, since: float) -> bool:
    try:
        written = store.read_meta(key).get("eeipu", {}).get("written_at")
    except KeyError:
        return False
    return written is not None and float(written) >= since
