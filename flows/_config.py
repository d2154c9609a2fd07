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
    continue_on_failure: bool = False
    output_dir: str = "outputs"
    progress: bool = True
    max_trials: int | None = None

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
        pipeline = PipelineConfig(
            name=str(_require(pipe, "name", "pipeline.")),
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
        storage = StorageConfig(url=url, options=dict(store.get("options") or {}))
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
            continue_on_failure=cfg.get("continue_on_failure", False),
            output_dir=str(cfg.get("output_dir") or f"outputs/{study}"),
            progress=cfg.get("progress", True),
            max_trials=max_trials,
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
            },
            "optimizer": {
                "method": self.method,
                "options": self.method_options,
                "max_prefixes": self.max_prefixes,
            },
            "storage": {"url": self.storage.url},
            "budget": self.budget,
            "seed": self.seed,
            "n_init": self.n_init,
            "retries": self.retries,
            "retry_delay_seconds": self.retry_delay_seconds,
            "continue_on_failure": self.continue_on_failure,
            "output_dir": self.output_dir,
            "progress": self.progress,
            "max_trials": self.max_trials,
        }
