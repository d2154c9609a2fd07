"""The controller flow (one study) and the trial subflow (one configuration).

    tune_flow(config)            controller: warm-up, then ask -> trial-<n> -> tell until
                                 the budget is spent; journal, outputs and artifacts
    trial_flow(config, n, params) one configuration's stages, each a cached Prefect task

Both take JSON-only parameters (so the Prefect UI shows them and a deployment can run them);
credentials never travel in them: the store reads them from the environment or from
``storage.options`` given to this process.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, replace
from typing import Any

from prefect import flow, get_run_logger, tags
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from eeipu import Optimizer, SearchSpace, TrialState
from flows._config import ConfigError, StudyConfig
from flows._eviction import reuse_value
from flows._journal import StudyJournal
from flows._outputs import (
    artifact_key,
    best_markdown,
    best_so_far,
    progress_line,
    trial_rows,
    write_outputs,
)
from flows._warm import open_study, resolve_budget
from stages import (
    Pipeline,
    StageError,
    Store,
    StoreCacheView,
    StoreUnavailable,
    run_pipeline,
)

__all__ = [
    "StudyFailed",
    "StudyResult",
    "build_pipeline",
    "more_to_run",
    "prepare",
    "report_finished",
    "run_study",
    "trial_flow",
    "tune_flow",
]

logger = logging.getLogger("eeipu")


class StudyFailed(RuntimeError):
    """The study stopped before its budget was spent (a stage failed, say)."""


@dataclass(frozen=True)
class StudyResult:
    study: str
    n_trials: int
    spent: float
    best_objective: float | None
    best_params: dict[str, Any] | None
    outputs: dict[str, str]
    journal_url: str


# ---------------------------------------------------------------------- building blocks
def build_pipeline(config: StudyConfig) -> Pipeline:
    """Call the configured factory; apply the YAML search space over the stages' own."""
    factory = config.pipeline.factory()
    try:
        pipeline = factory(**config.pipeline.kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"`pipeline.kwargs` do not fit {config.pipeline.target}: {exc}") from exc
    if not isinstance(pipeline, Pipeline):
        raise ConfigError(
            f"`pipeline.target` {config.pipeline.target} must return a stages.Pipeline, "
            f"but returned {type(pipeline).__name__}"
        )
    space = config.pipeline.space
    if space is not None:
        unknown = sorted(set(space) - set(pipeline.stage_names))
        if unknown:
            raise ConfigError(
                f"`pipeline.space` names unknown stage(s) {unknown}; stages are {pipeline.stage_names}"
            )
        stages = [replace(s, space=space.get(s.name, s.space)) for s in pipeline.stages]
        pipeline = Pipeline(
            stages,
            metric=config.pipeline.metric or pipeline.metric,
            load_cost=pipeline.load_cost,
        )
    elif config.pipeline.metric:
        pipeline = Pipeline(
            pipeline.stages, metric=config.pipeline.metric, load_cost=pipeline.load_cost
        )
    tagged = config.pipeline.stage_tags
    if tagged:
        unknown = sorted(set(tagged) - set(pipeline.stage_names))
        if unknown:
            raise ConfigError(
                f"`pipeline.stage_tags` names unknown stage(s) {unknown}; stages are {pipeline.stage_names}"
            )
        stages = [replace(s, tags=(*s.tags, *tagged.get(s.name, ()))) for s in pipeline.stages]
        pipeline = Pipeline(stages, metric=pipeline.metric, load_cost=pipeline.load_cost)
    return pipeline


_stores: dict[str, Store] = {}


def _store(config: StudyConfig) -> Store:
    # One Store per URL and process: the trial subflow gets the controller's store
    # (with any storage.options) without credentials passing through flow parameters.
    if config.storage.url not in _stores:
        _stores[config.storage.url] = Store(
            config.storage.url,
            config.storage.options,
            retry_seconds=config.storage.retry_seconds,
        )
    return _stores[config.storage.url]


@functools.lru_cache(maxsize=8)
def _cached_pipeline(config_json: str) -> Pipeline:
    return build_pipeline(StudyConfig.from_mapping(json.loads(config_json)))


def _config_from(config: dict[str, Any]) -> StudyConfig:
    return StudyConfig.from_mapping(config)


# ---------------------------------------------------------------------- the flows
@flow(name="eeipu-trial", log_prints=False, validate_parameters=False, persist_result=False)
def trial_flow(
    config: dict[str, Any],
    number: int,
    params: dict[str, Any],
    adopt_after: float | None = None,
) -> dict[str, Any]:
    """Run one configuration: each stage a Prefect task, cached by its Merkle key.

    ``adopt_after`` is set when this trial re-runs after a crash interrupted it: what its
    first attempt stored is loaded and charged as computed (see ``run_pipeline``).
    """
    cfg = _config_from(config)
    pipeline = _cached_pipeline(json.dumps(config, sort_keys=True))
    result = run_pipeline(
        pipeline,
        params,
        _store(cfg),
        retries=cfg.retries,
        retry_delay_seconds=cfg.retry_delay_seconds,
        adopt_after=adopt_after,
    )
    return {
        "objective": result.objective,
        "costs": result.costs,
        "cached": sorted(result.cached_stages),
        "adopted": sorted(result.adopted),
        "seconds": result.seconds,
        "keys": result.keys,
    }


@flow(name="eeipu-study", log_prints=False, validate_parameters=False, persist_result=False)
def tune_flow(config: dict[str, Any]) -> StudyResult:
    """Run (or resume) a study until its budget is spent; see the module docstring."""
    cfg = _config_from(config)
    # A scheduled run (extra_budget set) continues the study with more budget.
    cfg = resolve_budget(cfg, _store(cfg))
    if cfg.parallel > 1:
        from flows._parallel import run_parallel_study  # it imports this module

        return run_parallel_study(cfg)
    return run_study(cfg)


def prepare(cfg: StudyConfig) -> tuple[Pipeline, Store, Optimizer, StudyJournal]:
    """Build and check everything a study needs, then open (or check) its journal.

    Called before the controller flow starts, so bad input fails fast with one line and
    leaves no flow run, journal or cache folder behind.
    """
    # Cached per process: the CLI prepares once to fail fast, the flow again, and every trial
    # subflow looks the pipeline up; factories may be slow (data loading, warm-up).
    pipeline = _cached_pipeline(json.dumps(cfg.to_dict(), sort_keys=True))
    space = SearchSpace.from_dict(pipeline.space_dict())
    opt = Optimizer(
        space,
        method=cfg.method,
        budget=cfg.budget,
        n_init=cfg.n_init,
        seed=cfg.seed,
        direction=cfg.pipeline.direction,
        max_prefixes=cfg.max_prefixes,
        method_options=cfg.method_options,
    )
    store = _store(cfg)
    store.check()
    journal = StudyJournal(store, cfg.study)
    open_study(journal, cfg, space, opt)  # journal.open + warm-start priors
    return pipeline, store, opt, journal


def more_to_run(cfg: StudyConfig, opt: Optimizer, n_trials: int) -> bool:
    """Whether the study may ask another trial: budget left and fewer than ``max_trials``."""
    return not opt.done and (cfg.max_trials is None or n_trials < cfg.max_trials)


def report_finished(
    cfg: StudyConfig, opt: Optimizer, records: list[dict[str, Any]], journal: StudyJournal
) -> StudyResult:
    """Answer for a study with nothing left to run, from its replayed journal.

    Writes the outputs and prints the summary that a finished run does, without a flow run
    or any call to the Prefect API (so no server starts): the run that spent the budget has
    made the study's artifacts.
    """
    reason = f"budget {cfg.budget:g} spent" if opt.done else f"max_trials={cfg.max_trials} reached"
    _say(
        _logger(),
        cfg,
        f"study {cfg.study!r}: nothing left to run ({reason}); raise `budget` or `max_trials`, "
        "or set `extra_budget`, to continue it",
    )
    workers = cfg.parallel if cfg.parallel > 1 else None
    return finish_study(cfg, opt, records, journal, None, workers=workers, artifacts=False)


def run_study(cfg: StudyConfig) -> StudyResult:
    run_logger = _logger()
    pipeline, store, opt, journal = prepare(cfg)
    records = journal.replay(opt)
    config_json = cfg.to_dict()
    _say(
        run_logger,
        cfg,
        f"study {cfg.study!r}: pipeline {cfg.pipeline.name} ({' -> '.join(pipeline.stage_names)}), "
        f"method {cfg.method}, budget {cfg.budget:g}, seed {cfg.seed}; cache {store.url}"
        + (f"; resuming after {len(records)} trials, spent {opt.spent:.4g}" if records else ""),
    )
    progress_id = create_progress_artifact(
        progress=min(100.0, 100.0 * opt.spent / cfg.budget),
        key=artifact_key(cfg.study, "progress"),
        description=f"Budget spent by study {cfg.study}",
    )
    failure: str | None = None
    interrupted = journal.running()
    failed_in_a_row = 0
    hint = "fix the stage and re-run the same command to resume"
    journaled = len(records)
    try:
        while more_to_run(cfg, opt, len(records)):
            t0 = time.time()
            trial = opt.ask(cache=StoreCacheView(pipeline, store))
            state = opt.state_dict()
            asked = time.time()
            adopt_after = None
            if interrupted is not None and interrupted["number"] == trial.number:
                # The process died while this trial ran: re-run it from what it stored.
                adopt_after = float(interrupted["started_at"])
                _say(run_logger, cfg, f"trial {trial.number} was interrupted; re-running it")
            interrupted = None
            journal.mark_running(trial.number, trial.params, adopt_after or t0)
            try:
                with tags(f"study:{cfg.study}"):
                    out = trial_flow.with_options(flow_run_name=f"trial-{trial.number}")(
                        config_json, trial.number, trial.params, adopt_after
                    )
                objective, costs, cached = out["objective"], out["costs"], out["cached"]
                seconds, error = out["seconds"], None
                if not math.isfinite(objective):
                    objective, error = None, f"objective is {objective!r}"
            except StageError as exc:
                objective, costs, cached, seconds = None, dict(exc.costs), [], dict(exc.seconds)
                error = str(exc)
            told = opt.tell(trial, objective=objective, costs=costs, cached=cached)
            record = {
                **told.to_dict(),
                "error": error,
                "seconds": seconds,
                "started_at": t0,
                "ask_seconds": round(asked - t0, 6),
                "finished_at": time.time(),
                "optimizer_state": state,
            }
            records.append(record)
            if cfg.storage.max_bytes is not None:
                evicted = store.evict(
                    cfg.storage.max_bytes,
                    reuse_value(pipeline, records, cfg.pipeline.direction),
                )
                record["evicted"] = len(evicted)
                if evicted:
                    run_logger.info(
                        "evicted %d cache entries to stay under storage.max_bytes=%d",
                        len(evicted),
                        cfg.storage.max_bytes,
                    )
            journal.append(record)
            journaled = len(records)
            best = best_so_far(records, cfg.pipeline.direction)[-1]
            _say(run_logger, cfg, progress_line(record, best, opt.spent, cfg.budget))
            update_progress_artifact(
                progress_id, progress=min(100.0, 100.0 * opt.spent / cfg.budget)
            )
            if told.state is TrialState.FAILED:
                failed_in_a_row += 1
                if not cfg.continue_on_failure:
                    failure = f"trial {told.number} failed: {error}"
                    break
                if failed_in_a_row >= cfg.max_failures_in_a_row:
                    failure = (
                        f"{failed_in_a_row} trials failed in a row (max_failures_in_a_row), the "
                        f"last one {told.number}: {error}"
                    )
                    break
            else:
                failed_in_a_row = 0
    except StoreUnavailable as exc:
        # Not the trial's fault: stop (nothing told is lost) and resume later.
        failure, hint = str(exc), "the study resumes from there"
    return finish_study(cfg, opt, records, journal, failure, journaled=journaled, hint=hint)


def finish_study(
    cfg: StudyConfig,
    opt: Optimizer,
    records: list[dict[str, Any]],
    journal: StudyJournal,
    failure: str | None,
    *,
    journaled: int | None = None,
    hint: str = "fix the stage and re-run the same command to resume",
    workers: int | None = None,
    artifacts: bool = True,
) -> StudyResult:
    """Write outputs and (with ``artifacts``) the Prefect artifacts, then raise
    :class:`StudyFailed` or return the result."""
    paths = write_outputs(
        cfg.output_dir, cfg.study, records, cfg.pipeline.direction, opt.warmup_spent
    )
    best = opt.best_trial
    if artifacts:
        create_table_artifact(
            key=artifact_key(cfg.study, "trials"),
            table=trial_rows(records, cfg.pipeline.direction),
            description=f"Trials of study {cfg.study}",
        )
        create_markdown_artifact(
            key=artifact_key(cfg.study, "best"),
            markdown=best_markdown(
                cfg.study, None if best is None else best.to_dict(), opt.spent, len(records)
            ),
            description=f"Best configuration of study {cfg.study}",
        )
    if failure is not None:
        raise StudyFailed(
            f"study {cfg.study!r} stopped: {failure} "
            f"({len(records) if journaled is None else journaled} trials are in the journal "
            f"at {journal.url}; {hint}"
            + ("" if cfg.continue_on_failure else ", or set continue_on_failure=true")
            + ")"
        )
    _say(
        _logger(),
        cfg,
        f"done: {len(records)} trials"
        + (f" on {workers} workers" if workers else "")
        + f", spent {opt.spent:.4g}/{cfg.budget:g}; best "
        + ("-" if best is None else f"{best.objective:.6g} (trial {best.number})")
        + f"; outputs in {cfg.output_dir}",
    )
    return StudyResult(
        study=cfg.study,
        n_trials=len(records),
        spent=opt.spent,
        best_objective=None if best is None else best.objective,
        best_params=None if best is None else best.params,
        outputs={k: str(v) for k, v in paths.items()},
        journal_url=journal.url,
    )


def _logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except Exception:
        return logger


def _say(run_logger: Any, cfg: StudyConfig, line: str) -> None:
    if cfg.progress:
        print(line, file=sys.stderr, flush=True)
    run_logger.debug(line) if cfg.progress else run_logger.info(line)
