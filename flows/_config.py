"""The study configuration, validated once at the boundary into typed objects.

Hydra composes YAML into a DictConfig; :func:`StudyConfig.from_mapping` turns it (or a plain
dict) into frozen dataclasses, raising :class:`ConfigError` with a one-line message that
names the offending key and the rule. Inner code never sees a DictConfig.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from eeipu import METHODS, EEIPUError, SearchSpace

__all__ = ["ConfigError", "PipelineConfig", "StorageConfig", "StudyConfig"]

_STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class ConfigError(EEIPUError, ValueError):
    """A configuration value breaks a rule."""


def _require(cfg: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in cfg or cfg[key] is None:
        raise ConfigError(f"`{where}{key}` is required but missing")
    return cfg[key]


def _number(value: Any, key: str, *, positive: bool = False, integer: bool = False) -> Any:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if ok and integer:
        ok = float(value).is_integer()
    if ok:
        ok = math.isfinite(value) and (value > 0 if positive else True)
    if not ok:
        rule = "a positive " if positive else "a "
        rule += "integer" if integer else "number"
        raise ConfigError(f"`{key}` must be {rule}, but got {value!r}")
    return int(value) if integer else float(value)


@dataclass(frozen=True)
class PipelineConfig:
    """Which pipeline to build and how: ``target`` is ``module:function`` (or dotted)
    returning a ``stages.Pipeline``, called with ``kwargs``; ``space`` (optional) replaces
    the stages' declared search-space sections."""

    name: str
    target: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    space: dict[str, dict[str, dict[str, Any]]] | None = None
    metric: str | None = None
    direction: str = "maximize"
    stage_tags: dict[str, list[str]] = field(default_factory=dict)

    def factory(self) -> Any:
        module_name, _, attr = self.target.replace(":", ".").rpartition(".")
        try:
            module = importlib.import_module(module_name)
            return getattr(module, attr)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ConfigError(
                f"`pipeline.target` must name an importable function, but {self.target!r} "
                f"could not be loaded ({exc})"
            ) from exc


@dataclass(frozen=True)
class StorageConfig:
    """Where the cache and the study journals live: a local folder or an fsspec URL."""

    url: str
    options: dict[str, Any] = field(default_factory=dict)
    max_bytes: int | None = None
    retry_seconds: float = 30.0

    @property
    def protocol(self) -> str:
        return self.url.split("://", 1)[0] if "://" in self.url else "file"


@dataclass(frozen=True)
class StudyConfig:
    """A whole study: pipeline, optimizer, storage, budget and outputs."""

    study: str
    pipeline: PipelineConfig
    method: str
    method_options: dict[str, Any]
    storage: StorageConfig
    budget: float
    seed: int = 0
    n_init: int = 10
    max_prefixes: int = 8
    retries: int = 0
    retry_delay_seconds: float = 0.0
    continue_on_failure: bool = True
    max_failures_in_a_row: int = 5
    output_dir: str = "outputs"
    progress: bool = True
    max_trials: int | None = None
    warm_start: tuple[str, ...] = ()
    extra_budget: float | None = None
    parallel: int = 1
    work_pool: str = "eeipu"

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> StudyConfig:
        """Validate a composed config (plain mapping; resolve a DictConfig first)."""
        if not isinstance(cfg, Mapping):
            raise ConfigError(f"the configuration must be a mapping, but got {type(cfg).__name__}")
        study = str(_require(cfg, "study", ""))
        if not _STUDY_NAME.match(study):
            raise ConfigError(
                "`study` must be 1-100 letters, digits, '_', '.' or '-' (starting with a letter "
                f"or digit), but got {study!r}"
            )
        pipe = _require(cfg, "pipeline", "")
        if not isinstance(pipe, Mapping):
            raise ConfigError(f"`pipeline` must be a mapping, but got {pipe!r}")
        direction = pipe.get("direction", "maximize")
        if direction not in ("maximize", "minimize"):
            raise ConfigError(
                f"`pipeline.direction` must be 'maximize' or 'minimize', but got {direction!r}"
            )
        space = pipe.get("space")
        if space is not None:
            if not isinstance(space, Mapping):
                raise ConfigError(f"`pipeline.space` must map stage -> parameters, got {space!r}")
            try:
                SearchSpace.from_dict(space)
            except EEIPUError as exc:
                raise ConfigError(f"`pipeline.space`: {exc}") from exc
            space = {s: {p: dict(spec) for p, spec in sec.items()} for s, sec in space.items()}
        kwargs = pipe.get("kwargs") or {}
        if not isinstance(kwargs, Mapping):
            raise ConfigError(f"`pipeline.kwargs` must be a mapping, but got {kwargs!r}")
        stage_tags = pipe.get("stage_tags") or {}
        if not isinstance(stage_tags, Mapping) or not all(
            isinstance(v, list | tuple) and all(isinstance(t, str) for t in v)
            for v in stage_tags.values()
        ):
            raise ConfigError(
                f"`pipeline.stage_tags` must map stage -> list of tags, e.g. {{train: [gpu]}}, but got {stage_tags!r}"
            )
        pipeline = PipelineConfig(
            name=str(_require(pipe, "name", "pipeline.")),
            stage_tags={str(k): [str(t) for t in v] for k, v in stage_tags.items()},
            target=str(_require(pipe, "target", "pipeline.")),
            kwargs=dict(kwargs),
            space=space,
            metric=pipe.get("metric"),
            direction=direction,
        )
        opt = _require(cfg, "optimizer", "")
        if not isinstance(opt, Mapping):
            raise ConfigError(f"`optimizer` must be a mapping, but got {opt!r}")
        method = _require(opt, "method", "optimizer.")
        if method not in METHODS:
            raise ConfigError(
                f"`optimizer.method` must be one of {sorted(METHODS)}, but got {method!r}"
            )
        options = opt.get("options") or {}
        if not isinstance(options, Mapping):
            raise ConfigError(f"`optimizer.options` must be a mapping, but got {options!r}")
        store = _require(cfg, "storage", "")
        if not isinstance(store, Mapping):
            raise ConfigError(f"`storage` must be a mapping, but got {store!r}")
        url = _require(store, "url", "storage.")
        if not isinstance(url, str) or not url.strip():
            raise ConfigError(f"`storage.url` must be a folder or URL, but got {url!r}")
        max_bytes = store.get("max_bytes")
        if max_bytes is not None:
            from flows._eviction import parse_bytes

            try:
                max_bytes = parse_bytes(max_bytes)
            except ValueError:
                raise ConfigError(
                    "`storage.max_bytes` must be a positive size in bytes (5000000) or with a "
                    f"unit (500MB, 2GiB), but got {max_bytes!r}"
                ) from None
        retry_seconds = _number(store.get("retry_seconds", 30.0), "storage.retry_seconds")
        if retry_seconds < 0:
            raise ConfigError(f"`storage.retry_seconds` must be >= 0, but got {retry_seconds}")
        storage = StorageConfig(
            url=url,
            options=dict(store.get("options") or {}),
            max_bytes=max_bytes,
            retry_seconds=retry_seconds,
        )
        if storage.protocol == "s3" and not re.match(
            r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$", url
        ):
            raise ConfigError(
                f"`storage.url` must look like s3://bucket/prefix (a valid bucket name), but got {url!r}"
            )
        retries = _number(cfg.get("retries", 0), "retries", integer=True)
        if retries < 0:
            raise ConfigError(f"`retries` must be >= 0, but got {retries}")
        seed = _number(cfg.get("seed", 0), "seed", integer=True)
        if seed < 0:
            raise ConfigError(f"`seed` must be >= 0, but got {seed}")
        max_prefixes = _number(opt.get("max_prefixes", 8), "optimizer.max_prefixes", integer=True)
        if max_prefixes < 0:
            raise ConfigError(f"`optimizer.max_prefixes` must be >= 0, but got {max_prefixes}")
        delay = _number(cfg.get("retry_delay_seconds", 0.0), "retry_delay_seconds")
        if delay < 0:
            raise ConfigError(f"`retry_delay_seconds` must be >= 0, but got {delay}")
        max_trials = cfg.get("max_trials")
        if max_trials is not None:
            max_trials = _number(max_trials, "max_trials", positive=True, integer=True)
        warm_start = _warm_start(cfg.get("warm_start"), study)
        extra_budget = cfg.get("extra_budget")
        if extra_budget is not None:
            extra_budget = _number(extra_budget, "extra_budget", positive=True)
        parallel = _number(cfg.get("parallel", 1), "parallel", positive=True, integer=True)
        work_pool = cfg.get("work_pool") or "eeipu"
        if not isinstance(work_pool, str) or not _STUDY_NAME.match(work_pool):
            raise ConfigError(f"`work_pool` must be a work pool name, but got {work_pool!r}")
        max_failures = _number(
            cfg.get("max_failures_in_a_row", 5),
            "max_failures_in_a_row",
            positive=True,
            integer=True,
        )
        for flag in ("continue_on_failure", "progress"):
            if not isinstance(cfg.get(flag, False), bool):
                raise ConfigError(f"`{flag}` must be true or false, but got {cfg.get(flag)!r}")
        return cls(
            study=study,
            pipeline=pipeline,
            method=method,
            method_options=dict(options),
            storage=storage,
            budget=_number(_require(cfg, "budget", ""), "budget", positive=True),
            seed=seed,
            n_init=_number(cfg.get("n_init", 10), "n_init", positive=True, integer=True),
            max_prefixes=max_prefixes,
            retries=retries,
            retry_delay_seconds=delay,
            continue_on_failure=cfg.get("continue_on_failure", True),
            max_failures_in_a_row=max_failures,
            output_dir=str(cfg.get("output_dir") or f"outputs/{study}"),
            progress=cfg.get("progress", True),
            max_trials=max_trials,
            warm_start=warm_start,
            extra_budget=extra_budget,
            parallel=parallel,
            work_pool=work_pool,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (storage options are left out: they may hold credentials)."""
        return {
            "study": self.study,
            "pipeline": {
                "name": self.pipeline.name,
                "target": self.pipeline.target,
                "kwargs": self.pipeline.kwargs,
                "space": self.pipeline.space,
                "metric": self.pipeline.metric,
                "direction": self.pipeline.direction,
                "stage_tags": self.pipeline.stage_tags,
            },
            "optimizer": {
                "method": self.method,
                "options": self.method_options,
                "max_prefixes": self.max_prefixes,
            },
            "storage": {
                "url": self.storage.url,
                "max_bytes": self.storage.max_bytes,
                "retry_seconds": self.storage.retry_seconds,
            },
            "budget": self.budget,
            "seed": self.seed,
            "n_init": self.n_init,
            "retries": self.retries,
            "retry_delay_seconds": self.retry_delay_seconds,
            "continue_on_failure": self.continue_on_failure,
            "max_failures_in_a_row": self.max_failures_in_a_row,
            "output_dir": self.output_dir,
            "progress": self.progress,
            "max_trials": self.max_trials,
            "warm_start": list(self.warm_start),
            "extra_budget": self.extra_budget,
            "parallel": self.parallel,
            "work_pool": self.work_pool,
        }


def _warm_start(value: Any, study: str) -> tuple[str, ...]:
    """``warm_start``: names of earlier studies on the same storage (a list, maybe empty)."""
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ConfigError(
            f"`warm_start` must be a list of study names, e.g. warm_start=[old-study], but got {value!r}"
        )
    names = tuple(str(v) for v in value)
    for name in names:
        if not _STUDY_NAME.match(name):
            raise ConfigError(f"`warm_start` must hold study names, but got {name!r}")
    if study in names:
        raise ConfigError(f"`warm_start` must not name the study itself ({study!r})")
    if len(set(names)) != len(names):
        raise ConfigError(f"`warm_start` names a study twice: {list(names)}")
    return names
