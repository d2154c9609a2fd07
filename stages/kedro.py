"""A Kedro project's pipeline as an eeipu pipeline: a stage per node, no change to its code.

Install with ``pip install 'eeipu[kedro]'``. The project says what to tune in its own
configuration, ``conf/base/eeipu.yml`` (an environment's ``conf/<env>/eeipu.yml`` overrides
it as Kedro merges any configuration)::

    objective: metrics            # the dataset that holds the objective (a node output)
    metric: r2_score              # the entry of it, when the dataset is a dict
    direction: maximize
    space:                        # `params:` keys of parameters.yml, in eeipu's spec schema
      params:model_options.alpha: {type: float, low: 0.001, high: 10.0, log: true}
      params:model_options.max_depth: {type: int, low: 2, high: 12}

:func:`kedro_pipeline` reads it, with the project's pipeline, catalog and parameters,
through Kedro itself (``bootstrap_project``, ``KedroSession``), and builds a
:class:`stages.Pipeline` of the nodes the objective depends on:

* **A stage per node**, named as the node. It runs the node through Kedro's
  ``SequentialRunner`` on an in-memory catalog, so the project's hooks (``settings.HOOKS``)
  see every node run; its output is the node's outputs (cached like any stage output).
  Datasets no node produces (the raw inputs) are loaded through the project's catalog, so
  every dataset type the project uses works.
* **Its cache key** covers, besides its inputs' keys, the node's code
  (:func:`stages.code_fingerprint`), its inputs and outputs, the values of the untuned
  parameters it reads, a content fingerprint of each raw dataset it loads, and its tuned
  parameters: editing a node recomputes it and what depends on it; editing
  ``parameters.yml`` or a raw file recomputes exactly the nodes that read them.
* **A tuned parameter belongs to the first node that reads it** (in the pipeline's order),
  whose search-space section holds it. Any later node that reads it too (``params:`` of it
  or of a mapping above it, or ``parameters``) gets the value from that node's output, and
  with it that node's key: never a value its key does not cover.

Example:
    >>> from stages.kedro import kedro_pipeline  # doctest: +SKIP
    >>> pipe = kedro_pipeline("path/to/project", pipeline="__default__")  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import hashlib
import logging
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eeipu import EEIPUError, SearchSpace, canonical_json
from stages._errors import PipelineError
from stages._fingerprint import code_fingerprint
from stages._pipeline import Pipeline, Stage

__all__ = ["CONF_KEY", "KedroProject", "KedroSpec", "kedro_pipeline", "write_parameters"]

#: The configuration key (file pattern ``eeipu*``) of the project's tuning spec.
CONF_KEY = "eeipu"
#: Where a node's stage output carries the tuned values it owns, for later readers.
_OWNED = "__eeipu_tuned__"
_PARAMS = "params:"


@dataclass(frozen=True)
class KedroSpec:
    """The project's ``eeipu.yml``: what to optimize and over which ``params:`` keys."""

    objective: str
    metric: str | None
    direction: str | None
    space: dict[str, dict[str, Any]]

    @classmethod
    def from_mapping(cls, conf: Mapping[str, Any], where: str) -> KedroSpec:
        """Check the mapping of ``where`` (a file name, for messages).

        Raises:
            PipelineError: One line naming the offending key and the rule.
        """
        known = {"objective", "metric", "direction", "space"}
        unknown = sorted(set(conf) - known)
        if unknown:
            raise PipelineError(
                f"{where}: unknown key `{unknown[0]}`; the keys are {sorted(known)}"
            )
        objective = conf.get("objective")
        if not isinstance(objective, str) or not objective:
            raise PipelineError(
                f"{where}: `objective` must name the dataset that holds the objective "
                f"(a node output), but got {objective!r}"
            )
        metric = conf.get("metric")
        if metric is not None and not isinstance(metric, str):
            raise PipelineError(f"{where}: `metric` must be a string, but got {metric!r}")
        direction = conf.get("direction")
        if direction not in (None, "maximize", "minimize"):
            raise PipelineError(
                f"{where}: `direction` must be 'maximize' or 'minimize', but got {direction!r}"
            )
        space = conf.get("space")
        if not isinstance(space, Mapping) or not space:
            raise PipelineError(
                f"{where}: `space` must map `params:` keys to specs, e.g. "
                f"{{'params:model_options.alpha': {{type: float, low: 0.001, high: 10}}}}, "
                f"but got {space!r}"
            )
        for key in space:
            if not isinstance(key, str) or not key.startswith(_PARAMS) or key == _PARAMS:
                raise PipelineError(
                    f"{where}: `space` key {key!r} must be a parameter as nodes read it, "
                    f"`params:<name>` (e.g. params:model_options.alpha)"
                )
        plain = {k: dict(v) if isinstance(v, Mapping) else v for k, v in space.items()}
        try:  # the spec schema is eeipu's: the same checks, the same messages
            SearchSpace.from_dict({"space": plain})
        except EEIPUError as exc:
            raise PipelineError(f"{where}: `space`: {exc}") from exc
        return cls(objective, metric, direction, plain)


class KedroProject:
    """A Kedro project opened through Kedro: its metadata, context, catalog, parameters,
    hooks and eeipu spec.

    Args:
        project: The project's root folder (where its ``pyproject.toml`` is).
        env: The Kedro environment (``None``: Kedro's default, ``local`` over ``base``).

    Raises:
        PipelineError: Not a Kedro project, or no valid ``eeipu.yml``.
    """

    def __init__(self, project: str | Path = ".", env: str | None = None) -> None:
        from kedro.framework.hooks import _create_hook_manager
        from kedro.framework.project import settings
        from kedro.framework.session import KedroSession
        from kedro.framework.startup import bootstrap_project

        # Kedro's runner says a dozen INFO lines per node run (loading, saving, completed):
        # a study's console is for its trials. The nodes' own loggers keep their levels.
        for chatty in ("kedro.io", "kedro.runner", "kedro.pipeline", "kedro.validation"):
            logging.getLogger(chatty).setLevel(logging.WARNING)
        self.path = Path(project).expanduser().resolve()
        try:
            bootstrap_project(self.path)
        except (RuntimeError, FileNotFoundError, ValueError) as exc:
            raise PipelineError(
                f"{self.path} is not a Kedro project ({' '.join(str(exc).split())})"
            ) from exc
        with KedroSession.create(project_path=self.path, env=env, save_on_close=False) as s:
            self.context = s.load_context()
        self.conf_source = self.path / settings.CONF_SOURCE
        self.catalog = self.context.catalog
        self.params: dict[str, Any] = dict(self.context.params)
        # The project's own hooks, in one manager every node run of this process shares.
        self.hook_manager = _create_hook_manager()
        for hook in settings.HOOKS:
            if not self.hook_manager.is_registered(hook):
                self.hook_manager.register(hook)
        loader = self.context.config_loader
        loader.config_patterns.setdefault(CONF_KEY, [f"{CONF_KEY}*", f"{CONF_KEY}*/**"])
        where = f"{settings.CONF_SOURCE}/base/{CONF_KEY}.yml"
        try:
            conf = loader[CONF_KEY]
        except Exception as exc:  # MissingConfigException, or a YAML error Kedro raises
            raise PipelineError(
                f"{where}: cannot read the project's eeipu configuration "
                f"({type(exc).__name__}: {' '.join(str(exc).split())[:300]})"
            ) from exc
        self.spec = KedroSpec.from_mapping(conf, where)

    def pipeline(self, name: str) -> Any:
        """The registered Kedro pipeline ``name``, cut to what the objective depends on."""
        from kedro.framework.project import pipelines

        if name not in pipelines:
            raise PipelineError(
                f"`pipeline` {name!r} is not a pipeline of the project; registered: "
                f"{sorted(pipelines)}"
            )
        full = pipelines[name]
        if self.spec.objective not in full.all_outputs():
            raise PipelineError(
                f"eeipu.yml: `objective` {self.spec.objective!r} is not an output of a node of "
                f"pipeline {name!r}; node outputs: {sorted(full.all_outputs())}"
            )
        return full.to_outputs(self.spec.objective)

    def parameter(self, key: str) -> Any:
        """The project's value of ``params:<key>`` (``key`` a dotted path)."""
        value: Any = self.params
        for part in key.split("."):
            if not isinstance(value, Mapping) or part not in value:
                raise KeyError(key)
            value = value[part]
        return value


def kedro_pipeline(
    project: str = ".", pipeline: str = "__default__", env: str | None = None
) -> Pipeline:
    """The Kedro project's pipeline ``pipeline`` as an eeipu :class:`~stages.Pipeline`.

    Args:
        project: The Kedro project's root folder.
        pipeline: A registered pipeline's name (``__default__``, or one of
            ``pipeline_registry.py``).
        env: The Kedro environment whose configuration is read (``None``: Kedro's default).

    Raises:
        PipelineError: One line naming what is wrong: not a Kedro project, no or a bad
            ``eeipu.yml``, an unknown pipeline, objective or ``params:`` key.
    """
    proj = KedroProject(project, env)
    nodes = list(proj.pipeline(pipeline).nodes)  # Kedro's topological order
    tuned = {key[len(_PARAMS) :]: spec for key, spec in proj.spec.space.items()}
    readers = {key: [n for n in nodes if _reads(n, key)] for key in tuned}
    _check_tuned(proj, readers, pipeline)
    owner = {key: readers[key][0].name for key in tuned}
    producer = {out: n.name for n in nodes for out in n.outputs}
    raw_fingerprints: dict[str, str] = {}
    stages = []
    for node in nodes:
        own = [k for k in tuned if owner[k] == node.name]
        borrowed = {k: owner[k] for k in tuned if owner[k] != node.name and node in readers[k]}
        upstream = list(
            dict.fromkeys(
                [producer[d] for d in node.inputs if d in producer] + list(borrowed.values())
            )
        )
        raw = [d for d in node.inputs if d not in producer and not _is_param(d)]
        for d in raw:
            if d not in raw_fingerprints:
                raw_fingerprints[d] = _dataset_fingerprint(proj, d)
        runner = _NodeRun(
            node=node,
            project=proj,
            upstream=upstream,
            raw=raw,
            own=own,
            borrowed=borrowed,
            sink=proj.spec.objective if proj.spec.objective in node.outputs else None,
        )
        stages.append(
            Stage(
                runner,
                name=node.name,
                inputs=upstream,
                version=_node_version(proj, node, {d: raw_fingerprints[d] for d in raw}),
                space={k: tuned[k] for k in own},
            )
        )
    return Pipeline(stages, metric=proj.spec.metric, direction=proj.spec.direction)


def _node_version(proj: KedroProject, node: Any, raw: Mapping[str, str]) -> str:
    """The node's stage version: a digest of its code, its inputs and outputs, the untuned
    ``params:`` values it reads and the content fingerprints of the raw datasets it loads."""
    identity = {
        "code": code_fingerprint(node.func),
        "inputs": list(node.inputs),
        "outputs": list(node.outputs),
        "params": {d: _param_input(proj, d) for d in node.inputs if _is_param(d)},
        "raw": dict(raw),
    }
    try:
        version = canonical_json(identity)
    except (TypeError, ValueError) as exc:
        raise PipelineError(
            f"node {node.name!r}: its parameters must be plain values (numbers, strings, "
            f"lists, mappings) to key its cache entries: {exc}"
        ) from exc
    return "kedro:" + hashlib.sha256(version.encode()).hexdigest()


def _check_tuned(proj: KedroProject, readers: Mapping[str, list[Any]], pipeline: str) -> None:
    """Each tuned key (a dotted path after ``params:``) must be a value of the project's
    parameters that a node of the pipeline reads; else one line naming the rule it breaks."""
    for key, nodes in readers.items():
        try:
            value = proj.parameter(key)
        except KeyError:
            raise PipelineError(
                f"eeipu.yml: `space` key 'params:{key}' is not a parameter of the project "
                f"({_near(proj.params, key)})"
            ) from None
        if isinstance(value, Mapping):
            raise PipelineError(
                f"eeipu.yml: `space` key 'params:{key}' is a mapping of parameters "
                f"({sorted(value)}); tune its entries, e.g. 'params:{key}.{next(iter(value), 'x')}'"
            )
        if not nodes:
            raise PipelineError(
                f"eeipu.yml: `space` key 'params:{key}' is read by no node that "
                f"{proj.spec.objective!r} depends on in pipeline {pipeline!r}"
            )


class _NodeRun:
    """A stage's function: one Kedro node, run by Kedro on an in-memory catalog."""

    def __init__(
        self,
        *,
        node: Any,
        project: KedroProject,
        upstream: list[str],
        raw: list[str],
        own: list[str],
        borrowed: dict[str, str],
        sink: str | None,
    ) -> None:
        self.node = node
        self.project = project
        self.upstream = upstream
        self.raw = raw
        self.own = own
        self.borrowed = borrowed
        self.sink = sink
        self.__name__ = node.name

    def __call__(self, **kwargs: Any) -> Any:
        from kedro.io import DataCatalog, MemoryDataset
        from kedro.pipeline import Pipeline as KedroPipeline
        from kedro.runner import SequentialRunner

        values = {k: kwargs[k] for k in self.own}
        data: dict[str, Any] = {}
        for name in self.upstream:
            produced = kwargs[name]
            values.update({k: v for k, v in produced.get(_OWNED, {}).items() if k in self.borrowed})
            data.update({d: produced[d] for d in self.node.inputs if d in produced})
        for d in self.raw:
            data[d] = self.project.catalog.load(d)
        for d in self.node.inputs:
            if _is_param(d):
                data[d] = _with_values(_param_input(self.project, d), d, values)
        catalog = DataCatalog(
            {
                **{d: MemoryDataset(v, copy_mode="assign") for d, v in data.items()},
                **{d: MemoryDataset(copy_mode="assign") for d in self.node.outputs},
            }
        )
        SequentialRunner().run(KedroPipeline([self.node]), catalog, self.project.hook_manager)
        outputs = {d: catalog.load(d) for d in self.node.outputs}
        for d, value in outputs.items():
            _check_picklable(self.node.name, d, value)
        if self.sink is not None:
            return outputs[self.sink]
        return {**outputs, _OWNED: {k: kwargs[k] for k in self.own}}


class _Discard:
    """A file that forgets what is written (bytes, or the buffers protocol 5 hands over)."""

    def write(self, data: Any) -> None:
        pass


def _check_picklable(node: str, dataset: str, value: Any) -> None:
    """Refuse, in one line, an output the cache cannot store (Prefect's result serializer,
    cloudpickle, would fail after the node ran and name no dataset)."""
    import cloudpickle

    try:
        cloudpickle.CloudPickler(_Discard(), protocol=pickle.HIGHEST_PROTOCOL).dump(value)
    except Exception as exc:
        raise PipelineError(
            f"node {node!r}: output {dataset!r} cannot be pickled into the cache "
            f"({type(exc).__name__}: {exc}); return data, not live objects (locks, open "
            "files, connections)"
        ) from None


# ---------------------------------------------------------------------- parameters
def _is_param(dataset: str) -> bool:
    return dataset == "parameters" or dataset.startswith(_PARAMS)


def _reads(node: Any, key: str) -> bool:
    """Whether ``node`` reads tuned parameter ``key``: itself, a mapping above it, or all."""
    for d in node.inputs:
        if d == "parameters":
            return True
        if d.startswith(_PARAMS):
            path = d[len(_PARAMS) :]
            if key == path or key.startswith(path + "."):
                return True
    return False


def _param_input(project: KedroProject, dataset: str) -> Any:
    """The project's value of a node's ``params:``/``parameters`` input (a copy)."""
    if dataset == "parameters":
        return copy.deepcopy(project.params)
    return copy.deepcopy(project.parameter(dataset[len(_PARAMS) :]))


def _with_values(value: Any, dataset: str, values: Mapping[str, Any]) -> Any:
    """``value`` (the input ``dataset``) with the trial's tuned values put in."""
    path = "" if dataset == "parameters" else dataset[len(_PARAMS) :]
    for key, v in values.items():
        if key == path:
            value = v
        elif not path or key.startswith(path + "."):
            rest = key[len(path) + 1 :] if path else key
            *parents, leaf = rest.split(".")
            target = value
            for part in parents:
                target = target[part]
            target[leaf] = v
    return value


def _near(params: Mapping[str, Any], key: str) -> str:
    """What the project has where ``key`` was looked for, for the error message."""
    parts = key.split(".")
    value: Any = params
    for depth, part in enumerate(parts):
        if not isinstance(value, Mapping) or part not in value:
            where = ".".join(parts[:depth])
            names = sorted(value) if isinstance(value, Mapping) else []
            return f"parameters under {where or 'the top level'}: {names}"
        value = value[part]
    return "it is not a leaf"


def _dataset_fingerprint(project: KedroProject, name: str) -> str:
    """sha256 of a raw dataset's content, loaded through the project's catalog."""
    if project.catalog.get(name) is None:
        raise PipelineError(
            f"dataset {name!r} is read by a node but is neither produced by one nor in the "
            "project's catalog"
        )
    data = project.catalog.load(name)
    digest = hashlib.sha256()
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - kedro-datasets users have pandas
        pd = None
    if pd is not None and isinstance(data, pd.DataFrame | pd.Series):
        frame = data.to_frame() if isinstance(data, pd.Series) else data
        digest.update(repr([(str(c), str(t)) for c, t in frame.dtypes.items()]).encode())
        digest.update(pd.util.hash_pandas_object(data, index=True).to_numpy().tobytes())
    else:
        try:
            digest.update(pickle.dumps(data, protocol=5))
        except Exception as exc:
            raise PipelineError(
                f"dataset {name!r}: cannot fingerprint its content to key the cache "
                f"(pickling it failed: {type(exc).__name__}: {exc})"
            ) from exc
    return digest.hexdigest()


# ---------------------------------------------------------------------- writing back
def write_parameters(
    project: KedroProject, params: Mapping[str, Mapping[str, Any]], env: str, header: str
) -> Path:
    """Write a trial's tuned values as ``conf/<env>/parameters_eeipu.yml``.

    Each top-level parameter a tuned key lies under is written whole (the project's value
    with the tuned entries put in), so Kedro's merge of ``<env>`` over ``base`` (which
    replaces top-level keys) keeps the untuned entries. The file is ours: an existing one
    without our header is never overwritten.

    Args:
        project: The opened project.
        params: ``{stage: {param: value}}`` of a trial (stage = node name, param = the
            dotted path after ``params:``).
        env: The environment folder under the project's configuration (not ``base``).
        header: The file's first comment lines (which study and trial).

    Returns:
        The path written.

    Raises:
        PipelineError: ``env`` is ``base``, the file exists and is not ours, or another
            parameters file of ``env`` defines one of the same top-level keys.
    """
    import yaml

    if env == "base":
        raise PipelineError(
            "--env base: Kedro refuses a parameter defined twice in one environment; write "
            "to another (e.g. --env eeipu) and run `kedro run --env eeipu`"
        )
    values = {k: v for section in params.values() for k, v in section.items()}
    tops: dict[str, Any] = {}
    for key in values:
        top = key.split(".")[0]
        tops[top] = _param_input(project, f"{_PARAMS}{top}")
    for key, v in values.items():
        top = key.split(".")[0]
        tops[top] = _with_values(tops[top], f"{_PARAMS}{top}", {key: v})
    folder = project.conf_source / env
    target = folder / "parameters_eeipu.yml"
    mark = "# written by `kedro eeipu best --write`"
    if target.exists() and not target.read_text().startswith(mark):
        raise PipelineError(f"{target} exists and was not written by eeipu: not overwriting it")
    for other in sorted(folder.glob("parameters*")) if folder.is_dir() else []:
        if other.name == target.name or other.is_dir():
            continue
        theirs = yaml.safe_load(other.read_text()) or {}
        clash = sorted(set(theirs) & set(tops)) if isinstance(theirs, Mapping) else []
        if clash:
            raise PipelineError(
                f"{other} already sets {clash} in environment {env!r}: Kedro would refuse the "
                f"duplicate; write to another environment (--env)"
            )
    folder.mkdir(parents=True, exist_ok=True)
    text = f"{mark}\n{header}" + yaml.safe_dump(tops, sort_keys=False)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(text)
    tmp.replace(target)
    return target
