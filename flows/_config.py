"""The study configuration, validated once at the boundary into typed objects.

Hydra composes YAML into a DictConfig; :func:`StudyConfig.from_mapping` turns it (or a plain
dict) into frozen pydantic models shaped like the YAML (``cfg.optimizer.method`` is
``optimizer.method``), raising :class:`ConfigError` with a one-line message that names the
offending key and the rule. Inner code never sees a DictConfig. ``cfg.model_dump(mode="json")``
is the JSON-ready view (flow parameters, journals); it leaves out ``storage.options``, which
may hold credentials.

Example:
    >>> cfg = StudyConfig.from_mapping({
    ...     "study": "demo", "budget": 50, "storage": {"url": ".eeipu/cache"},
    ...     "optimizer": {"method": "ei"},
    ...     "pipeline": {"name": "synthetic", "target": "stages.testing.synthetic_pipeline"},
    ... })
    >>> cfg.optimizer.method, cfg.budget, cfg.output_dir, cfg.executor
    ('ei', 50.0, 'outputs/demo', 'auto')
"""

from __future__ import annotations

import difflib
import logging
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Annotated, Any, Literal, get_args

from hydra.utils import get_method
from pydantic import (
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WrapValidator,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from eeipu import METHOD_OPTIONS, EEIPUError, SearchSpace, unknown_option_hint

__all__ = [
    "ConfigError",
    "OptimizerConfig",
    "PipelineConfig",
    "StorageConfig",
    "StudyConfig",
    "hydra_error",
]

_STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_S3_URL = re.compile(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$")
Executor = Literal["auto", "local", "work_pool", "task_workers"]


class ConfigError(EEIPUError, ValueError):
    """A configuration value breaks a rule."""


# ---------------------------------------------------------------------- rules
# A rule's message is what follows the key: "must be ..., but got ..."; the key comes from
# pydantic's error location (see `_one_line`). Messages travel in the context, not in the
# template, so braces in them ("{train: [gpu]}") are not read as placeholders.
def _broken(message: str) -> PydanticCustomError:
    return PydanticCustomError("eeipu_config", "{message}", {"message": message})


def _rule(ok: Callable[[Any], bool], rule: str) -> BeforeValidator:
    """Accept a value as given when ``ok(value)``; else "must be <rule>, but got <value>"."""

    def check(value: Any) -> Any:
        if not ok(value):
            raise _broken(f"must be {rule}, but got {value!r}")
        return value

    check.__doc__ = f"must be {rule}"  # the rule, as the configuration reference shows it
    return BeforeValidator(check)


def _one_of(choices: tuple[Any, ...]) -> BeforeValidator:
    return _rule(lambda v: v in choices, f"one of {list(choices)}")


def _number(
    *, integer: bool = False, positive: bool = False, non_negative: bool = False
) -> BeforeValidator:
    """A real int or float (never a bool or a string); ``integer`` also takes 3.0 as 3.
    ``None`` passes through: only optional fields admit it."""
    kind = ("a positive " if positive else "an " if integer else "a ") + (
        "integer" if integer else "number"
    )

    def check(value: Any) -> Any:
        if value is None:
            return None
        try:
            ok = (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and math.isfinite(value)
                and (not integer or float(value).is_integer())
                and (value > 0 or not positive)
            )
        except OverflowError:
            ok = False
        if not ok:
            raise _broken(f"must be {kind}, but got {value!r}")
        if non_negative and value < 0:
            raise _broken(f"must be >= 0, but got {value!r}")
        return int(value) if integer else float(value)

    check.__doc__ = f"must be {kind}" + (" >= 0" if non_negative else "")
    return BeforeValidator(check)


def _mapping(value: Any) -> dict[str, Any]:
    """A mapping; null (or empty) means ``{}``."""
    if not value:
        return {}
    if not isinstance(value, Mapping):
        raise _broken(f"must be a mapping, but got {value!r}")
    return dict(value)


def _positive_size(value: Any, handler: Callable[[Any], Any]) -> Any:
    """must be a positive size in bytes (``5000000``) or with a unit (``500MB``, ``2GiB``):
    pydantic's ByteSize, but positive and never a bool"""
    if value is None:
        return None
    try:
        size = None if isinstance(value, bool) else handler(value)
    except ValidationError:
        size = None
    if not size:
        raise _broken(
            "must be a positive size in bytes (5000000) or with a unit (500MB, 2GiB), "
            f"but got {value!r}"
        )
    return size


_Text = Annotated[str, BeforeValidator(str)]
_Mapping = Annotated[dict[str, Any], BeforeValidator(_mapping)]
_Count = Annotated[int, _number(integer=True, non_negative=True)]
_Positive = Annotated[int, _number(integer=True, positive=True)]
_Seconds = Annotated[float, _number(non_negative=True)]
_Flag = Annotated[bool, _rule(lambda v: isinstance(v, bool), "true or false")]
#: A positive number of bytes: an int, or a string with a unit (pydantic's ByteSize).
Bytes = Annotated[ByteSize, WrapValidator(_positive_size)]


class _Section(BaseModel):
    """A frozen section of the YAML; an unknown key is refused (a typo must not be a silent
    default), and a null where a value is required counts as missing (Hydra writes ``null``
    for an unset key)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _nulls_are_missing(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        fields = cls.model_fields
        return {
            k: v
            for k, v in data.items()
            if not (v is None and k in fields and fields[k].is_required())
        }


# ---------------------------------------------------------------------- sections
class PipelineConfig(_Section):
    """Which pipeline to build and how: ``target`` is ``module:function`` (or dotted)
    returning a ``stages.Pipeline``, called with ``kwargs`` (which join every stage's cache
    key); ``space`` (optional) replaces the stages' declared search-space sections;
    ``fixed`` (``{stage: {param: value}}``) pins parameters: a pinned one leaves the search
    space, is passed to the stage function and joins its cache key."""

    name: _Text
    """The pipeline's name, as in the default study name ``<pipeline>-<method>-seed<seed>``."""
    target: _Text
    """The function that builds the pipeline: ``module:function`` or ``module.function``."""
    kwargs: _Mapping = {}
    """Keyword arguments of ``target``; they join every stage's cache key."""
    space: dict[str, dict[str, dict[str, Any]]] | None = None
    """``{stage: {param: spec}}`` in place of the stages' declared search space (a spec as
    in :meth:`eeipu.SearchSpace.from_dict`)."""
    metric: str | None = None
    """The key of the objective where the last stage returns a dict of metrics."""
    direction: Annotated[
        Literal["maximize", "minimize"],
        _rule(lambda v: v in ("maximize", "minimize"), "'maximize' or 'minimize'"),
    ] = "maximize"
    """Whether a larger or a smaller objective is better."""
    stage_tags: dict[str, list[str]] = {}
    """``{stage: [tag, ...]}``: Prefect tags added to those stages' tasks (e.g. ``gpu``); not
    part of the cache key."""
    fixed: dict[str, dict[str, Any]] = {}
    """``{stage: {param: value}}``: pinned parameters, passed to the stage and joined to its
    cache key, and out of the search space (``eeipu best`` writes this section)."""

    @field_validator("fixed", mode="before")
    @classmethod
    def _fixed(cls, fixed: Any) -> Any:
        """must map stage -> parameter -> value"""
        fixed = fixed or {}
        if not isinstance(fixed, Mapping) or not all(
            isinstance(v, Mapping) for v in fixed.values()
        ):
            raise _broken(
                f"must map stage -> parameter -> value, e.g. {{train: {{lr: 0.01}}}}, "
                f"but got {fixed!r}"
            )
        return {str(s): {str(p): v for p, v in sec.items()} for s, sec in fixed.items()}

    @field_validator("space", mode="before")
    @classmethod
    def _space(cls, space: Any) -> Any:
        """must be a valid search space (:meth:`eeipu.SearchSpace.from_dict`)"""
        if space is None:
            return None
        if not isinstance(space, Mapping):
            raise _broken(f"must map stage -> parameters, got {space!r}")
        try:
            SearchSpace.from_dict(space)
        except EEIPUError as exc:
            raise _broken(f": {exc}") from exc
        return {s: {p: dict(spec) for p, spec in sec.items()} for s, sec in space.items()}

    @field_validator("stage_tags", mode="before")
    @classmethod
    def _stage_tags(cls, tags: Any) -> Any:
        """must map stage -> list of tags"""
        tags = tags or {}
        if not isinstance(tags, Mapping) or not all(
            isinstance(v, list | tuple) and all(isinstance(t, str) for t in v)
            for v in tags.values()
        ):
            raise _broken(
                f"must map stage -> list of tags, e.g. {{train: [gpu]}}, but got {tags!r}"
            )
        return {str(k): list(v) for k, v in tags.items()}

    def factory(self) -> Callable[..., Any]:
        """The function ``target`` names (Hydra's ``get_method``)."""
        # Hydra logs a failed lookup (several lines) before raising it; we say it in one.
        hydra_log = logging.getLogger("hydra.utils")
        hydra_log.addFilter(_drop)
        try:
            return get_method(self.target.replace(":", "."))
        except (ImportError, ValueError) as exc:
            reason = " ".join(str(exc.__cause__ or exc).split())
            raise ConfigError(
                f"`pipeline.target` must name an importable function, but {self.target!r} "
                f"could not be loaded ({reason})"
            ) from exc
        finally:
            hydra_log.removeFilter(_drop)


def _drop(record: logging.LogRecord) -> bool:
    return False


class OptimizerConfig(_Section):
    """The method (a name in ``eeipu.METHODS``), its options, and the prefix-pool size."""

    method: str
    """A registered method: ``eeipu``, ``ei``, ``eips``, ``carbo``, ``ms_carbo``, ``ms_bo``,
    ``lambo``, ``random``, or one added with :func:`eeipu.register_method`."""
    max_prefixes: _Count = 24
    """Size cap of the prefix pool: the cached stage prefixes whose candidates an ``ask()``
    screens (``max_prefixes`` of :class:`eeipu.Optimizer`)."""
    options: _Mapping = {}
    """The method's keyword options (:data:`eeipu.METHOD_OPTIONS` lists each method's)."""

    @field_validator("method", mode="before")
    @classmethod
    def _method(cls, method: Any) -> Any:
        """must be a registered method (:data:`eeipu.METHOD_OPTIONS`)"""
        names = sorted(METHOD_OPTIONS)  # every registered method, without importing torch
        if method not in names:
            raise _broken(f"must be one of {names}, but got {method!r}")
        return method

    @field_validator("options")
    @classmethod
    def _options(cls, options: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """must be options the method uses (:data:`eeipu.METHOD_OPTIONS`); their values are
        checked when the method is built"""
        method = info.data.get("method")
        kind = METHOD_OPTIONS.get(method) if method else None
        known = {f.name for f in fields(kind)} if kind else None
        for key in options:
            if known is not None and key not in known:
                raise PydanticCustomError(
                    "eeipu_unknown",
                    "{message}",
                    {
                        "key": str(key),
                        "message": f": method {method!r} does not use it"
                        + unknown_option_hint(method, str(key)),
                    },
                )
        return options


class StorageConfig(_Section):
    """Where the cache and the study journals live: a local folder or an fsspec URL.

    ``options`` (fsspec storage options, maybe credentials) is never serialized or shown."""

    url: str
    """A local folder or an fsspec URL (``s3://bucket/prefix``, a valid bucket name) holding
    the stage cache and the study journals."""
    options: Annotated[_Mapping, Field(exclude=True, repr=False)] = {}
    """fsspec storage options (maybe credentials): never serialized, logged or shown."""
    max_bytes: Bytes | None = None
    """A cap on the cached payloads (``5000000``, ``500MB``, ``2GiB``); over it, the entries
    least worth keeping are evicted (docs: Faults, "Bounded cache")."""
    retry_seconds: _Seconds = 30.0
    """Remote storage: retry a failing read or write this long (with backoff), then stop."""

    @field_validator("url", mode="before")
    @classmethod
    def _url(cls, url: Any) -> Any:
        """must be a folder or URL; an ``s3://`` URL must name a valid bucket"""
        if not isinstance(url, str) or not url.strip():
            raise _broken(f"must be a folder or URL, but got {url!r}")
        if url.startswith("s3://") and not _S3_URL.match(url):
            raise _broken(
                f"must look like s3://bucket/prefix (a valid bucket name), but got {url!r}"
            )
        return url

    @property
    def protocol(self) -> str:
        return self.url.split("://", 1)[0] if "://" in self.url else "file"


# ---------------------------------------------------------------------- the study
class StudyConfig(_Section):
    """A whole study: pipeline, optimizer, storage, budget and outputs, as in
    ``flows/conf/config.yaml``. Build it with :meth:`from_mapping`."""

    study: Annotated[
        _Text,
        _rule(
            lambda v: bool(_STUDY_NAME.match(str(v))),
            "1-100 letters, digits, '_', '.' or '-' (starting with a letter or digit)",
        ),
    ]
    """The study's name: its journal, outputs and Prefect tags; an existing study resumes."""
    pipeline: PipelineConfig
    """The pipeline section (config group ``pipeline/``)."""
    optimizer: OptimizerConfig
    """The optimizer section (config group ``optimizer/``)."""
    storage: StorageConfig
    """The storage section (config group ``storage/``)."""
    budget: Annotated[float, _number(positive=True)]
    """The total cost budget, warm-up included (stage cost units; seconds for real
    pipelines)."""
    seed: _Count = 0
    """Seeds the warm-up draws and the optimizer: same seed, same candidates."""
    n_init: _Positive = 10
    """Random warm-up trials before the model proposes (the same for every method of a
    seed)."""
    retries: _Count = 0
    """Prefect retries of a failing stage."""
    retry_delay_seconds: _Seconds = 0.0
    """Seconds between those retries."""
    continue_on_failure: _Flag = True
    """Record a failed trial (with its cost) and go on; false: the first failure stops the
    study."""
    charge_overhead: _Flag = False
    """Also charge each trial its ``ask()`` seconds and the wall time outside its stages, so
    that the budget is wall time (where stage costs are seconds)."""
    max_failures_in_a_row: _Positive = 5
    """Stop after this many failed trials in a row (likely a bug, not a region)."""
    output_dir: _Text = ""
    """Where ``results.csv``, ``best.yaml`` and ``best_vs_cost.png`` go; empty or null:
    ``outputs/<study>``."""
    progress: _Flag = True
    """Print one console line per trial."""
    max_trials: Annotated[int | None, _number(integer=True, positive=True)] = None
    """An optional cap on trials: cache hits make trials cheap in budget terms, but each
    still costs an ``ask()`` and orchestration."""
    warm_start: tuple[str, ...] = ()
    """Earlier studies on the same storage (same pipeline and space) whose trials feed the
    models as priors, e.g. ``warm_start=[old-study]``."""
    extra_budget: Annotated[float | None, _number(positive=True)] = None
    """Continue an existing study with ``max(last budget, spent) + extra_budget``; required
    by ``eeipu serve``."""
    parallel: _Positive = 1
    """Trials in flight at a time."""
    work_pool: Annotated[  # before-validators run last-listed first: null -> "eeipu"
        str,
        _rule(lambda v: isinstance(v, str) and bool(_STUDY_NAME.match(v)), "a work pool name"),
        BeforeValidator(lambda v: v or "eeipu"),
    ] = "eeipu"
    """The Prefect work pool whose workers run the trials (``executor=work_pool``)."""
    executor: Annotated[Executor, _one_of(get_args(Executor))] = "auto"
    """How trials run: ``auto`` (in process if ``parallel`` is 1, else ``work_pool``),
    ``local`` (``parallel`` at a time in this process), ``work_pool`` (Prefect workers), or
    ``task_workers`` (warm ``eeipu worker`` processes)."""
    # What the shipped real pipelines' kwargs interpolate (${size}, ${device}).
    size: _Text = "full"
    """The shipped real pipelines' size: ``smoke`` (seconds per trial), ``full``, or
    ``hard`` (ml_stacking, vision_cnn)."""
    device: _Text = "cpu"
    """The shipped real pipelines' torch device: ``cpu`` or ``cuda``."""

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> StudyConfig:
        """Validate a composed config (plain mapping; resolve a DictConfig first).

        Raises:
            ConfigError: One line naming the first offending key and its rule.
        """
        if not isinstance(cfg, Mapping):
            raise ConfigError(f"the configuration must be a mapping, but got {type(cfg).__name__}")
        try:
            return cls.model_validate(cfg)
        except ValidationError as exc:
            raise ConfigError(_one_line(exc)) from exc

    @field_validator("warm_start", mode="before")
    @classmethod
    def _warm_start(cls, value: Any) -> Any:
        """must be a list of study names (maybe empty), none twice, not the study itself"""
        if value is None:
            return ()
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise _broken(
                f"must be a list of study names, e.g. warm_start=[old-study], but got {value!r}"
            )
        names = tuple(str(v) for v in value)
        for name in names:
            if not _STUDY_NAME.match(name):
                raise _broken(f"must hold study names, but got {name!r}")
        if len(set(names)) != len(names):
            raise _broken(f"names a study twice: {list(names)}")
        return names

    @model_validator(mode="before")
    @classmethod
    def _default_output_dir(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and not data.get("output_dir"):
            data = {**data, "output_dir": f"outputs/{data.get('study')}"}
        return data

    @model_validator(mode="after")
    def _not_warm_from_itself(self) -> StudyConfig:
        if self.study in self.warm_start:
            raise _broken(f"`warm_start` must not name the study itself ({self.study!r})")
        return self


def _one_line(exc: ValidationError) -> str:
    """pydantic's first error as "`key` <rule>" (our rules), or in our words (its own); an
    unknown key comes first, since a misspelt key often explains the rest."""
    errors = exc.errors(include_url=False)
    error = next((e for e in errors if e["type"] in _UNKNOWN), errors[0])
    if error["type"] in _UNKNOWN:
        return _unknown_key(error)
    key = ".".join(str(part) for part in error["loc"])
    if error["type"] == "eeipu_config":
        message = error["ctx"]["message"]
    elif error["type"] == "missing":
        message = "is required but missing"
    elif error["type"] in ("model_type", "dict_type"):
        message = f"must be a mapping, but got {error['input']!r}"
    else:  # pydantic's words: "Input should be a valid string"
        message = (
            f"{error['msg'].replace('Input should be', 'must be')}, but got {error['input']!r}"
        )
    if not key:  # a rule on the whole study: the message names its keys
        return message
    return f"`{key}`{'' if message.startswith(':') else ' '}{message}"


_UNKNOWN = ("extra_forbidden", "eeipu_unknown")


def _unknown_key(error: Any) -> str:
    """pydantic's unknown-key error in our words (:func:`_unknown`)."""
    loc = [str(part) for part in error["loc"]]
    if error["type"] == "eeipu_unknown":  # an optimizer option: which the method uses
        return f"unknown key `{'.'.join([*loc, error['ctx']['key']])}`" + error["ctx"]["message"]
    return _unknown(loc)


def _unknown(loc: list[str]) -> str:
    """ "unknown key `pipeline.direciton`; did you mean `pipeline.direction`?" (difflib's
    closest key of that section), else the section's keys."""
    *section, name = loc
    model: Any = StudyConfig
    for part in section:
        model = model.model_fields[part].annotation
    valid = sorted(model.model_fields)
    close = difflib.get_close_matches(name, valid, n=1)
    where = "".join(f"{part}." for part in section)
    if close:
        return f"unknown key `{where}{name}`; did you mean `{where}{close[0]}`?"
    owner = f"`{where[:-1]}`" if section else "a study"
    return f"unknown key `{where}{name}`; the keys of {owner} are {', '.join(valid)}"


def _first_unknown(key: str) -> list[str] | None:
    """The path up to the first part of dotted ``key`` that no section has (None if each
    part is a field, or the path enters a free-form mapping such as ``pipeline.kwargs``)."""
    model: Any = StudyConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not _is_section(model):
            return None
        if part not in model.model_fields:
            return parts[: i + 1]
        model = model.model_fields[part].annotation
    return None


def hydra_error(exc: BaseException, argv: list[str]) -> str | None:
    """One line for an error Hydra raised while composing the config from the command line
    ``argv`` (an unknown config name, key or override), or None if ``exc`` is not one.

    Hydra's own report of these is a block of 5-20 lines (the search path, the options one
    per line) or, for a config group set to what its grammar reads as a number (``nan``,
    ``1``), a traceback.
    """
    from hydra.errors import HydraException, MissingConfigException, OverrideParseException

    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file and exc.options:
        group, _, name = exc.missing_cfg_file.rpartition("/")
        close = difflib.get_close_matches(name, exc.options, n=1)
        return f"no {group} config named {name!r}; " + (
            f"did you mean {close[0]!r}?"
            if close
            else f"the {group} configs are {', '.join(exc.options)} (add yours with "
            f"--config-dir DIR holding {group}/{name}.yaml)"
        )
    if isinstance(exc, OverrideParseException):
        reason = " ".join(exc.message.splitlines()[1:2]) or exc.message
        return f"cannot read the override {exc.override!r} ({reason}); write key=value"
    cause = exc.__cause__
    if isinstance(exc, HydraException) and str(exc).startswith("Could not override"):
        key = str(getattr(cause, "full_key", "") or str(exc).split("'")[1])
        path = _first_unknown(key)
        if path is not None:
            return _unknown(path)
        fix = str(exc).partition("config use ")[2].strip() or f"+{key}=..."
        return f"`{key}` is not in the config; add it with a leading +: {fix}"
    if isinstance(exc, ValueError) and str(exc).startswith("Config group override must be"):
        group, name = _group_set_to_a_value(argv)
        return (
            f"`{group}={name}` must name a config, but Hydra reads {name} as a value; "
            f"quote the name: {group}='{name}' (in a shell: \"{group}='{name}'\")"
        )
    if isinstance(exc, HydraException):
        return " ".join(str(exc).split("\n")[0].split())
    return None


def _group_set_to_a_value(argv: list[str]) -> tuple[str, str]:
    """The first override in ``argv`` that sets a config group (``pipeline``, ``optimizer``,
    ``storage``) to what Hydra's grammar reads as a number, bool or null."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    groups = [k for k, f in StudyConfig.model_fields.items() if _is_section(f.annotation)]
    parser = OverridesParser.create()
    for arg in argv:
        try:
            override = parser.parse_override(arg)
        except Exception:  # not an override (a flag such as -m), or one Hydra reports
            continue
        if override.key_or_group in groups and not isinstance(override.value(), str | list):
            return override.key_or_group, arg.partition("=")[2]
    return "GROUP", "NAME"


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, _Section)
