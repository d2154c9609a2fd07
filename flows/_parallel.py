"""Parallel trials on Prefect workers (``parallel: N`` with N > 1).

The trial subflow is also a deployment, ``eeipu-trial/<work_pool>``, of
:func:`remote_trial_flow` (the same body as :func:`flows.study.trial_flow`). The controller
keeps N trials in flight with ``run_deployment`` on the work pool ``work_pool``; Prefect
workers polling that pool run them (``prefect worker start --pool eeipu --type process`` on
one machine; a Kubernetes, ECS, Docker... pool in production: the workers need the project
installed and the same ``storage.url``). Each trial writes its outcome next to the study's
journal (``studies/<study>/outcomes/<flow run id>.json``) on the shared storage, where the
controller reads it, so no Prefect result storage is involved.

How the optimizer proposes while trials are pending: ``Optimizer.ask`` sees the asked but
untold trials. Their outcomes are fantasized with the objective GP's posterior mean (kriging
believer), so EI does not propose them or their neighbours again, and their proper prefixes
join the prefix pool as about to be cached.

No stage key is computed twice at the same time: **the controller avoids the overlap**.
Before it submits a trial, it compares the trial's stage keys that are not yet in the store
with those of the trials in flight; on any overlap it holds the trial back until the trials
it shares keys with have finished, so it loads those stages instead of recomputing them.
(Only this controller's trials are known: two studies on one storage may still overlap.)

Budget: the controller submits while the told cost is under the budget, so up to N - 1
trials in flight may overshoot it (like the last trial of a sequential study). The journal
numbers records in the order trials finish (``asked_as`` keeps the ask number), so a resumed
study replays them in telling order; trials in flight at a crash are asked anew.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from typing import Any

from prefect import flow, tags
from prefect.artifacts import (
    create_progress_artifact,
    update_progress_artifact,
)

from eeipu import Trial, TrialState
from flows._config import StudyConfig
from flows._outputs import (
    artifact_key,
    best_so_far,
    progress_line,
)
from flows.study import (
    StudyResult,
    _config_from,
    _logger,
    _say,
    _store,
    finish_study,
    more_to_run,
    prepare,
    trial_flow,
)
from stages import StageError, Store, StoreCacheView

__all__ = ["register_trial_deployment", "remote_trial_flow", "run_parallel_study"]

_FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
_POLL_SECONDS = 0.5
_ATTEMPTS = 2  # a run that ends without an outcome (worker or infrastructure died) is retried


@flow(name="eeipu-trial", log_prints=False, validate_parameters=False, persist_result=False)
def remote_trial_flow(config: dict[str, Any], number: int, params: dict[str, Any]) -> dict:
    """One trial on a worker: :func:`flows.study.trial_flow`'s body, then its outcome
    written to the shared storage for the controller."""
    from prefect.runtime import flow_run

    cfg = _config_from(config)
    store = _store(cfg)
    run_id = str(flow_run.id)
    outcome: dict[str, Any] = {
        "number": number,
        "flow_run_id": run_id,
        # The worker process (a process worker starts each run as its child).
        "worker": f"{socket.gethostname()}:{os.getppid()}",
    }
    try:
        out = trial_flow.fn(config, number, params)
    except StageError as exc:
        outcome.update(error=str(exc), costs=dict(exc.costs), seconds=dict(exc.seconds))
        _publish(store, cfg.study, run_id, outcome)
        raise
    outcome.update(out, error=None)
    _publish(store, cfg.study, run_id, outcome)
    return outcome


def _outcome_path(study: str, run_id: str) -> str:
    return f"studies/{study}/outcomes/{run_id}.json"


def _has_outcome(store: Store, study: str, run_id: str) -> bool:
    return run_id + ".json" in store.list_files(f"studies/{study}/outcomes")


def _publish(store: Store, study: str, run_id: str, outcome: dict[str, Any]) -> None:
    data = json.dumps(outcome, sort_keys=True, default=float).encode("utf-8")
    store.write_file(_outcome_path(study, run_id), data)


def register_trial_deployment(pool: str) -> str:
    """Create the process work pool ``pool`` if missing and (re)register the trial
    deployment on it; returns its name for ``run_deployment``."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.deployments.runner import EntrypointType
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    deployment = remote_trial_flow.to_deployment(
        name=pool,
        work_pool_name=pool,
        entrypoint_type=EntrypointType.MODULE_PATH,
        description="One eeipu trial (all stages of one configuration); run by the controller",
    )
    deployment.apply()
    return f"eeipu-trial/{pool}"


class _InFlight:
    def __init__(self, trial: Trial, keys: set[str], run_id: str, t0: float, ask_s: float):
        self.trial, self.keys, self.run_id, self.t0, self.ask_s = trial, keys, run_id, t0, ask_s
        self.attempt = 1
        self.waited_for: list[int] = []  # trials it was held back for (shared stage keys)


def run_parallel_study(cfg: StudyConfig) -> StudyResult:
    """The controller loop with ``cfg.parallel`` trials in flight (see the module doc)."""
    from prefect import get_client
    from prefect.deployments import run_deployment

    run_logger = _logger()
    pipeline, store, opt, journal = prepare(cfg)
    records = journal.replay(opt)
    config_json = cfg.to_dict()
    name = register_trial_deployment(cfg.work_pool)
    _say(
        run_logger,
        cfg,
        f"study {cfg.study!r}: pipeline {cfg.pipeline.name}, method {cfg.method}, budget "
        f"{cfg.budget:g}, {cfg.parallel} trials in flight on work pool {cfg.work_pool!r}; "
        f"cache {store.url}"
        + (f"; resuming after {len(records)} trials, spent {opt.spent:.4g}" if records else ""),
    )
    progress_id = create_progress_artifact(
        progress=min(100.0, 100.0 * opt.spent / cfg.budget),
        key=artifact_key(cfg.study, "progress"),
        description=f"Budget spent by study {cfg.study}",
    )
    view = StoreCacheView(pipeline, store)
    in_flight: dict[str, _InFlight] = {}
    held: list[tuple[Trial, set[str], float, float]] = []  # waiting for an overlap to end
    waited: dict[int, list[int]] = {}  # trial -> the trials it was held back for
    failure: str | None = None

    def uncached(params: dict[str, Any]) -> set[str]:
        return {k for k in pipeline.keys(params).values() if not store.exists(k)}

    def submit(trial: Trial, keys: set[str], t0: float, ask_s: float, attempt: int = 1) -> None:
        with tags(f"study:{cfg.study}"):
            run = run_deployment(
                name,
                parameters={"config": config_json, "number": trial.number, "params": trial.params},
                flow_run_name=f"trial-{trial.number}",
                timeout=0,
            )
        in_flight[str(run.id)] = _InFlight(trial, keys, str(run.id), t0, ask_s)
        in_flight[str(run.id)].attempt = attempt
        in_flight[str(run.id)].waited_for = waited.get(trial.number, [])

    def overlaps(keys: set[str]) -> bool:
        return any(keys & f.keys for f in in_flight.values())

    def room() -> bool:
        n = len(records) + len(in_flight) + len(held)
        return (
            failure is None
            and more_to_run(cfg, opt, n)
            and len(in_flight) + len(held) < cfg.parallel
        )

    with get_client(sync_client=True) as client:
        while True:
            # Release held trials whose overlapping trials have finished.
            for item in list(held):
                keys = uncached(item[0].params)
                if not overlaps(keys):
                    held.remove(item)
                    submit(item[0], keys, item[2], item[3])
            while room():
                t0 = time.time()
                trial = opt.ask(cache=view)
                ask_s = time.time() - t0
                keys = uncached(trial.params)
                if overlaps(keys):
                    blockers = [f.trial.number for f in in_flight.values() if keys & f.keys]
                    waited[trial.number] = blockers
                    run_logger.info(
                        "trial %d waits for trial(s) %s: they compute stage keys it needs",
                        trial.number,
                        blockers,
                    )
                    held.append((trial, keys, t0, ask_s))
                else:
                    submit(trial, keys, t0, ask_s)
            if not in_flight:
                break
            finished = []
            while not finished:
                time.sleep(_POLL_SECONDS)
                for run_id in in_flight:
                    state = client.read_flow_run(run_id).state
                    if state is not None and state.type.value in _FINAL:
                        finished.append((run_id, state))
            for run_id, state in finished:
                item = in_flight.pop(run_id)
                if item.attempt < _ATTEMPTS and not _has_outcome(store, cfg.study, run_id):
                    run_logger.warning(
                        "trial %d: flow run %s ended %s without an outcome (%s); retrying it",
                        item.trial.number,
                        run_id,
                        state.name,
                        state.message,
                    )
                    submit(item.trial, item.keys, item.t0, item.ask_s, item.attempt + 1)
                    continue
                record = _tell(opt, store, cfg, item, state)
                record["number"] = len(records)
                records.append(record)
                journal.append(record)
                best = best_so_far(records, cfg.pipeline.direction)[-1]
                _say(run_logger, cfg, progress_line(record, best, opt.spent, cfg.budget))
                update_progress_artifact(
                    progress_id, progress=min(100.0, 100.0 * opt.spent / cfg.budget)
                )
                if record["state"] == TrialState.FAILED.value and not cfg.continue_on_failure:
                    failure = failure or f"trial {record['asked_as']} failed: {record['error']}"
            if failure is not None and held:
                # Nothing new starts after a failure; held trials were never submitted.
                held.clear()
    return _finish(cfg, opt, records, journal, failure)


def _tell(opt: Any, store: Store, cfg: StudyConfig, item: _InFlight, state: Any) -> dict:
    try:
        out = json.loads(store.read_file(_outcome_path(cfg.study, item.run_id)))
    except FileNotFoundError:
        out = {
            "error": f"flow run {item.run_id} ended {state.name} without an outcome: {state.message}"
        }
    error = out.get("error")
    objective = None if error else out.get("objective")
    if objective is not None and not math.isfinite(objective):
        objective, error = None, f"objective is {objective!r}"
    costs = out.get("costs") or {}
    if objective is None:
        costs = {s: c for s, c in costs.items() if s in opt.space.stages}
    told = opt.tell(
        item.trial,
        objective=objective,
        costs=costs,
        cached=out.get("cached", []) if objective is not None else [],
    )
    return {
        **told.to_dict(),
        "asked_as": told.number,
        "error": error,
        "seconds": out.get("seconds", {}),
        "keys": out.get("keys", {}),
        "worker": out.get("worker"),
        "waited_for": item.waited_for,
        "flow_run_id": item.run_id,
        "started_at": item.t0,
        "ask_seconds": round(item.ask_s, 6),
        "finished_at": time.time(),
    }


def _finish(cfg: StudyConfig, opt: Any, records: list, journal: Any, failure: str | None):
    return finish_study(cfg, opt, records, journal, failure, workers=cfg.parallel)
