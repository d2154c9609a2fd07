"""What every part of a study shares: its context, built once and passed down; its voice.

    StudyContext.build(cfg)  the typed config, its store (with any ``storage.options``), its
                             pipeline and Prefect's view of the store, built once
    build_pipeline(cfg)      call the configured factory, then :func:`configure_pipeline`
    configure_pipeline(p, cfg)  apply the YAML's space, fixed values, metric, tags to ``p``;
                             bind the factory's kwargs into the stages' cache keys
    say(cfg, line)           a progress line: stderr with ``progress``, else the run logger
    run_logger()             Prefect's run logger inside a flow or task, else ``eeipu``'s

The entry point builds the context; the controller flow, the study loop, the executors and
the trial flows it runs in this process receive it as an argument, so a trial subflow gets
the controller's store (with its credentials) and pipeline without either travelling in
flow parameters. A trial in another process (a work-pool or task worker) receives the
serializable config and builds its own context from it (credentials from its environment).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import replace
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, Secret, model_serializer

from flows._config import ConfigError, StudyConfig
from stages import Pipeline, PipelineError, Stage, Store

__all__ = [
    "OBJECT_TARGET",
    "StudyContext",
    "build_pipeline",
    "configure_pipeline",
    "run_logger",
    "say",
]

logger = logging.getLogger("eeipu")

OBJECT_TARGET = "<object>"
"""``pipeline.target`` of a study given a :class:`stages.Pipeline` object, not a factory."""


class StudyContext(BaseModel):
    """One study's shared state: the typed config, the store, the pipeline, and Prefect's
    view of the store (its saved result-storage block), built once by :meth:`build`.

    Passed as an argument to the controller flow, the study loop, the executors and the
    in-process trial flows. As a flow parameter Prefect records only its
    ``{"study", "storage"}`` summary; the storage options it was built with (maybe
    credentials) are a :class:`pydantic.Secret`, never serialized, logged or shown.

    Example:
        >>> cfg = StudyConfig.from_mapping({
        ...     "study": "demo", "budget": 50, "storage": {"url": "/tmp/eeipu-ctx"},
        ...     "optimizer": {"method": "ei"},
        ...     "pipeline": {"name": "synthetic", "target": "stages.testing.synthetic_pipeline"},
        ... })
        >>> ctx = StudyContext.build(cfg)  # doctest: +SKIP
        >>> ctx.pipeline.stage_names, ctx.model_dump()  # doctest: +SKIP
        (['prep', 'train', 'finetune'], {'study': 'demo', 'storage': '/tmp/eeipu-ctx'})
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    config: StudyConfig
    store: Store = Field(repr=False)
    pipeline: Pipeline = Field(repr=False)
    # A stages.PrefectStorage: typed loosely because naming it imports Prefect, which the
    # answers that need no flow (a finished study) never load.
    prefect: Any = Field(repr=False)
    credentials: Secret[dict[str, Any]] = Field(repr=False)

    @classmethod
    def build(
        cls, config: StudyConfig, pipeline: Pipeline | None = None, store: Store | None = None
    ) -> StudyContext:
        """The context of ``config``: its store (``store``, else one made with
        ``storage.options``) and its pipeline (``pipeline`` configured by the YAML's
        sections, else the factory's).

        Raises:
            ConfigError: The pipeline section does not fit the pipeline.
            StoreError: The storage's protocol is unknown or its package is missing.
        """
        from stages import PrefectStorage

        options = dict(config.storage.options)
        if store is None:
            store = Store(config.storage.url, options, retry_seconds=config.storage.retry_seconds)
        built = build_pipeline(config) if pipeline is None else configure_pipeline(pipeline, config)
        return cls(
            config=config,
            store=store,
            pipeline=built,
            prefect=PrefectStorage(store),
            credentials=Secret(options),
        )

    @property
    def portable(self) -> bool:
        """Whether another process can rebuild this context from its config: its pipeline
        comes from a factory (``pipeline.target``), not from an object."""
        return self.config.pipeline.target != OBJECT_TARGET

    def with_config(self, config: StudyConfig) -> StudyContext:
        """This context with ``config`` (same store and pipeline), e.g. a resolved budget."""
        return self.model_copy(update={"config": config})

    @model_serializer
    def _summary(self) -> dict[str, str]:
        # What Prefect records of a context passed as a flow parameter: names only.
        return {"study": self.config.study, "storage": self.store.url}


def build_pipeline(cfg: StudyConfig) -> Pipeline:
    """Call the configured factory, then :func:`configure_pipeline` its pipeline."""
    conf = cfg.pipeline
    factory = conf.factory()
    try:
        pipeline = factory(**conf.kwargs)
    except PipelineError:  # the factory's own one-line verdict (e.g. a Kedro project's)
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"`pipeline.kwargs` do not fit {conf.target}: {exc}") from exc
    return configure_pipeline(pipeline, cfg)


def configure_pipeline(pipeline: Any, cfg: StudyConfig) -> Pipeline:
    """``pipeline`` with the YAML's search space, fixed values, metric and stage tags; the
    factory's kwargs join every stage's cache key.

    Raises:
        ConfigError: ``pipeline`` is not a :class:`stages.Pipeline`, or a section names an
            unknown stage or does not fit it.
    """
    conf = cfg.pipeline
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
