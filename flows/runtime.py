"""What every part of a study shares in one process: its store, its pipeline, its voice.

    store_for(cfg)       the :class:`stages.Store` of ``cfg.storage`` (one per URL and process)
    pipeline_for(cfg)    the configured pipeline, built once per process
    build_pipeline(cfg)  call the configured factory; apply the YAML's space, fixed values,
                         metric, tags; bind its kwargs into the stages' cache keys
    say(cfg, line)       a progress line: stderr with ``progress``, else the run logger
    run_logger()         Prefect's run logger inside a flow or task, else ``eeipu``'s

The study loop, the executors, the trial flow and the entry points all go through these,
so a trial subflow in the controller's process gets the controller's store (with any
``storage.options``) without credentials travelling in flow parameters.
"""

from __future__ import annotations

import logging
import sys
import threading
from dataclasses import replace
from typing import Any

from flows._config import ConfigError, StudyConfig
from stages import Pipeline, PipelineError, Stage, Store

__all__ = ["build_pipeline", "pipeline_for", "run_logger", "say", "store_for"]

logger = logging.getLogger("eeipu")

_lock = threading.RLock()  # trials on threads (executor=local) look these up too
_stores: dict[str, Store] = {}
_pipelines: dict[str, Pipeline] = {}


def store_for(cfg: StudyConfig) -> Store:
    """The store of ``cfg.storage``: the first call per URL and process creates it (with
    ``storage.options``, which may hold credentials), later calls return the same one."""
    url = cfg.storage.url
    with _lock:
        if url not in _stores:
            _stores[url] = Store(url, cfg.storage.options, retry_seconds=cfg.storage.retry_seconds)
        return _stores[url]


def build_pipeline(cfg: StudyConfig) -> Pipeline:
    """Call the configured factory; apply the YAML search space, metric and stage tags."""
    conf = cfg.pipeline
    factory = conf.factory()
    try:
        pipeline = factory(**conf.kwargs)
    except PipelineError:  # the factory's own one-line verdict (e.g. a Kedro project's)
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"`pipeline.kwargs` do not fit {conf.target}: {exc}") from exc
    if not isinstance(pipeline, Pipeline):
        raise ConfigError(
            f"`pipeline.target` {conf.target} must return a stages.Pipeline, "
            f"but returned {type(pipeline).__name__}"
        )
    if pipeline.direction is not None and pipeline.direction != conf.direction:
        raise ConfigError(
            f"`pipeline.direction` is {conf.direction!r}, but the pipeline {conf.target} "
            f"builds says {pipeline.direction!r}: set pipeline.direction={pipeline.direction}"
        )
    stages = list(pipeline.stages)
    sections = (("space", conf.space), ("stage_tags", conf.stage_tags), ("fixed", conf.fixed))
    for key, section in sections:
        unknown = sorted(set(section or {}) - set(pipeline.stage_names))
        if unknown:
            raise ConfigError(
                f"`pipeline.{key}` names unknown stage(s) {unknown}; stages are {pipeline.stage_names}"
            )
    if conf.space is not None:
        stages = [replace(s, space=conf.space.get(s.name, s.space)) for s in stages]
    if conf.stage_tags:
        stages = [replace(s, tags=(*s.tags, *conf.stage_tags.get(s.name, ()))) for s in stages]
    # The factory's arguments are part of every stage's cache key (Stage.bound): a pipeline
    # built with other kwargs never reads this one's entries.
    stages = [
        _pinned(replace(s, bound=dict(conf.kwargs)), conf.fixed.get(s.name, {})) for s in stages
    ]
    return Pipeline(
        stages,
        metric=conf.metric or pipeline.metric,
        load_cost=pipeline.load_cost,
        direction=pipeline.direction,
    )


def _pinned(stage: Stage, pins: dict[str, Any]) -> Stage:
    """``stage`` with the YAML's ``pipeline.fixed.<stage>`` values: a tuned parameter leaves
    the search space (its value coerced to the declared type); either way the value is
    passed to the function and joins the cache key."""
    if not pins:
        return stage
    space = dict(stage.space)
    fixed = dict(stage.fixed)
    for name, value in pins.items():
        if space.pop(name, None) is not None:
            try:
                value = stage.coerce(name, value)
            except ValueError as exc:
                raise ConfigError(f"`pipeline.fixed.{stage.name}.{name}`: {exc}") from exc
        fixed[name] = value
    try:
        return replace(stage, space=space, fixed=fixed)
    except PipelineError as exc:
        raise ConfigError(f"`pipeline.fixed.{stage.name}`: {exc}") from exc


def pipeline_for(cfg: StudyConfig) -> Pipeline:
    """:func:`build_pipeline`, once per pipeline section and process: the entry point
    builds it to fail fast, the flow and every trial subflow look it up again, and
    factories may be slow (data loading)."""
    key = cfg.pipeline.model_dump_json()
    with _lock:
        if key not in _pipelines:
            if len(_pipelines) >= 8:
                _pipelines.pop(next(iter(_pipelines)))
            _pipelines[key] = build_pipeline(cfg)
        return _pipelines[key]


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """Prefect's run logger inside a flow or task run, else the ``eeipu`` logger."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logger


def say(cfg: StudyConfig, line: str, log: Any = None) -> None:
    """One progress line: on stderr when ``cfg.progress`` (the log gets it at debug level),
    else at info level on ``log`` (default: :func:`run_logger`)."""
    log = run_logger() if log is None else log
    if cfg.progress:
        print(line, file=sys.stderr, flush=True)
        log.debug(line)
    else:
        log.info(line)
