"""Stages, pipelines and their Merkle cache keys.

A :class:`Stage` is a plain function plus a name, its named inputs and its output
(Kedro-style), a version string and its section of the search space. A :class:`Pipeline`
is a DAG of stages: every input is the output of another stage, a stage without inputs is a
source, and exactly one stage (the sink) produces the objective.

Calling convention: a stage function receives its inputs as keyword arguments named after
the inputs (which are the producing stages' output names) and its hyperparameters as
keyword arguments named after the parameters of its search-space section::

    @stage(inputs=["data"], space={"lr": {"type": "float", "low": 1e-4, "high": 1e-1}})
    def train(data, lr):
        ...

Cache keys are Merkle keys: ``sha256(canonical_json([name, identity, params, input_keys]))``,
so a key changes exactly when the stage's code (or its explicit version), the fixed
arguments it was built with, its own hyperparameters or anything upstream changes. For a
chain this is the hyperparameter prefix. A stage's identity (:attr:`Stage.identity`) is
the fingerprint of its code (:func:`stages.code_fingerprint`: normalized source, closed-over
values, defaults, the same-package helpers it calls) unless ``version`` is set, in which
case the version string stands for the code; the fixed arguments the pipeline factory was
called with (``bound``) join either. Fixed parameters (``fixed``) join ``params``.
"""

from __future__ import annotations

import hashlib
import inspect
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from eeipu import canonical_json
from stages._errors import PipelineError
from stages._fingerprint import code_fingerprint

__all__ = ["Params", "Pipeline", "Reported", "Stage", "merkle_key", "stage"]

T = TypeVar("T")
Params = Mapping[str, Mapping[str, Any]]

_TYPES = ("float", "int", "categorical")


@dataclass(frozen=True)
class Reported(Generic[T]):
    """A stage's output together with the cost the stage reports for itself.

    Return ``Reported(value, cost=...)`` from a stage function when the measured wall-clock
    time is not the right cost (simulated units, GPU-hours, money). Only ``value`` is
    stored and passed downstream; a later cache hit costs its measured load time (or the
    pipeline's ``load_cost``).

    Example:
        >>> Reported({"auroc": 0.9}, cost=12.5).cost
        12.5
    """

    value: T
    cost: float

    def __post_init__(self) -> None:
        cost = float(self.cost)
        if not (math.isfinite(cost) and cost >= 0):
            raise ValueError(f"a reported cost must be finite and >= 0, but got {self.cost!r}")
        object.__setattr__(self, "cost", cost)


def merkle_key(
    name: str, version: str, params: Mapping[str, Any], input_keys: Sequence[str]
) -> str:
    """The cache key of one stage run: sha256 hex of canonical JSON.

    Args:
        name: Stage name.
        version: The stage's identity (:attr:`Stage.identity`): its code fingerprint, or
            its explicit version, with its bound arguments.
        params: The stage's own (normalized) hyperparameters and fixed parameters.
        input_keys: Cache keys of the stage's inputs, in input order.

    Example:
        >>> len(merkle_key("prep", "1", {"k": 3}, []))
        64
    """
    payload = canonical_json([name, version, dict(params), list(input_keys)])
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass(frozen=True, eq=False)
class Stage:
    """A pipeline stage: a plain function with a name, inputs, output, version and space.

    Args:
        func: The function. Called as ``func(**inputs, **fixed, **hyperparameters)``.
        name: Unique stage name (also the key of its section in ``params``).
        inputs: Names of the outputs this stage reads, in order; each is passed as the
            keyword argument of that name.
        output: Name of what this stage produces; defaults to ``name``.
        version: ``None`` (default): the cache key follows the function's code
            (:func:`stages.code_fingerprint`), so an edit recomputes this stage and
            everything downstream. A string takes over from the code: the key then follows
            this string instead, and you change it when the behaviour changes. Set it to
            keep entries across a refactor that changes no behaviour: ``eeipu cache``
            lists each stage's current identity; pinning ``version`` to the identity the
            entries were made under (``code:...``) keeps them.
        space: ``{param: spec}`` in eeipu's schema (``type`` float/int/categorical,
            ``low``/``high``/``log`` or ``choices``).
        fixed: Parameters with a fixed value: passed to the function like hyperparameters
            and part of the cache key like them, but not tuned (YAML ``pipeline.fixed``).
        bound: The fixed arguments the pipeline factory was called with (the YAML's
            ``pipeline.kwargs``): part of the cache key, not passed to the function.
        tags: Prefect tags of the stage's task runs (not part of the cache key), e.g.
            ``("gpu",)`` so that ``prefect concurrency-limit create gpu 1`` caps how many
            such stages run at once across all workers.

    Raises:
        PipelineError: When the function cannot accept the declared inputs or
            hyperparameters, or requires an argument that is neither.
    """

    func: Callable[..., Any]
    name: str
    inputs: tuple[str, ...] = ()
    output: str = ""
    version: str | None = None
    space: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    fixed: Mapping[str, Any] = field(default_factory=dict)
    bound: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise PipelineError(f"a stage name must be a non-empty string, but got {self.name!r}")
        if isinstance(self.inputs, str):
            # A bare string would be read as a sequence of one-letter inputs.
            raise PipelineError(
                f"inputs must be a sequence of names, but got the string {self.inputs!r} "
                f"(stage {self.name!r}); write inputs=[{self.inputs!r}]"
            )
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "output", self.output or self.name)
        if self.version is not None:
            object.__setattr__(self, "version", str(self.version))
        object.__setattr__(self, "tags", tuple(str(t) for t in self.tags))
        space = {str(p): MappingProxyType(dict(spec)) for p, spec in dict(self.space).items()}
        object.__setattr__(self, "space", MappingProxyType(space))
        for what in ("fixed", "bound"):
            values = dict(getattr(self, what) or {})
            try:
                canonical_json(values)
            except (TypeError, ValueError) as exc:
                raise PipelineError(
                    f"{what} values must be JSON-like (numbers, strings, booleans, null, lists "
                    f"and mappings of them), but stage {self.name!r} got {values!r}: {exc}"
                ) from exc
            object.__setattr__(self, what, MappingProxyType(values))
        self._check_space()
        self._check_signature()

    @cached_property
    def identity(self) -> str:
        """What stands for the stage's code in its cache key: ``code:<fingerprint>`` of its
        function, or its explicit ``version``; then the fingerprint of ``bound``, if any."""
        base = f"code:{code_fingerprint(self.func)}" if self.version is None else self.version
        if not self.bound:
            return base
        digest = hashlib.sha256(canonical_json(dict(self.bound)).encode("utf-8")).hexdigest()
        return f"{base}+bound:{digest}"

    def _check_space(self) -> None:
        for param, spec in self.space.items():
            kind = spec.get("type")
            if kind not in _TYPES:
                raise PipelineError(
                    f"parameter type must be one of {list(_TYPES)}, but got type={kind!r} "
                    f"(stage {self.name!r}, parameter {param!r})"
                )
        clash = sorted(set(self.inputs) & set(self.space))
        if clash:
            raise PipelineError(
                f"a name cannot be both an input and a hyperparameter, but stage {self.name!r} "
                f"uses {clash} as both"
            )
        for other, what in ((self.space, "a hyperparameter"), (self.inputs, "an input")):
            clash = sorted(set(self.fixed) & set(other))
            if clash:
                raise PipelineError(
                    f"a fixed parameter cannot also be {what}, but stage {self.name!r} "
                    f"has {clash} as both"
                )
        if len(set(self.inputs)) != len(self.inputs):
            raise PipelineError(
                f"input names must be unique, but stage {self.name!r} has inputs "
                f"{list(self.inputs)}"
            )

    def _check_signature(self) -> None:
        try:
            sig = inspect.signature(self.func)
        except (TypeError, ValueError) as exc:
            raise PipelineError(
                f"cannot inspect the signature of stage {self.name!r}'s function: {exc}"
            ) from exc
        sig_params = sig.parameters.values()
        takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig_params)
        by_keyword = {
            p.name
            for p in sig_params
            if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        }
        where = f"{getattr(self.func, '__name__', 'function')}{sig}"
        if not takes_kwargs:
            for name in self.inputs:
                if name not in by_keyword:
                    raise PipelineError(
                        f"stage {self.name!r} reads input {name!r}, which its function {where} "
                        "does not accept as a keyword argument"
                    )
            for name in self.space:
                if name not in by_keyword:
                    raise PipelineError(
                        f"the search-space section of stage {self.name!r} names parameter "
                        f"{name!r}, which its function {where} does not accept"
                    )
            for name in self.fixed:
                if name not in by_keyword:
                    raise PipelineError(
                        f"stage {self.name!r} fixes parameter {name!r}, which its function "
                        f"{where} does not accept"
                    )
        supplied = set(self.inputs) | set(self.space) | set(self.fixed)
        for p in sig_params:
            required = p.default is inspect.Parameter.empty and p.kind not in (
                inspect.Parameter.VAR_POSITIONAL,
                inspect.Parameter.VAR_KEYWORD,
            )
            if required and p.name not in supplied:
                raise PipelineError(
                    f"stage {self.name!r}'s function {where} requires argument {p.name!r}, "
                    "which is neither an input, a hyperparameter of its search space nor a "
                    "fixed parameter"
                )

    def normalize(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """This stage's hyperparameters, checked and coerced to their declared types, with
        its fixed parameters: what the function is called with besides its inputs, and what
        its cache key covers.

        Coercion makes keys agree whether a value arrives as ``3``, ``3.0`` or a numpy
        scalar: ``int`` parameters become ``int``, ``float`` ones ``float``.

        Raises:
            ValueError: When a declared parameter is missing or an unknown one is given.
        """
        params = dict(params or {})
        missing = sorted(set(self.space) - set(params))
        extra = sorted(set(params) - set(self.space))
        if missing or extra:
            raise ValueError(
                f"hyperparameters must match the search space of stage {self.name!r} "
                f"({sorted(self.space)}), but got missing={missing}, unknown={extra}"
            )
        out: dict[str, Any] = dict(self.fixed)
        for name in self.space:
            out[name] = self.coerce(name, params[name])
        return out

    def coerce(self, name: str, value: Any) -> Any:
        """``value`` as parameter ``name`` of this stage's space declares it: ``int``
        parameters become ``int`` (``3.0`` too), ``float`` ones ``float``, a numpy or torch
        scalar choice its Python value.

        Raises:
            ValueError: The value does not fit the parameter's type.
        """
        kind = self.space[name]["type"]
        try:
            if kind == "int":
                as_float = float(value)
                if not as_float.is_integer():
                    raise ValueError(f"{value!r} is not integral")
                return int(as_float)
            if kind == "float":
                return float(value)
            if hasattr(value, "item") and not isinstance(value, str):
                return value.item()  # numpy/torch scalar choice
            return value
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"value {value!r} does not fit type {kind!r} "
                f"(stage {self.name!r}, parameter {name!r})"
            ) from exc

    def __call__(self, **kwargs: Any) -> Any:
        """Call the plain function (for tests and notebooks; no caching)."""
        return self.func(**kwargs)


def stage(
    name: str | None = None,
    *,
    inputs: Iterable[str] = (),
    output: str | None = None,
    version: str | None = None,
    space: Mapping[str, Mapping[str, Any]] | None = None,
    fixed: Mapping[str, Any] | None = None,
) -> Callable[[Callable[..., Any]], Stage]:
    """Decorator that turns a function into a :class:`Stage` (name defaults to the
    function's name).

    Example:
        >>> @stage(space={"k": {"type": "int", "low": 1, "high": 9}})
        ... def prep(k):
        ...     return list(range(k))
        >>> prep.name, prep.output
        ('prep', 'prep')
    """

    def wrap(func: Callable[..., Any]) -> Stage:
        return Stage(
            func=func,
            name=name or func.__name__,
            inputs=tuple(inputs) if not isinstance(inputs, str) else inputs,  # type: ignore[arg-type]
            output=output or "",
            version=version,
            space=dict(space or {}),
            fixed=dict(fixed or {}),
        )

    return wrap


class Pipeline:
    """A DAG of stages whose sink returns the objective.

    Args:
        stages: The stages, in any order (they are sorted topologically; ties keep the
            given order).
        metric: When the sink returns a mapping, the entry holding the objective.
        load_cost: What a cache hit costs, in the unit of the stages' costs. ``None``
            (default): the measured seconds of loading it. Set it when the stages report
            simulated costs (``stages.Reported``), whose unit is not seconds.
        direction: ``"maximize"`` or ``"minimize"`` where the pipeline itself says which
            objective is better (a Kedro project's ``eeipu.yml``); ``None`` (default):
            the study's ``pipeline.direction`` decides alone. A study refuses a pipeline
            whose direction differs from its own.

    Raises:
        PipelineError: Empty pipeline, duplicate names or outputs, an input no stage
            produces, a cycle, or more than one sink.

    Example:
        >>> @stage()
        ... def prep():
        ...     return 1.0
        >>> @stage(inputs=["prep"], space={"w": {"type": "float", "low": 0, "high": 1}})
        ... def score(prep, w):
        ...     return {"auroc": prep * w}
        >>> pipe = Pipeline([score, prep], metric="auroc")
        >>> pipe.stage_names
        ['prep', 'score']
    """

    def __init__(
        self,
        stages: Iterable[Stage],
        *,
        metric: str | None = None,
        load_cost: float | None = None,
        direction: str | None = None,
    ) -> None:
        stages = list(stages)
        if direction not in (None, "maximize", "minimize"):
            raise PipelineError(
                f"`direction` must be None, 'maximize' or 'minimize', but got {direction!r}"
            )
        if load_cost is not None and not (
            isinstance(load_cost, (int, float)) and math.isfinite(load_cost) and load_cost >= 0
        ):
            raise PipelineError(f"`load_cost` must be None or a number >= 0, but got {load_cost!r}")
        if not stages:
            raise PipelineError("a pipeline needs at least one stage, but got none")
        for s in stages:
            if not isinstance(s, Stage):
                raise PipelineError(
                    f"a pipeline is built from Stage objects (use @stage), but got {s!r}"
                )
        names = [s.name for s in stages]
        for name in names:
            if names.count(name) > 1:
                raise PipelineError(
                    f"stage names must be unique, but {name!r} appears {names.count(name)} times"
                )
        producer: dict[str, Stage] = {}
        for s in stages:
            if s.output in producer:
                raise PipelineError(
                    f"stage outputs must be unique, but output {s.output!r} is produced by "
                    f"stages {producer[s.output].name!r} and {s.name!r}"
                )
            producer[s.output] = s
        for s in stages:
            for inp in s.inputs:
                if inp not in producer:
                    raise PipelineError(
                        f"every input must be the output of another stage, but stage {s.name!r} "
                        f"reads {inp!r}, which no stage produces (outputs: {sorted(producer)})"
                    )
        self._producer = producer
        self._stages = {s.name: s for s in self._toposort(stages)}
        consumed = {inp for s in stages for inp in s.inputs}
        sinks = [s.name for s in self._stages.values() if s.output not in consumed]
        if len(sinks) != 1:
            raise PipelineError(
                "a pipeline must end in exactly one stage that returns the objective, but "
                f"stages {sinks} have outputs no stage reads"
            )
        self.metric = metric
        self.direction = direction
        self.load_cost = None if load_cost is None else float(load_cost)

    def _toposort(self, stages: list[Stage]) -> list[Stage]:
        # Always take the first stage (in the given order) whose inputs are all produced,
        # so the given order survives wherever the DAG allows it.
        done: set[str] = set()
        order: list[Stage] = []
        pending = list(stages)
        while pending:
            ready = next((s for s in pending if all(i in done for i in s.inputs)), None)
            if ready is None:
                raise PipelineError(
                    f"stages must form a DAG, but they have a cycle: {self._cycle(pending)}"
                )
            order.append(ready)
            done.add(ready.output)
            pending.remove(ready)
        return order

    def _cycle(self, pending: list[Stage]) -> str:
        # Follow first unresolved inputs until a stage repeats; every pending stage has one.
        names = {s.name for s in pending}
        path: list[str] = []
        current = pending[0]
        while current.name not in path:
            path.append(current.name)
            nxt = next(self._producer[i] for i in current.inputs if self._producer[i].name in names)
            current = nxt
        cycle = [*path[path.index(current.name) :], current.name]
        return " -> ".join(reversed(cycle))

    # ------------------------------------------------------------------ structure
    @property
    def stages(self) -> list[Stage]:
        """The stages in topological order."""
        return list(self._stages.values())

    @property
    def stage_names(self) -> list[str]:
        """Stage names in topological order."""
        return list(self._stages)

    @property
    def sink(self) -> Stage:
        """The stage that returns the objective."""
        return self.stages[-1]

    def __getitem__(self, name: str) -> Stage:
        try:
            return self._stages[name]
        except KeyError:
            raise KeyError(f"unknown stage {name!r}; stages are {self.stage_names}") from None

    def __len__(self) -> int:
        return len(self._stages)

    def __repr__(self) -> str:
        return f"Pipeline({self.stage_names}, metric={self.metric!r})"

    def upstream(self, name: str) -> list[Stage]:
        """The stages ``name``'s inputs are produced by, in input order."""
        return [self._producer[i] for i in self[name].inputs]

    def ancestors(self, name: str) -> set[str]:
        """Names of every stage upstream of ``name`` (not including it)."""
        seen: set[str] = set()
        todo = [s.name for s in self.upstream(name)]
        while todo:
            n = todo.pop()
            if n not in seen:
                seen.add(n)
                todo.extend(s.name for s in self.upstream(n))
        return seen

    def descendants(self, name: str) -> set[str]:
        """Names of every stage downstream of ``name`` (not including it)."""
        return {n for n in self._stages if name in self.ancestors(n)}

    def space_dict(self) -> dict[str, dict[str, dict[str, Any]]]:
        """``{stage: {param: spec}}`` in topological order, for ``SearchSpace.from_dict``."""
        return {
            s.name: {p: dict(spec) for p, spec in s.space.items()} for s in self._stages.values()
        }

    # ------------------------------------------------------------------ keys
    def keys(self, params: Params, upto: str | None = None) -> dict[str, str]:
        """Merkle cache keys of every stage (or only ``upto`` and its ancestors).

        Args:
            params: ``{stage: {param: value}}``; stages without hyperparameters may be
                omitted, and stages outside the requested set are ignored.
            upto: Compute only this stage's key and its ancestors' keys.

        Returns:
            ``{stage: key}`` in topological order.

        Raises:
            ValueError: When a needed stage's hyperparameters are missing or malformed.
        """
        wanted = None if upto is None else self.ancestors(upto) | {self[upto].name}
        keys: dict[str, str] = {}
        for s in self._stages.values():
            if wanted is not None and s.name not in wanted:
                continue
            own = s.normalize(params.get(s.name))
            input_keys = [keys[u.name] for u in self.upstream(s.name)]
            keys[s.name] = merkle_key(s.name, s.identity, own, input_keys)
        return keys

    def key(self, name: str, params: Params) -> str:
        """The Merkle cache key of one stage for these hyperparameters."""
        return self.keys(params, upto=name)[name]

    def objective(self, value: Any) -> float:
        """Read the objective from the sink's output (a number, or ``value[metric]``).

        Raises:
            ValueError: When the output holds no usable objective.
        """
        if isinstance(value, Mapping):
            if self.metric is None:
                raise ValueError(
                    f"stage {self.sink.name!r} returned a mapping with keys {sorted(value)}; "
                    "name the objective with Pipeline(..., metric=...)"
                )
            if self.metric not in value:
                raise ValueError(
                    f"stage {self.sink.name!r} returned no metric {self.metric!r} "
                    f"(keys: {sorted(value)})"
                )
            value = value[self.metric]
        try:
            return float(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"the objective must be a number, but stage {self.sink.name!r} returned "
                f"{type(value).__name__}"
            ) from exc
