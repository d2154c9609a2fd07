"""The study: one controller flow and one loop, whatever runs the trials.

    tune_flow(config)    the controller flow: warm-up, then ask -> run -> tell until the
                         budget is spent; journal, outputs and artifacts
    run_study(cfg)       the loop it runs (:class:`StudyLoop`)

The loop owns asking, telling, the journal, the crash marker, eviction, the failure streak,
storage outages, progress and artifacts. An executor (:mod:`flows.executors`) runs the
trials: one at a time in this process, N at a time on its threads, or N at a time on a
Prefect work pool; the loop keeps up to ``executor.slots`` trials in flight.

With trials in flight, ``Optimizer.ask`` sees them as pending: their outcomes are
fantasized (kriging believer), so EI does not propose them or their neighbours again, and
their proper prefixes join the prefix pool as about to be cached. No stage key is computed
twice at the same time: before it submits a trial, the loop compares the trial's stage keys
that are not yet in the store with those of the trials in flight, and holds the trial back
until the trials it shares keys with have finished, so it loads those stages instead of
recomputing them. (Only this study's trials are known: two studies on one storage may
still overlap.)

The journal numbers records in the order trials finish (``asked_as`` keeps the ask number
of the run that asked it), so a resumed study replays them in telling order. Before a
trial starts, the crash marker lists every trial in flight; a resumed study re-asks those
that were not told (``Optimizer.enqueue``), re-runs them and adopts the stages they stored.

Flows take a typed :class:`flows.StudyConfig` (Prefect validates it) and, in the process
that built it, the study's :class:`~flows.runtime.StudyContext` (its store and pipeline);
credentials never travel in either: ``storage.options`` is left out of the config's
serialized form, the context's is a summary, and a worker's store reads them from its
environment.
"""

from __future__ import annotations

import logging
import sys
import time
import uuid
from typing import Any

from prefect import flow
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from eeipu import Optimizer, SearchSpace, Trial
from flows._config import ConfigError, StudyConfig
from flows._eviction import reuse_value
from flows._finished import StudyResult, done_line, nothing_left_line
from flows._interrupt import StudyInterrupted, interrupted, journaled, stop_by
from flows._journal import StudyJournal
from flows._outputs import (
    artifact_key,
    best_markdown,
    best_so_far,
    progress_line,
    recommended_record,
    record_of,
    trial_rows,
    write_outputs,
)
from flows._progress import FILE_ONLY, ProgressBar
from flows._warm import open_study, resolve_budget
from flows.executors import TrialExecutor, TrialJob, executor_for, executor_kind
from flows.records import AskedTrial, Recommended, RunningTrial, TrialOutcome, TrialRecord
from flows.runtime import StudyContext, run_logger, say
from stages import StoreCacheView, StoreUnavailable

__all__ = [
    "StudyFailed",
    "StudyInterrupted",
    "StudyLoop",
    "StudyResult",
    "more_to_run",
    "prepare",
    "report_finished",
    "run_study",
    "tune_flow",
]

logger = logging.getLogger("eeipu")

_HINT = "fix the stage and re-run the same command to resume"


class StudyFailed(RuntimeError):
    """The study stopped before its budget was spent (a stage failed, say)."""


def prepare(context: StudyContext | StudyConfig) -> tuple[Optimizer, StudyJournal]:
    """Check everything a study needs (a config is built into its context first), then
    open (or check) its journal; returns the study's optimizer and journal.

    Called before the controller flow starts, so bad input fails fast with one line and
    leaves no flow run, journal or cache folder behind.
    """
    if isinstance(context, StudyConfig):
        context = StudyContext.build(context)
    cfg, pipeline, store = context.config, context.pipeline, context.store
    if not context.portable and executor_kind(cfg) in ("work_pool", "task_workers"):
        raise ConfigError(
            f"`executor` {executor_kind(cfg)} runs trials in other processes, which rebuild "
            "the pipeline from `pipeline.target`: give the study a factory "
            "('module:function'), not a Pipeline object, or use executor=local"
        )
    space = SearchSpace.from_dict(pipeline.space_dict())
    opt = Optimizer(
        space,
        method=cfg.optimizer.method,
        budget=cfg.budget,
        n_init=cfg.n_init,
        seed=cfg.seed,
        direction=cfg.pipeline.direction,
        max_prefixes=cfg.optimizer.max_prefixes,
        method_options=cfg.optimizer.options,
    )
    store.check()
    journal = StudyJournal(store, cfg.study)
    open_study(journal, cfg, space, opt)  # journal.open + warm-start priors
    return opt, journal


def more_to_run(cfg: StudyConfig, opt: Optimizer, n_trials: int) -> bool:
    """Whether the study may ask another trial: budget left and fewer than ``max_trials``."""
    return not opt.done and (cfg.max_trials is None or n_trials < cfg.max_trials)


def report_finished(
    cfg: StudyConfig, opt: Optimizer, records: list[TrialRecord], journal: StudyJournal
) -> StudyResult:
    """Answer for a study with nothing left to run, from its replayed journal.

    Writes the outputs and prints the summary that a finished run does, without a flow run
    or any call to the Prefect API (so no server starts): the run that spent the budget has
    made the study's artifacts. (``eeipu tune`` asks :func:`flows._finished.answer_finished`
    first, which answers without the optimizer when the outputs are up to date.)
    """
    reason = why_done(cfg, opt, len(records))
    announce(cfg, nothing_left_line(cfg, reason), logger)
    workers = cfg.parallel if cfg.parallel > 1 else None
    return finish_study(
        cfg, opt, records, journal, None, workers=workers, artifacts=False, stopped=reason
    )


def why_done(cfg: StudyConfig, opt: Optimizer, n_trials: int) -> str:
    """Why :func:`more_to_run` says no, in words: the budget or ``max_trials``."""
    if opt.done:
        return f"budget {cfg.budget:g} spent"
    return f"max_trials={cfg.max_trials} reached"


def announce(
    cfg: StudyConfig,
    line: str,
    log: Any = None,
    *,
    bar: ProgressBar | None = None,
    detail: str | None = None,
) -> None:
    """Say ``line`` as :func:`flows.runtime.say` does (above the progress ``bar`` when one
    is drawn), and keep it in the run's log file (``tune.log``) with ``detail`` (a failed
    trial's traceback), which the console does not show."""
    log = run_logger() if log is None else log
    if bar is not None:
        bar.write(line)
        log.debug(line)
    else:
        say(cfg, line, log)
    # Printed, or sent to the run logger (Prefect's, which the CLI keeps at WARNING): the
    # log file gets it from the study's own logger, marked for the file only.
    if cfg.progress or log is not logger:
        logger.info(line + (f"\n{detail.rstrip()}" if detail else ""), extra=FILE_ONLY)
    elif detail:
        logger.info(detail.rstrip(), extra=FILE_ONLY)


@flow(name="eeipu-study", log_prints=False, persist_result=False)
def tune_flow(config: StudyConfig, context: StudyContext | None = None) -> StudyResult:
    """Run (or resume) a study until its budget is spent; see the module docstring.

    ``context``: the study's, from the process that starts the flow (its store, with any
    credentials, and pipeline); a deployment's run builds one from ``config``.
    """
    ctx = StudyContext.build(config) if context is None else context
    # A scheduled run (extra_budget set) continues the study with more budget.
    return run_study(ctx.with_config(resolve_budget(config, ctx.store)))


def run_study(
    context: StudyContext | StudyConfig, executor: TrialExecutor | None = None
) -> StudyResult:
    """Run (or resume) the study of ``context`` (a config is built into one) with
    ``executor`` (default: :func:`~flows.executors.executor_for` the context)."""
    if isinstance(context, StudyConfig):
        context = StudyContext.build(context)
    cfg = context.config
    opt, journal = prepare(context)
    records = journal.replay(opt)
    executor = executor or executor_for(context)
    loop = StudyLoop(context, opt, journal, records, executor)
    try:
        loop.run()
    finally:
        loop.executor.close()
    return finish_study(
        cfg,
        opt,
        records,
        journal,
        loop.failure,
        journaled=loop.journaled,
        hint=loop.hint,
        workers=loop.executor.slots if loop.executor.slots > 1 else None,
        stopped=loop.stop_reason,
    )


class StudyLoop:
    """Ask, run (through the executor), tell and journal until the study is done.

    After :meth:`run`, ``failure`` says why the study stopped early (None: it did not),
    ``hint`` what to do, ``journaled`` how many records the journal holds, and
    ``stop_reason`` why the loop stopped, in words ("budget 40 spent", "max_trials=12
    reached", the failure); what stops it from outside (an interrupt) sets it first.
    """

    def __init__(
        self,
        context: StudyContext,
        opt: Optimizer,
        journal: StudyJournal,
        records: list[TrialRecord],
        executor: TrialExecutor,
    ) -> None:
        self.context = context
        self.cfg, self.pipeline, self.store = context.config, context.pipeline, context.store
        self.opt = opt
        self.journal, self.records, self.executor = journal, records, executor
        self.log = run_logger()
        self.failure: str | None = None
        self.hint = _HINT
        self.journaled = len(records)
        self.failed_in_a_row = 0
        self.in_flight: dict[str, TrialJob] = {}  # trial_id -> job
        self.uncached: dict[str, set[str]] = {}  # trial_id -> its keys not yet stored
        self.held: list[TrialJob] = []  # waiting for trials in flight that share keys
        self.state: dict[str, Any] = {}  # trial_id -> the optimizer's state after its ask
        self.expected: dict[str, float] = {}  # trial_id -> expected cost, while not told
        self.progress_id: Any = None
        self.stop_reason: str | None = None
        self.bar: ProgressBar | None = None  # on a terminal, with `progress`
        self.versions = {s.name: s.identity for s in self.pipeline.stages}  # journaled per trial

    # ------------------------------------------------------------------ the loop
    def run(self) -> None:
        cfg = self.cfg
        announce(
            cfg,
            f"study {cfg.study!r}: pipeline {cfg.pipeline.name} "
            f"({' -> '.join(self.pipeline.stage_names)}), method {cfg.optimizer.method}, "
            f"budget {cfg.budget:g}, seed {cfg.seed}; cache {self.store.url}"
            + (f"; {self.executor.describe()}" if self.executor.slots > 1 else "")
            + (
                f"; resuming after {len(self.records)} trials, spent {self.opt.spent:.4g}"
                if self.records
                else ""
            ),
            self.log,
        )
        self.progress_id = create_progress_artifact(
            progress=self._progress(),
            key=artifact_key(cfg.study, "progress"),
            description=f"Budget spent by study {cfg.study}",
        )
        if ProgressBar.wanted(sys.stderr, cfg.progress):
            self.bar = ProgressBar(
                sys.stderr,
                cfg.budget,
                max_trials=cfg.max_trials,
                spent=self.opt.spent,
                n_trials=len(self.records),
            )
        journaled(self.journaled)
        try:
            self._resume_interrupted()
            while True:
                while interrupted() is None and self._room():
                    self._ask_and_submit()
                if (signum := interrupted()) is not None:
                    self._stop_interrupted(signum)
                if not self.in_flight:
                    break
                done = self.executor.next_outcome()
                while done is not None:
                    self._tell(*done)
                    journaled(self.journaled)
                    if self.failure is not None or interrupted() is not None:
                        self._drop_held()  # nothing new starts; trials in flight finish
                    self._release_held()  # a slot freed: start the trial asked ahead
                    # Every trial that has finished too is told before the next ask: the
                    # ask learns from all of them, and asks in a row (one per freed slot)
                    # share their GP fits.
                    done = self.executor.next_outcome(timeout=0) if self.in_flight else None
        except StoreUnavailable as exc:
            # Not the trial's fault: stop (nothing told is lost) and resume later.
            self.failure, self.hint = str(exc), "the study resumes from there"
        finally:
            self._stopped()

    def _stop_interrupted(self, signum: int) -> None:
        """After SIGINT or SIGTERM (:mod:`flows._interrupt`): ask nothing more, tell the
        trials in flight that finish by the deadline, then raise :class:`StudyInterrupted`.

        A sequential trial runs in this thread, so it has finished (or not yet started)
        when this runs; trials still running at the deadline are left to the crash marker:
        the re-run re-runs them, or waits for a worker's run that is still going.
        """
        self.stop_reason = "interrupted"
        self._drop_held()
        deadline = stop_by() or time.monotonic()
        while self.in_flight and time.monotonic() < deadline:
            # The inline executor answers None at once: its trial has not started.
            done = self.executor.next_outcome(timeout=max(0.0, deadline - time.monotonic()))
            if done is None:
                break
            self._tell(*done)
            journaled(self.journaled)
        raise StudyInterrupted(signum, self.journaled)

    def _stopped(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.stop_reason is None:
            if self.failure is not None:
                self.stop_reason = self.failure
            elif not more_to_run(self.cfg, self.opt, len(self.records)):
                self.stop_reason = why_done(self.cfg, self.opt, len(self.records))

    def _room(self) -> bool:
        busy = len(self.in_flight) + len(self.held)  # asked, not told
        # With several slots, one trial is asked ahead while every slot is busy: the ask
        # (a GP fit and an acquisition optimization, ~0.3 s) then overlaps the trials in
        # flight instead of leaving the slot that frees idle while it runs.
        ahead = 1 if self.executor.slots > 1 else 0
        return (
            self.failure is None
            and more_to_run(self.cfg, self.opt, len(self.records) + busy)
            and busy - self._inheriting() < self.executor.slots + ahead
            # With trials in flight, ask more only while what is spent plus what they are
            # expected to cost leaves budget: the last trial started may overshoot, as in
            # a sequential study, but not every trial in flight.
            and (busy == 0 or self.opt.spent + sum(self.expected.values()) < self.cfg.budget)
            # Past the warm-up trials, ask once the told ones can train the models: before
            # that the ask falls back to a random trial (a fresh, full-price one), where
            # waiting for the next warm-up trial costs a few idle seconds. Waiting for all of
            # them would idle every other slot behind the dearest one.
            and not (
                busy
                and self.opt.warmup_spent is None
                and len(self.records) + busy >= self.opt.n_init
                and not self.opt.model_ready
            )
        )

    def _inheriting(self) -> int:
        """Held trials that need no slot of their own: one per trial in flight that holds
        some back (they wait for stage keys it computes). The first of them starts in that
        trial's slot when it ends; counting it as busy would idle a slot for that long."""
        running = {job.trial.number for job in self.in_flight.values()}
        blocked = [job for job in self.held if running.intersection(job.waited_for)]
        blockers = {n for job in blocked for n in job.waited_for if n in running}
        return min(len(blocked), len(blockers))

    def _progress(self) -> float:
        return min(100.0, 100.0 * self.opt.spent / self.cfg.budget)

    # ------------------------------------------------------------------ asking
    def _resume_interrupted(self) -> None:
        """Re-ask and re-run the trials a crash left in flight (see the crash marker)."""
        marker = self.journal.running(self.records)
        for entry in marker.trials:
            asked = entry.trial
            trial = self.opt.enqueue(
                asked.params,
                origin=asked.origin,
                acq_value=asked.acq_value,
                acq_terms=asked.acq_terms,
                memoized=asked.memoized,
                cache=StoreCacheView(self.pipeline, self.store),
            )
            announce(self.cfg, f"trial {trial.number} was interrupted; re-running it", self.log)
            job = TrialJob(
                trial,
                entry.trial_id or uuid.uuid4().hex,
                asked_at=time.time(),
                ask_seconds=entry.ask_seconds,
                adopt_after=entry.asked_at,
                ref=entry.ref,
            )
            self.state[job.trial_id] = marker.optimizer_state
            self._submit(job)
        if marker.trials and marker.optimizer_state:
            # The method's state after the last ask before the crash: the next proposal is
            # the one an uninterrupted run would have made.
            self.opt.load_state_dict(marker.optimizer_state)

    def _ask_and_submit(self) -> None:
        t0 = time.time()
        # A fresh view per ask: it lists the store once, when it is made.
        trial = self.opt.ask(cache=StoreCacheView(self.pipeline, self.store))
        job = TrialJob(trial, uuid.uuid4().hex, asked_at=t0, ask_seconds=time.time() - t0)
        self.state[job.trial_id] = self.opt.state_dict()
        self._submit(job)

    def _submit(self, job: TrialJob) -> None:
        """Start ``job`` now, or hold it back until a slot is free and no trial in flight
        computes a stage key it needs."""
        if self.executor.slots > 1:
            # Stages a trial in flight is computing now are loaded, not computed, by this one.
            computing = set().union(*self.uncached.values())
            keys = self.pipeline.keys(job.trial.params)
            loads = set(job.trial.memoized) | {s for s, k in keys.items() if k in computing}
            self.expected[job.trial_id] = self.opt.expected_cost(job.trial, loads) or 0.0
        self.held.append(job)
        self._release_held()

    def _release_held(self) -> None:
        for job in list(self.held):
            if len(self.in_flight) >= self.executor.slots:
                return
            keys: set[str] = set()
            if self.executor.slots > 1:
                keys = {
                    k
                    for k in self.pipeline.keys(job.trial.params).values()
                    if not self.store.exists(k)
                }
            blockers = [
                j.trial.number for i, j in self.in_flight.items() if keys & self.uncached[i]
            ]
            if blockers:
                if not job.waited_for:
                    self.log.info(
                        "trial %d waits for trial(s) %s: they compute stage keys it needs",
                        job.trial.number,
                        blockers,
                    )
                job.waited_for = sorted({*job.waited_for, *blockers})
                continue
            self.held.remove(job)
            self.uncached[job.trial_id] = keys
            self._start(job)

    def _drop_held(self) -> None:
        for job in self.held:
            self.expected.pop(job.trial_id, None)
            self.state.pop(job.trial_id, None)
        self.held.clear()

    def _start(self, job: TrialJob) -> None:
        job.submitted_at = time.time()
        self.in_flight[job.trial_id] = job
        self.executor.submit(job)
        self.journal.mark_running(
            [
                RunningTrial(
                    trial_id=j.trial_id,
                    trial=AskedTrial.model_validate(j.trial.to_dict()),
                    asked_at=j.adopt_after or j.asked_at,
                    ask_seconds=j.ask_seconds,
                    ref=j.ref,
                )
                for j in self.in_flight.values()
            ],
            self.opt.state_dict(),
        )

    # ------------------------------------------------------------------ telling
    def _tell(self, job: TrialJob, outcome: TrialOutcome) -> None:
        """Tell the optimizer a finished trial, journal its record and report it."""
        del self.in_flight[job.trial_id]
        self.uncached.pop(job.trial_id, None)
        told_at = time.time()
        told = self._told(job, outcome, told_at)
        record = self._record(job, outcome, told, told_at)
        self.records.append(record)
        if self.cfg.storage.max_bytes is not None:
            self._evict(record)
        self.journal.append(record)
        self.journaled = len(self.records)
        self._report(record, outcome)
        self._count_failure(record, outcome)

    def _told(self, job: TrialJob, outcome: TrialOutcome, told_at: float) -> Trial:
        """Tell the optimizer ``job``'s outcome; returns the told trial."""
        opt = self.opt
        costs, cached = outcome.costs, outcome.cached
        if outcome.objective is None:
            costs = {s: c for s, c in costs.items() if s in opt.space.stages}
            cached = [s for s in cached if s in opt.space.stages]
        overhead = 0.0
        if self.cfg.charge_overhead:
            # The ask plus what the trial's wall time spent outside its stages (Prefect,
            # submission, loading the pipeline): wall time a user pays for too. Time spent
            # waiting for a slot after the ask is not the trial's.
            wall = told_at - (job.submitted_at or job.asked_at)
            overhead = job.ask_seconds + max(0.0, wall - sum(outcome.costs.values()))
        return opt.tell(
            job.trial,
            objective=outcome.objective,
            costs=costs,
            cached=cached,
            overhead=round(overhead, 6),
        )

    def _record(
        self, job: TrialJob, outcome: TrialOutcome, told: Trial, told_at: float
    ) -> TrialRecord:
        """The journal record of the trial ``told`` (see :mod:`flows.records`)."""
        run = outcome.model_dump(
            include={"error", "reason", "traceback", "metrics", "seconds", "worker"}
            | {"flow_run_id", "task_run_id", "started_at", "finished_at"}
        )
        return TrialRecord.model_validate(
            {
                **told.to_dict(),
                **run,
                "number": len(self.records),
                "asked_as": told.number,
                "trial_id": job.trial_id,
                "failed_stage": outcome.stage,
                "keys": {**self.pipeline.keys(job.trial.params), **outcome.stage_keys},
                "versions": self.versions,
                "sink": self.pipeline.sink.name,
                "warmup": told.number < self.opt.n_init,
                "warmup_spent": self.opt.warmup_spent,
                "waited_for": job.waited_for,
                "expected_cost": self.expected.pop(job.trial_id, None),
                "asked_at": job.asked_at,
                "ask_seconds": round(job.ask_seconds, 6),
                "submitted_at": job.submitted_at,
                "told_at": told_at,
                "optimizer_state": self.state.pop(job.trial_id),
            }
        )

    def _report(self, record: TrialRecord, outcome: TrialOutcome) -> None:
        """The trial's progress line (its traceback to the log file), bar and artifact."""
        cfg, opt = self.cfg, self.opt
        best = best_so_far(self.records, cfg.pipeline.direction)[-1]
        announce(
            cfg,
            progress_line(record, best, opt.spent, cfg.budget),
            self.log,
            bar=self.bar,
            detail=outcome.traceback,
        )
        if self.bar is not None:
            self.bar.update(len(self.records), opt.spent, best)
        update_progress_artifact(self.progress_id, progress=self._progress())

    def _count_failure(self, record: TrialRecord, outcome: TrialOutcome) -> None:
        """Stop the study on a failed trial (``continue_on_failure`` false), or after
        ``max_failures_in_a_row`` of them."""
        if record.complete:
            self.failed_in_a_row = 0
            return
        self.failed_in_a_row += 1
        if not self.cfg.continue_on_failure:
            self.failure = self.failure or f"trial {record.number} failed: {outcome.error}"
        elif self.failed_in_a_row >= self.cfg.max_failures_in_a_row:
            self.failure = self.failure or (
                f"{self.failed_in_a_row} trials failed in a row (max_failures_in_a_row), "
                f"the last one {record.number}: {outcome.error}"
            )

    def _evict(self, record: TrialRecord) -> None:
        # Entries of trials in flight or held back stay: they are about to be loaded.
        protect = {
            key
            for job in (*self.in_flight.values(), *self.held)
            for key in self.pipeline.keys(job.trial.params).values()
        }
        evicted = self.store.evict(
            self.cfg.storage.max_bytes,
            reuse_value(self.records, self.cfg.pipeline.direction),
            protect,
        )
        record.evicted = len(evicted)
        if evicted:
            self.log.info(
                "evicted %d cache entries to stay under storage.max_bytes=%d",
                len(evicted),
                self.cfg.storage.max_bytes,
            )


def finish_study(
    cfg: StudyConfig,
    opt: Optimizer,
    records: list[TrialRecord],
    journal: StudyJournal,
    failure: str | None,
    *,
    journaled: int | None = None,
    hint: str = _HINT,
    workers: int | None = None,
    artifacts: bool = True,
    stopped: str | None = None,
) -> StudyResult:
    """Write outputs and (with ``artifacts``) the Prefect artifacts, then raise
    :class:`StudyFailed` or return the result; the summary says why the study ``stopped``
    (``StudyLoop.stop_reason``)."""
    best = _best_told(opt, records)
    recommended = recommended_record(records, opt.recommend())
    paths = write_outputs(
        cfg.output_dir, cfg.study, records, cfg.pipeline.direction, opt.warmup_spent, recommended
    )
    if artifacts:
        _publish_artifacts(cfg, records, best, opt.spent, recommended)
    if failure is not None:
        raise StudyFailed(
            f"study {cfg.study!r} stopped: {failure} "
            f"({len(records) if journaled is None else journaled} trials are in the journal "
            f"at {journal.url}; {hint}"
            + ("" if cfg.continue_on_failure else ", or set continue_on_failure=true")
            + ")"
        )
    scored = None if best is None else (best.objective, best.number)
    announce(cfg, done_line(cfg, len(records), opt.spent, scored, workers=workers, stopped=stopped))
    return StudyResult(
        study=cfg.study,
        n_trials=len(records),
        spent=opt.spent,
        best_objective=None if best is None else best.objective,
        best_params=None if best is None else best.params,
        outputs={k: str(v) for k, v in paths.items()},
        journal_url=journal.url,
        best_trial=None if best is None else best.number,
    )


def _best_told(opt: Optimizer, records: list[TrialRecord]) -> TrialRecord | None:
    """The record of the optimizer's best trial (matched by configuration and objective:
    the optimizer numbers trials in ask order, which parallel trials finish out of)."""
    best = opt.best_trial
    if best is None:
        return None
    record = record_of(records, best.params, best.objective)
    if record is None:  # not journaled (cannot happen in a study): the trial as told
        record = TrialRecord.model_validate(best.to_dict())
    return record


def _publish_artifacts(
    cfg: StudyConfig,
    records: list[TrialRecord],
    best: TrialRecord | None,
    spent: float,
    recommended: Recommended | None,
) -> None:
    """The study's Prefect artifacts: its trials table and best configuration."""
    create_table_artifact(
        key=artifact_key(cfg.study, "trials"),
        table=trial_rows(records, cfg.pipeline.direction),
        description=f"Trials of study {cfg.study}",
    )
    create_markdown_artifact(
        key=artifact_key(cfg.study, "best"),
        markdown=best_markdown(cfg.study, best, spent, len(records), recommended),
        description=f"Best configuration of study {cfg.study}",
    )
