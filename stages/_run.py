"""Run one configuration through a pipeline, stage by stage, as Prefect tasks."""

from __future__ import annotations

import logging
import numbers
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from prefect.utilities.annotations import quote

from stages._errors import PlannedHitMissing, StageError, StoreError, StoreUnavailable
from stages._pipeline import Params, Pipeline, Stage
from stages._prefect import PrefectStorage, StageOutput, stage_task
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
    store: Store | PrefectStorage,
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
        store: Where stage results live; a :class:`~stages.PrefectStorage` of it to share
            its saved Prefect block across calls (a study's trials do).
        retries: Prefect task retries per stage (``retry_delay_seconds`` apart).
        lazy: Skip loading cached stages whose output nothing needs (upstream of another
            cache hit). Saves downloads of large intermediates; skipped stages cost 0.
        adopt_after: Re-running a trial whose first attempt was interrupted (a crash):
            entries of this trial written at or after this time (``time.time()``) are
            charged their recorded compute cost and reported as run, not cached, so the
            trial costs what it would have without the crash.

    Raises:
        ValueError: ``params`` do not fit the pipeline's search space.
        StageError: A stage failed (or the sink returned no objective); carries the stage,
            its key and the costs spent so far, with the cause chained.
        StoreUnavailable: The storage stayed unreachable through its retries.

    Example:
        >>> from stages import Pipeline, Store, stage, run_pipeline  # doctest: +SKIP
        >>> result = run_pipeline(pipe, {"score": {"w": 0.5}}, Store(".eeipu/cache"))  # doctest: +SKIP
        >>> result.objective, result.cached  # doctest: +SKIP
    """
    keys = pipeline.keys(params)
    own = {s.name: s.normalize(params.get(s.name)) for s in pipeline.stages}
    storage = PrefectStorage.of(store)

    def attempt(plan: tuple[set[str], set[str]] | None) -> TrialResult:
        retry = (retries, retry_delay_seconds)
        return _TrialRun(pipeline, keys, own, storage, retry, adopt_after, plan).run()

    if lazy:
        try:
            return attempt(_plan(pipeline, keys, storage.store))
        except _Replan:
            logger.info("a cache entry vanished while the trial ran; running it again in full")
    return attempt(None)


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


def _is_load_failure(exc: Any) -> bool:
    """Whether a failed stage task failed on its load path (its entry did not load): the
    stage function never raises a :class:`StoreError` on our behalf; an outage is not one."""
    return isinstance(exc, StoreError) and not isinstance(exc, StoreUnavailable)


@dataclass
class _TrialRun:
    """One configuration's way through the pipeline: what each stage produced and cost."""

    pipeline: Pipeline
    keys: Mapping[str, str]
    own: Mapping[str, dict[str, Any]]  # each stage's normalized hyperparameters
    storage: PrefectStorage
    retries: tuple[int, float]
    adopt_after: float | None
    plan: tuple[set[str], set[str]] | None = None  # (needed, hits) with lazy=True
    values: dict[str, Any] = field(default_factory=dict)  # by output name
    costs: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    cached: dict[str, bool] = field(default_factory=dict)
    skipped: set[str] = field(default_factory=set)
    adopted: set[str] = field(default_factory=set)

    def run(self) -> TrialResult:
        for s in self.pipeline.stages:
            if self.plan is not None and s.name not in self.plan[0]:
                self.costs[s.name], self.seconds[s.name], self.cached[s.name] = 0.0, 0.0, True
                self.skipped.add(s.name)
            else:
                self._stage(s)
        sink = self.pipeline.sink
        try:
            objective = self.pipeline.objective(self.values[sink.output])
        except ValueError as exc:
            key = self.keys[sink.name]
            raise self._error(
                sink,
                f"stage {sink.name!r} produced no objective (key {key}): {exc}",
                f"produced no objective: {exc}",
            ) from exc
        return TrialResult(
            objective=objective,
            costs=self.costs,
            cached=self.cached,
            keys=dict(self.keys),
            seconds=self.seconds,
            output=self.values[sink.output],
            skipped=frozenset(self.skipped),
            adopted=frozenset(self.adopted),
        )

    def _stage(self, s: Stage) -> None:
        """Run or load stage ``s``; record its output, cost and whether it was cached."""
        key = self.keys[s.name]
        start = time.perf_counter()
        state = self._attempt(s)
        end = time.perf_counter()
        self.seconds[s.name] = end - start
        if not state.is_completed():
            exc = state.result(raise_on_failure=False)
            if isinstance(exc, PlannedHitMissing):
                raise _Replan from exc
            if isinstance(exc, StoreUnavailable):
                raise exc
            self.costs[s.name] = end - start
            cause = f"{type(exc).__name__}: {exc}"
            raise self._error(s, f"stage {s.name!r} failed (key {key}): {cause}", cause) from (
                exc if isinstance(exc, BaseException) else None
            )
        out: StageOutput = state.result()
        hit = state.name == "Cached"
        if hit and self.adopt_after is not None and self._written_since(key):
            hit = False
            self.adopted.add(s.name)
        self.cached[s.name] = hit
        began = self.storage.read_began(key)  # popped whatever it is used for
        if not hit:
            self.costs[s.name] = out.cost  # a loaded StageOutput keeps the cost of its run
        elif self.pipeline.load_cost is not None:
            self.costs[s.name] = self.pipeline.load_cost
        else:
            self.costs[s.name] = end - (start if began is None or began < start else began)
        self.values[s.output] = out.value
        logger.debug(
            "stage %s key %s %s in %.3fs", s.name, key[:12], "loaded" if hit else "ran", end - start
        )

    def _attempt(self, s: Stage) -> Any:
        """The final state of stage ``s``'s task. A stored entry that does not load (fails
        its checksum, another version's pickle) is never returned: it is reported, dropped
        and the stage runs instead."""
        key = self.keys[s.name]
        expect_hit = self.plan is not None and s.name in self.plan[1]
        inputs = None if expect_hit else quote({i: self.values[i] for i in s.inputs})
        task = stage_task(
            s,
            self.storage,
            retries=self.retries[0],
            retry_delay_seconds=self.retries[1],
            task_run_name=f"{s.name}-{key[:8]}",
        )
        input_keys = [self.keys[u.name] for u in self.pipeline.upstream(s.name)]
        for attempt in range(2):
            state = task(
                params=self.own[s.name], input_keys=input_keys, inputs=inputs, return_state=True
            )
            if attempt == 1 or state.is_completed():
                return state
            exc = state.result(raise_on_failure=False)
            if isinstance(exc, StoreUnavailable):
                raise exc  # the storage is down: not the stage's fault, not corruption
            if not (_is_load_failure(exc) and self.storage.store.exists(key)):
                return state
            logger.warning(
                "cache entry of stage %r (key %s) is unreadable (%s); recomputing it",
                s.name,
                key,
                exc,
            )
            self.storage.store.delete(key)
            if inputs is None:
                raise _Replan from exc
        return state

    def _error(self, s: Stage, message: str, cause: str) -> StageError:
        """A :class:`StageError` for stage ``s``, with what the trial spent so far."""
        return StageError(
            message,
            stage=s.name,
            key=self.keys[s.name],
            costs=self.costs,
            seconds=self.seconds,
            cause=cause,
            cached=[n for n, hit in self.cached.items() if hit],
        )

    def _written_since(self, key: str) -> bool:
        try:
            written = self.storage.store.read_meta(key).get("eeipu", {}).get("written_at")
        except KeyError:
            return False
        return written is not None and float(written) >= self.adopt_after
