"""Search spaces: ordered stages of typed hyperparameters, encoded to the unit cube.

Encoding uses the *declared* bounds (never the observed ones). Decoding returns canonical
values: ints are Python ints, categoricals are the declared choices, floats are rounded to
12 significant digits and clipped to the bounds. A canonical value survives
``decode(encode(v))`` bit for bit, so cache keys built from decoded values never drift.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from eeipu._errors import SearchSpaceError

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["CategoricalParam", "FloatParam", "IntParam", "Param", "SearchSpace"]

Params = dict[str, dict[str, Any]]
_KNOWN_TYPES = ("float", "int", "categorical")
_FLOAT_DIGITS = 12


def _where(stage: str, name: str) -> str:
    return f"(stage {stage!r}, parameter {name!r})"


@dataclass(frozen=True)
class FloatParam:
    """A real-valued parameter on ``[low, high]``, optionally on a log scale."""

    stage: str
    name: str
    low: float
    high: float
    log: bool = False

    def __post_init__(self) -> None:
        _check_bounds(self.stage, self.name, self.low, self.high, self.log)

    def _t(self, v: float) -> float:
        return math.log(v) if self.log else v

    def encode(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SearchSpaceError(
                f"value must be a number, but got {value!r} {_where(self.stage, self.name)}"
            )
        if not (self.low <= value <= self.high):
            raise SearchSpaceError(
                f"value must lie in [{self.low}, {self.high}], but got {value!r} "
                f"{_where(self.stage, self.name)}"
            )
        lo, hi = self._t(self.low), self._t(self.high)
        return (self._t(float(value)) - lo) / (hi - lo)

    def decode(self, u: float) -> float:
        u = min(max(float(u), 0.0), 1.0)
        lo, hi = self._t(self.low), self._t(self.high)
        x = lo + u * (hi - lo)
        v = math.exp(x) if self.log else x
        v = float(f"{v:.{_FLOAT_DIGITS}g}")
        return min(max(v, float(self.low)), float(self.high))


@dataclass(frozen=True)
class IntParam:
    """An integer parameter on ``[low, high]`` (inclusive), optionally on a log scale.

    Encoded as a continuous coordinate; decoding rounds to the nearest integer (in the
    original scale), the usual relaxation for GP-based BO.
    """

    stage: str
    name: str
    low: int
    high: int
    log: bool = False

    def __post_init__(self) -> None:
        for bound in ("low", "high"):
            v = getattr(self, bound)
            if isinstance(v, bool) or not (
                isinstance(v, int) or (isinstance(v, float) and v.is_integer())
            ):
                raise SearchSpaceError(
                    f"`{bound}` of an int parameter must be an integer, but got {v!r} "
                    f"{_where(self.stage, self.name)}"
                )
            object.__setattr__(self, bound, int(v))
        _check_bounds(self.stage, self.name, self.low, self.high, self.log)

    def _t(self, v: float) -> float:
        return math.log(v) if self.log else v

    def encode(self, value: Any) -> float:
        if isinstance(value, bool) or not (
            isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        ):
            raise SearchSpaceError(
                f"value must be an integer, but got {value!r} {_where(self.stage, self.name)}"
            )
        if not (self.low <= value <= self.high):
            raise SearchSpaceError(
                f"value must lie in [{self.low}, {self.high}], but got {value!r} "
                f"{_where(self.stage, self.name)}"
            )
        lo, hi = self._t(self.low), self._t(self.high)
        return (self._t(float(value)) - lo) / (hi - lo)

    def decode(self, u: float) -> int:
        u = min(max(float(u), 0.0), 1.0)
        lo, hi = self._t(self.low), self._t(self.high)
        x = lo + u * (hi - lo)
        v = math.exp(x) if self.log else x
        return min(max(round(v), self.low), self.high)


@dataclass(frozen=True)
class CategoricalParam:
    """One of a list of choices, encoded as the centre of its bin in ``[0, 1]``."""

    stage: str
    name: str
    choices: tuple[Any, ...]

    def __post_init__(self) -> None:
        choices = tuple(self.choices)
        if not choices:
            raise SearchSpaceError(f"`choices` must not be empty {_where(self.stage, self.name)}")
        for c in choices:
            if c is not None and not isinstance(c, str | int | float | bool):
                raise SearchSpaceError(
                    f"choices must be str, int, float, bool or None, but got {c!r} "
                    f"{_where(self.stage, self.name)}"
                )
        if len(set(map(repr, choices))) != len(choices):
            raise SearchSpaceError(
                f"`choices` must be distinct, but got {list(choices)} {_where(self.stage, self.name)}"
            )
        object.__setattr__(self, "choices", choices)

    def _index(self, value: Any) -> int:
        for i, c in enumerate(self.choices):
            if type(c) is type(value) and c == value:
                return i
        raise SearchSpaceError(
            f"value must be one of {list(self.choices)}, but got {value!r} "
            f"{_where(self.stage, self.name)}"
        )

    def encode(self, value: Any) -> float:
        return (self._index(value) + 0.5) / len(self.choices)

    def decode(self, u: float) -> Any:
        n = len(self.choices)
        return self.choices[min(max(math.floor(float(u) * n), 0), n - 1)]


Param = FloatParam | IntParam | CategoricalParam


def _check_bounds(stage: str, name: str, low: Any, high: Any, log: bool) -> None:
    for bound, v in (("low", low), ("high", high)):
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise SearchSpaceError(
                f"`{bound}` must be a finite number, but got {v!r} {_where(stage, name)}"
            )
    if not low < high:
        raise SearchSpaceError(
            f"`low < high` must hold, but got low={low}, high={high} {_where(stage, name)}"
        )
    if log and low <= 0:
        raise SearchSpaceError(
            f"`low > 0` must hold when log=true, but got low={low} {_where(stage, name)}"
        )


def _param_from_spec(stage: str, name: str, spec: Any) -> Param:
    if not isinstance(spec, Mapping):
        raise SearchSpaceError(
            f"a parameter spec must be a mapping with a `type`, but got {spec!r} {_where(stage, name)}"
        )
    kind = spec.get("type")
    if kind not in _KNOWN_TYPES:
        raise SearchSpaceError(
            f"`type` must be one of {list(_KNOWN_TYPES)}, but got {kind!r} {_where(stage, name)}"
        )
    allowed = {"float": {"type", "low", "high", "log"}, "int": {"type", "low", "high", "log"}}
    allowed["categorical"] = {"type", "choices"}
    unknown = sorted(set(spec) - allowed[kind])
    if unknown:
        raise SearchSpaceError(
            f"unknown key(s) {unknown} for a {kind} parameter; allowed: {sorted(allowed[kind])} "
            f"{_where(stage, name)}"
        )
    if kind == "categorical":
        if "choices" not in spec:
            raise SearchSpaceError(f"a categorical parameter needs `choices` {_where(stage, name)}")
        choices = spec["choices"]
        if isinstance(choices, str) or not isinstance(choices, Sequence):
            raise SearchSpaceError(
                f"`choices` must be a list, but got {choices!r} {_where(stage, name)}"
            )
        return CategoricalParam(stage, name, tuple(choices))
    for bound in ("low", "high"):
        if bound not in spec:
            raise SearchSpaceError(f"a {kind} parameter needs `{bound}` {_where(stage, name)}")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise SearchSpaceError(
            f"`log` must be true or false, but got {log!r} {_where(stage, name)}"
        )
    cls = FloatParam if kind == "float" else IntParam
    return cls(stage, name, spec["low"], spec["high"], log)


class SearchSpace:
    """Ordered stages, each with ordered parameters; dimension ``d`` = number of parameters.

    A stage may have no parameters (a fixed loading, evaluation or export stage): its
    columns are an empty slice, its decoded parameters ``{}``. At least one stage has some.

    Args:
        params: The parameters, grouped by stage in pipeline order.

    Example:
        >>> space = SearchSpace.from_dict({
        ...     "prep": {"k": {"type": "int", "low": 2, "high": 64, "log": True}},
        ...     "train": {"lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
        ...               "model": {"type": "categorical", "choices": ["rf", "gbm"]}},
        ... })
        >>> space.dim, space.stages
        (3, ('prep', 'train'))
        >>> x = space.encode({"prep": {"k": 8}, "train": {"lr": 0.01, "model": "gbm"}})
        >>> space.decode(x)["prep"]["k"]
        8
    """

    def __init__(self, params: Mapping[str, Sequence[Param]]) -> None:
        if not params:
            raise SearchSpaceError("a search space needs at least one stage, but got none")
        self._by_stage: dict[str, tuple[Param, ...]] = {}
        for stage, plist in params.items():
            if not isinstance(stage, str) or not stage:
                raise SearchSpaceError(f"stage names must be non-empty strings, but got {stage!r}")
            names = [p.name for p in plist]
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise SearchSpaceError(f"duplicate parameter name(s) {dup} (stage {stage!r})")
            self._by_stage[stage] = tuple(plist)
        self.stages: tuple[str, ...] = tuple(self._by_stage)
        self.params: tuple[Param, ...] = tuple(p for ps in self._by_stage.values() for p in ps)
        self.dim = len(self.params)
        if self.dim == 0:
            raise SearchSpaceError(
                f"a search space needs at least one parameter in some stage, but stages "
                f"{list(self.stages)} have none; add one to a stage's space"
            )
        # stage_slices[k] = the columns of stage k (empty for a stage without parameters)
        self.stage_slices: tuple[slice, ...] = ()
        start = 0
        for ps in self._by_stage.values():
            self.stage_slices += (slice(start, start + len(ps)),)
            start += len(ps)

    @classmethod
    def from_dict(cls, spec: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> SearchSpace:
        """Build from ``{stage: {param: {"type": ..., ...}}}`` (the Hydra YAML schema).

        Types: ``float`` and ``int`` (``low``, ``high``, optional ``log``), ``categorical``
        (``choices``). A stage without parameters maps to ``{}``. Raises
        :class:`SearchSpaceError` naming the stage and parameter.
        """
        if not isinstance(spec, Mapping) or not spec:
            raise SearchSpaceError(
                f"a search space must be a non-empty mapping of stage -> parameters, but got {spec!r}"
            )
        params: dict[str, list[Param]] = {}
        for stage, section in spec.items():
            if not isinstance(section, Mapping):
                raise SearchSpaceError(
                    f"stage {stage!r} must map parameter names to specs, but got {section!r}"
                )
            params[str(stage)] = [
                _param_from_spec(str(stage), str(n), s) for n, s in section.items()
            ]
        return cls(params)

    def to_dict(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Inverse of :meth:`from_dict`."""
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for stage, ps in self._by_stage.items():
            out[stage] = {}
            for p in ps:
                if isinstance(p, CategoricalParam):
                    out[stage][p.name] = {"type": "categorical", "choices": list(p.choices)}
                else:
                    kind = "float" if isinstance(p, FloatParam) else "int"
                    out[stage][p.name] = {"type": kind, "low": p.low, "high": p.high, "log": p.log}
        return out

    def stage_params(self, stage: str) -> tuple[Param, ...]:
        return self._by_stage[stage]

    def prefix_dim(self, n_stages: int) -> int:
        """Number of columns of the first ``n_stages`` stages."""
        return 0 if n_stages == 0 else self.stage_slices[n_stages - 1].stop

    def validate(
        self, params: Mapping[str, Mapping[str, Any]], stages: Sequence[str] | None = None
    ) -> None:
        """Check that ``params`` has exactly the declared stages/parameters with valid values."""
        want = self.stages if stages is None else tuple(stages)
        unknown = sorted(set(params) - set(self.stages))
        if unknown:
            raise SearchSpaceError(f"unknown stage(s) {unknown}; stages are {list(self.stages)}")
        for stage in want:
            if stage not in params:
                raise SearchSpaceError(f"missing parameters of stage {stage!r}")
            section = params[stage]
            declared = {p.name for p in self._by_stage[stage]}
            extra = sorted(set(section) - declared)
            if extra:
                raise SearchSpaceError(
                    f"unknown parameter(s) {extra} (stage {stage!r}); declared: {sorted(declared)}"
                )
            for p in self._by_stage[stage]:
                if p.name not in section:
                    raise SearchSpaceError(f"missing value {_where(stage, p.name)}")
                p.encode(section[p.name])

    def encode(self, params: Mapping[str, Mapping[str, Any]]) -> Tensor:
        """``{stage: {param: value}}`` -> a ``d`` tensor in the unit cube (double)."""
        import torch  # here: validating a space (a config) needs no torch

        self.validate(params)
        return torch.tensor(
            [p.encode(params[p.stage][p.name]) for p in self.params], dtype=torch.double
        )

    def decode(self, x: Tensor | Sequence[float]) -> Params:
        """A ``d`` point of the unit cube -> canonical ``{stage: {param: value}}``."""
        values = x.tolist() if hasattr(x, "tolist") else list(x)
        if len(values) != self.dim:
            raise SearchSpaceError(
                f"expected a point with {self.dim} coordinates, got {len(values)}"
            )
        out: Params = {s: {} for s in self.stages}
        for p, u in zip(self.params, values, strict=True):
            out[p.stage][p.name] = p.decode(u)
        return out

    def canonicalize(self, x: Tensor) -> Tensor:
        """Snap unit-cube points (``... x d``) to the encodings of their decoded values, so the
        models see exactly where a trial ran (rounded ints, bin centres, rounded floats)."""
        import torch

        flat = x.reshape(-1, self.dim)
        rows = [self.encode(self.decode(row)) for row in flat]
        return torch.stack(rows).reshape(x.shape).to(x)

    def __repr__(self) -> str:
        return f"SearchSpace(stages={list(self.stages)}, dim={self.dim})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SearchSpace) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(repr(self.to_dict()))
