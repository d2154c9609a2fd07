"""The Python API: a study built from arguments, run by :meth:`Study.optimize`.

``eeipu tune`` and ``python -m flows.tune`` go the same way: they validate the composed YAML
into a :class:`~flows.StudyConfig` and call :meth:`Study.from_config` and
:meth:`Study.optimize`.

Example:
    >>> from flows import Study
    >>> study = Study(
    ...     "stages.testing:synthetic_pipeline", budget=40, method="ei", name="demo",
    ...     storage="/tmp/eeipu-demo", n_init=4, progress=False,
    ... )
    >>> study.config.optimizer.method, study.config.pipeline.target
    ('ei', 'stages.testing:synthetic_pipeline')
    >>> result = study.optimize()  # doctest: +SKIP
    >>> result.best_objective, result.best_params  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flows._config import ConfigError, StudyConfig
from flows._finished import StudyResult
from flows.runtime import OBJECT_TARGET, StudyContext
from stages import DEFAULT_STORE_URL, Pipeline, Store

__all__ = ["Study"]


class Study:
    """A tuning study: a pipeline, its search space, a budget, a storage and a method.

    Args:
        pipeline: A :class:`stages.Pipeline`, or the factory that builds one as
            ``"module:function"`` (needed where trials run in other processes:
            ``executor="work_pool"`` or ``"task_workers"``).
        budget: The total cost budget, warm-up included (the stages' cost unit).
        space: ``{stage: {param: spec}}`` in place of the stages' declared search space.
        storage: Where the stage cache and the study journal live: a folder or an fsspec
            URL such as ``s3://bucket/prefix``.
        storage_options: fsspec options of ``storage`` (maybe credentials): never
            serialized, logged or shown.
        method: The optimizer method: ``eeipu``, ``ei``, ``eips``, ``carbo``, ...
        method_options: The method's keyword options.
        name: The study's name (its journal and outputs); an existing study resumes.
            Default: ``<pipeline>-<method>-seed<seed>``, as the command line.
        kwargs: Keyword arguments of the factory (they join every stage's cache key).
        **settings: Any other key of the study configuration (:class:`flows.StudyConfig`),
            e.g. ``seed``, ``n_init``, ``max_trials``, ``output_dir``, ``progress``,
            ``parallel``, ``executor``, ``direction`` or ``metric``.

    Raises:
        ConfigError: One line naming the offending argument (as its configuration key)
            and the rule.
    """

    def __init__(
        self,
        pipeline: Pipeline | str,
        *,
        budget: float,
        space: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
        storage: str = DEFAULT_STORE_URL,
        storage_options: Mapping[str, Any] | None = None,
        method: str = "eeipu",
        method_options: Mapping[str, Any] | None = None,
        name: str | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **settings: Any,
    ) -> None:
        section = _pipeline_section(pipeline, space, kwargs, settings)
        seed = settings.get("seed", 0)
        self.pipeline = pipeline if isinstance(pipeline, Pipeline) else None
        self.config = StudyConfig.from_mapping(
            {
                "study": name or f"{section['name']}-{method}-seed{seed}",
                "budget": budget,
                "pipeline": section,
                "optimizer": {"method": method, "options": dict(method_options or {})},
                "storage": {"url": storage, "options": dict(storage_options or {})},
                **settings,
            }
        )

    @classmethod
    def from_config(cls, config: StudyConfig, pipeline: Pipeline | None = None) -> Study:
        """The study of a validated ``config`` (what ``eeipu tune`` composes), with
        ``pipeline`` in place of ``config.pipeline.target``'s when given."""
        study = cls.__new__(cls)
        study.config, study.pipeline = config, pipeline
        return study

    def optimize(self) -> StudyResult:
        """Run (or resume) the study until its budget is spent or ``max_trials`` is reached.

        A study with nothing left to run is answered from its journal. Runs the controller
        flow on Prefect: the server ``PREFECT_API_URL`` names, else a temporary one.

        Returns:
            The :class:`~flows.StudyResult`: best trial, value and parameters, trials run,
            budget spent, output files and the journal's URL.

        Raises:
            ConfigError: Bad input (a pipeline section that does not fit, say).
            StudyFailed: The study stopped early (a failing stage, storage outage).
        """
        from flows._finished import answer_finished
        from flows._warm import resolve_budget

        cfg = self.config
        store = Store(cfg.storage.url, cfg.storage.options, retry_seconds=cfg.storage.retry_seconds)
        if cfg.storage.protocol != "file":
            # One clear line for an unreachable endpoint, before reading the journal (retries
            # would take storage.retry_seconds). A local folder is made only once the rest of
            # the input is checked (prepare): bad input leaves nothing behind.
            store.check()
        cfg = resolve_budget(cfg, store)  # extra_budget: continue with more budget
        # A finished study whose outputs are up to date: from its journal (no torch, no Prefect).
        finished = answer_finished(cfg, store)
        if finished is not None:
            return finished
        # Prefect (seconds to import) only for a valid config: a bad one is answered first.
        from flows import _interrupt

        # Prefect's temporary server (no PREFECT_API_URL) starts now, in its own process, while
        # torch and Prefect's engine import below; prefect_api() waits for it.
        with _interrupt.early_server():
            return _run(StudyContext.build(cfg, self.pipeline, store))


def _run(context: StudyContext) -> StudyResult:
    """Check the study (bad input fails before any flow run exists), then run its
    controller flow, or answer from its journal when it has nothing left to run."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from flows._interrupt import prefect_api
    from flows.study import more_to_run, prepare, report_finished, tune_flow

    cfg = context.config
    opt, journal = prepare(context)
    records = journal.replay(opt)
    if not more_to_run(cfg, opt, len(records)):
        # The flow would only replay the journal and stop; answering here needs no Prefect
        # server and no flow run.
        return report_finished(cfg, opt, records, journal)
    # The heartbeat thread makes every flow run wait ~1 s at exit: one per trial subflow.
    # Prefect's temporary server (no PREFECT_API_URL) is ours, out of the terminal's reach.
    # The context (store with its credentials, pipeline) goes to the flow as an argument;
    # Prefect records only its summary.
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}), prefect_api():
        return tune_flow.with_options(flow_run_name=cfg.study)(cfg, context)


def _pipeline_section(
    pipeline: Any,
    space: Mapping[str, Any] | None,
    kwargs: Mapping[str, Any] | None,
    settings: dict[str, Any],
) -> dict[str, Any]:
    """The ``pipeline`` section of the configuration for :class:`Study`'s arguments (the
    section's keys among ``settings`` are taken from there)."""
    section: dict[str, Any] = {
        key: settings.pop(key) for key in ("direction", "metric") if key in settings
    }
    if isinstance(pipeline, Pipeline):
        if kwargs:
            raise ConfigError("`kwargs` are for a factory target; a Pipeline object takes none")
        # The journal checks a resumed study's space; an object has no factory to ask.
        space = space if space is not None else pipeline.space_dict()
        return {**section, "name": "pipeline", "target": OBJECT_TARGET, "space": space}
    if not isinstance(pipeline, str):
        raise ConfigError(
            "`pipeline` must be a stages.Pipeline or a factory 'module:function', "
            f"but got {type(pipeline).__name__}"
        )
    name = pipeline.replace(":", ".").rsplit(".", 1)[-1]
    return {
        **section,
        "name": name,
        "target": pipeline,
        "kwargs": dict(kwargs or {}),
        "space": space,
    }
