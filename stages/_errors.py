"""The exception family of the pipeline layer."""

from __future__ import annotations

import traceback as _traceback
from collections.abc import Iterable, Mapping

__all__ = [
    "CacheLoadError",
    "PipelineError",
    "PlannedHitMissing",
    "StageError",
    "StoreError",
    "StoreUnavailable",
]


class PipelineError(ValueError):
    """A stage or pipeline definition breaks a rule (raised at construction)."""


class StoreError(RuntimeError):
    """The store holds something it cannot serve: a missing or corrupt entry."""


class StoreUnavailable(StoreError):
    """The storage did not answer (endpoint down, network cut) even after retries with
    backoff. Not the trial's fault: a study stops on it and resumes once storage is back."""


class CacheLoadError(StoreError):
    """A committed cache entry did not load: its sidecar or payload is gone or unreadable, or
    its payload does not unpickle (another code version's). Raised on the load path of a
    stage task, never by the stage function: ``run_pipeline`` drops the entry and runs the
    stage instead."""


class PlannedHitMissing(CacheLoadError):
    """A stage planned as a cache hit (``run_pipeline(lazy=True)``) had to run, but its
    inputs were not loaded: ``run_pipeline`` runs the trial again in full."""


class StageError(RuntimeError):
    """A stage failed while a configuration ran through the pipeline.

    The cause is chained (``raise ... from exc``) and kept in ``__cause__``.

    Attributes:
        stage: Name of the failing stage.
        key: Cache key of the failing stage for this configuration.
        costs: Cost spent per stage before (and including) the failure, so a budget can
            still be charged for a failed trial.
        seconds: Wall-clock seconds per stage, same stages as ``costs``.
        cause: The failure in one line, ``"ExceptionType: message"`` (or the reason the
            stage's output was refused, e.g. a missing metric).
        cached: Stages loaded from the cache before the failure.
    """

    def __init__(
        self,
        message: str,
        *,
        stage: str,
        key: str,
        costs: Mapping[str, float],
        seconds: Mapping[str, float] | None = None,
        cause: str | None = None,
        cached: Iterable[str] = (),
    ) -> None:
        super().__init__(message)
        self.stage = stage
        self.key = key
        self.costs = dict(costs)
        self.seconds = dict(seconds or {})
        self.cause = cause or message
        self.cached = tuple(cached)

    @property
    def reason(self) -> str:
        """Which stage failed and why, in one line: ``"stage 'train': ValueError: ..."``."""
        return f"stage {self.stage!r}: {self.cause}"

    @property
    def traceback(self) -> str:
        """The formatted traceback of the cause (the stage function's frames), else of
        this error."""
        exc = self.__cause__ if self.__cause__ is not None else self
        return "".join(_traceback.format_exception(exc))
