"""Executors: how the study loop's trials run. One small interface, four ways.

    executor.slots                 how many trials it runs at once
    executor.submit(job)           start a trial (never blocks for long)
    executor.next_outcome()        wait for the next trial to finish: (job, outcome)
    executor.next_outcome(0)       one that has finished already, else None
    executor.close()               release threads, clients

``executor_for(cfg)`` picks one from ``executor`` and ``parallel``:

* :class:`InlineExecutor` (``parallel: 1``): one trial at a time, a subflow of the
  controller run in its own thread of control when the loop waits for it.
* :class:`LocalExecutor` (``executor: local``, ``parallel: N``): N trials at a time on
  threads of the controller process, each a subflow of the controller. Stage functions
  release the GIL in torch/numpy/sklearn, so N cores or GPUs work at once; with CUDA each
  thread's current device is GPU ``slot % device_count`` (stages that ask for ``"cuda"``
  land there).
* :class:`WorkPoolExecutor` (``executor: work_pool``, ``parallel: N``; the default for
  N > 1): N trials at a time on a Prefect work pool through the deployment
  ``eeipu-trial/<work_pool>`` of :func:`remote_trial_flow`. Prefect workers polling the pool
  run them (``prefect worker start --pool eeipu --type process`` on one machine; a
  Kubernetes, ECS or Docker pool in production: the workers need the project installed and
  the same ``storage.url``). Each trial writes its outcome next to the study's journal
  (``studies/<study>/outcomes/<flow run id>.json``), where the controller reads it, so no
  Prefect result storage is involved. A run that ends without an outcome (its worker or
  infrastructure died) is submitted once more.
* :class:`TaskWorkerExecutor` (``executor: task_workers``, ``parallel: N``): N trials at a
  time as background task runs (:data:`warm_trial_task`, submitted with ``apply_async``)
  that warm Prefect task workers run (``eeipu worker``, ``prefect.task_worker.serve``):
  long-lived processes that import torch and the pipeline once, so a trial costs no
  process start. Outcomes come back as with the work pool; the parameters travel through
  Prefect's task scheduling storage (local on one machine; see the class for several).

The loop owns everything else (asking, telling, the journal, the crash marker, eviction,
failures, progress), so every feature works the same with every executor. A new executor
implements the four members above; a stage failure is an outcome with ``error`` set, any
other exception from ``next_outcome`` stops the study (e.g. ``StoreUnavailable``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import os
import socket
import sys
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from prefect import flow, tags, task

from eeipu import Trial
from flows._config import ConfigError, StudyConfig
from flows._interrupt import interrupted, is_temporary_server
from flows.records import PublishedOutcome, TrialOutcome, read_published
from flows.runtime import StudyContext, run_logger, say
from flows.trial import trial_flow
from stages import StageError, Store

__all__ = [
    "InlineExecutor",
    "LocalExecutor",
    "TaskWorkerExecutor",
    "TrialExecutor",
    "TrialJob",
    "TrialOutcome",
    "WorkPoolExecutor",
    "executor_for",
    "executor_kind",
    "register_trial_deployment",
    "remote_trial_flow",
    "warm_trial_task",
]


@dataclass
class TrialJob:
    """A trial the loop hands to an executor.

    ``adopt_after`` is set when the trial re-runs after a crash interrupted it (see
    ``stages.run_pipeline``); ``trial_id`` is unique per asked trial (journal and marker).
    ``ref`` is the executor's handle on the running trial (the work pool's flow run id),
    set by ``submit`` and kept in the crash marker: given one, an executor whose trials
    outlive the controller may wait for that run instead of starting the trial again.
    ``asked_at`` is when its ask began, ``submitted_at`` when the loop handed it to the
    executor (later when it waited for a slot).
    """

    trial: Trial
    trial_id: str
    asked_at: float
    ask_seconds: float
    adopt_after: float | None = None
    waited_for: list[int] = field(default_factory=list)
    ref: str | None = None
    submitted_at: float | None = None


class TrialExecutor(Protocol):
    """Runs the loop's trials (see the module docstring)."""

    slots: int

    def submit(self, job: TrialJob) -> None: ...

    def next_outcome(self, timeout: float | None = None) -> tuple[TrialJob, TrialOutcome] | None:
        """A finished trial and its outcome, waiting for one (``timeout`` None) or at most
        ``timeout`` seconds (None if none finished by then; 0: one that already has)."""

    def close(self) -> None: ...

    def describe(self) -> str: ...


def executor_kind(cfg: StudyConfig) -> str:
    """Which executor ``cfg`` asks for: ``inline``, ``local``, ``work_pool`` or
    ``task_workers`` (the last two run trials in other processes)."""
    kind = cfg.executor
    if kind == "auto":
        kind = "inline" if cfg.parallel == 1 else "work_pool"
    if kind == "local" and cfg.parallel == 1:
        kind = "inline"
    return kind


def executor_for(context: StudyContext) -> TrialExecutor:
    """The executor ``executor`` and ``parallel`` of the context's config ask for."""
    kind = executor_kind(context.config)
    if kind == "work_pool":
        return WorkPoolExecutor(context)
    if kind == "task_workers":
        return TaskWorkerExecutor(context)
    if kind == "local":
        return LocalExecutor(context)
    return InlineExecutor(context)


def _run_here(context: StudyContext, job: TrialJob) -> TrialOutcome:
    """One trial as a subflow of the current flow run (the controller), in its context."""
    cfg = context.config
    try:
        with tags(f"study:{cfg.study}"):
            return trial_flow.with_options(flow_run_name=f"trial-{job.trial.number}")(
                cfg, job.trial.number, job.trial.params, job.adopt_after, context=context
            )
    except StageError as exc:
        return TrialOutcome.failure(exc)


class InlineExecutor:
    """One trial at a time, in the controller: ``next_outcome`` runs the submitted trial."""

    slots = 1

    def __init__(self, context: StudyContext) -> None:
        self.context = context
        self._queue: deque[TrialJob] = deque()

    def describe(self) -> str:
        return "one trial at a time"

    def submit(self, job: TrialJob) -> None:
        self._queue.append(job)

    def next_outcome(self, timeout: float | None = None) -> tuple[TrialJob, TrialOutcome] | None:
        if timeout is not None:
            return None  # a trial runs only when waited for
        job = self._queue.popleft()
        return job, _run_here(self.context, job)

    def close(self) -> None:
        self._queue.clear()


class LocalExecutor:
    """``parallel`` trials at a time on threads of the controller process."""

    def __init__(self, context: StudyContext) -> None:
        self.context = context
        self.slots = context.config.parallel
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.slots, thread_name_prefix="eeipu-trial"
        )
        self._running: dict[concurrent.futures.Future, tuple[TrialJob, int]] = {}
        self._free = list(range(self.slots))

    def describe(self) -> str:
        return f"{self.slots} trials at a time on threads of this process"

    def submit(self, job: TrialJob) -> None:
        slot = self._free.pop(0)
        # The thread runs in a copy of this context: Prefect finds the controller's flow
        # run there, so the trial is its subflow (as asyncio.to_thread would do).
        context = contextvars.copy_context()
        future = self._pool.submit(context.run, self._run, job, slot)
        self._running[future] = (job, slot)

    def _run(self, job: TrialJob, slot: int) -> TrialOutcome:
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.set_device(slot % torch.cuda.device_count())
        return _run_here(self.context, job)

    def next_outcome(self, timeout: float | None = None) -> tuple[TrialJob, TrialOutcome] | None:
        done, _ = concurrent.futures.wait(
            self._running, timeout=timeout, return_when=concurrent.futures.FIRST_COMPLETED
        )
        if not done:
            return None
        # The earliest submitted among those done: a stable order when several finish.
        future = min(done, key=lambda f: self._running[f][0].trial.number)
        job, slot = self._running.pop(future)
        self._free.append(slot)
        return job, future.result()

    def close(self) -> None:
        # Trials still running (the study stopped) finish; nothing new starts. After an
        # interrupt they are abandoned instead (a thread cannot be stopped half-way): the
        # process exits without them and the re-run re-runs them (flows/_interrupt.py).
        self._pool.shutdown(wait=interrupted() is None, cancel_futures=True)


# ---------------------------------------------------------------------- Prefect work pool
_FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
_POLL_SECONDS = 0.5
_ATTEMPTS = 2  # a run that ends without an outcome (worker or infrastructure died) is retried
_TASK_POLL_SECONDS = 0.1  # one listing of the outcomes; a trial's wall time waits on it
_WAITING = ("SCHEDULED", "PENDING")  # not started: no worker has taken the run (yet)


@flow(name="eeipu-trial", log_prints=False, persist_result=False)
def remote_trial_flow(
    config: StudyConfig,
    number: int,
    params: dict[str, Any],
    adopt_after: float | None = None,
) -> PublishedOutcome:
    """One trial on a worker: :func:`flows.trial.trial_flow`'s body, then its outcome
    written to the shared storage for the controller."""
    from prefect.runtime import flow_run

    run_id = str(flow_run.id)
    outcome = PublishedOutcome(
        number=number,
        flow_run_id=run_id,
        # The worker process (a process worker starts each run as its child).
        worker=f"{socket.gethostname()}:{os.getppid()}",
    )
    # This process has no context yet: it builds the study's from the config it was sent.
    context = StudyContext.build(config)
    return _run_and_publish(
        context,
        run_id,
        outcome,
        lambda: trial_flow.fn(config, number, params, adopt_after, context=context),
    )


def _run_and_publish(
    context: StudyContext, run_id: str, facts: PublishedOutcome, run: Any
) -> PublishedOutcome:
    """``run()`` the trial and publish its outcome (or its failure) with the run's ``facts``
    and when the worker began and ended it (``started_at``, ``finished_at``: Unix seconds)."""
    started_at = time.time()
    store, study = context.store, context.config.study
    try:
        out: TrialOutcome = run()
    except StageError as exc:
        _publish(store, study, run_id, facts, TrialOutcome.failure(exc), started_at)
        raise
    return _publish(store, study, run_id, facts, out, started_at)


def _outcome_folder(study: str) -> str:
    return f"studies/{study}/outcomes"


def _outcome_path(study: str, run_id: str) -> str:
    return f"{_outcome_folder(study)}/{run_id}.json"


def _publish(
    store: Store,
    study: str,
    run_id: str,
    facts: PublishedOutcome,
    out: TrialOutcome,
    started_at: float,
) -> PublishedOutcome:
    """Write the trial's outcome ``out`` with the run's ``facts`` where the controller
    reads it (:func:`flows.records.read_published`)."""
    published = PublishedOutcome.model_validate(
        {
            **facts.model_dump(by_alias=True, exclude_unset=True),
            **out.model_dump(exclude_unset=True),
            "started_at": started_at,
            "finished_at": time.time(),
        }
    )
    store.write_file(_outcome_path(study, run_id), published.to_json())
    return published


def register_trial_deployment(pool: str) -> str:
    """Create the process work pool ``pool`` if missing and (re)register the trial
    deployment on it; returns its name for ``run_deployment``."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.deployments.runner import EntrypointType
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            # A worker starting meanwhile may have created it (`prefect worker start` does).
            with contextlib.suppress(ObjectAlreadyExists):
                client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    deployment = remote_trial_flow.to_deployment(
        name=pool,
        work_pool_name=pool,
        entrypoint_type=EntrypointType.MODULE_PATH,
        description="One eeipu trial (all stages of one configuration); run by the controller",
    )
    deployment.apply()
    return f"eeipu-trial/{pool}"


class _RemoteExecutor:
    """Trials that run elsewhere (the work pool, task workers) as Prefect runs, tracked by
    run id; each publishes its outcome to the study's storage, read when the run ends.

    A subclass says how to start a trial (``_start``, returning the run id), how to read
    the runs in flight (``_read_runs``), names its runs (``run_kind``: "flow run", "task
    run") and says how to start a worker for them (``worker_hint``).

    A trial is done once its outcome is published: every ``poll_seconds`` one listing of the
    outcomes folder finds those that are. Every ``state_seconds`` the runs in flight are read
    (one request) for those that ended without publishing one (retried once) and those that
    have not started ``waiting_warn_seconds`` after they were submitted (still Scheduled or
    Pending: no worker took it), reported once with ``worker_hint``: a study whose workers
    are down would otherwise wait without a word.
    """

    run_kind = "run"
    where = "still running"  # said when a resumed controller waits for a run
    poll_seconds = _POLL_SECONDS
    state_seconds = 1.0
    waiting_warn_seconds = 60.0
    worker_hint = "is a worker running?"

    def __init__(self, context: StudyContext) -> None:
        from prefect import get_client

        self.cfg = context.config
        self.slots = self.cfg.parallel
        self.store = context.store
        # Saved (or found) here, before any trial: workers starting their first trials at
        # once then all load it, and none of them writes it.
        context.prefect.result_storage()
        self._client = get_client(sync_client=True).__enter__()
        self._running: dict[str, tuple[TrialJob, int]] = {}  # run id -> (job, attempt)
        self._since: dict[str, float] = {}  # run id -> when it was submitted (monotonic)
        self._done: deque[tuple[TrialJob, TrialOutcome]] = deque()
        self._states_read = time.monotonic()  # when the runs in flight were last read

    def _start(self, job: TrialJob) -> str:
        raise NotImplementedError

    def _read_runs(self, run_ids: list[str]) -> list[Any]:
        """The runs ``run_ids`` (any order; a run the server no longer has is left out)."""
        raise NotImplementedError

    def submit(self, job: TrialJob, attempt: int = 1) -> None:
        if job.ref is not None and attempt == 1 and self._reattach(job):
            return
        job.ref = self._start(job)
        self._running[job.ref] = (job, attempt)
        self._since[job.ref] = time.monotonic()

    def _reattach(self, job: TrialJob) -> bool:
        """Wait for the run a crashed controller started (it ran on): True, unless that
        run is gone."""
        if not self._read_runs([job.ref]):
            return False
        say(
            self.cfg,
            f"trial {job.trial.number}: waiting for its {self.run_kind} {job.ref}, {self.where}",
        )
        self._running[job.ref] = (job, 1)
        self._since[job.ref] = time.monotonic()
        return True

    def next_outcome(self, timeout: float | None = None) -> tuple[TrialJob, TrialOutcome] | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._done:
            # Looked for at once, then every poll: the loop asks for the next outcome right
            # after its last ask, and trials often finished meanwhile.
            self._poll()
            if self._done:
                break
            if deadline is not None and time.monotonic() + self.poll_seconds > deadline:
                return None
            time.sleep(self.poll_seconds)
        return self._done.popleft()

    def _poll(self) -> None:
        # A trial's published outcome is its result, there before its run ends (and before
        # the server has recorded a task run's final state, which it receives as an event
        # and writes later): one listing finds every trial that has finished, with no
        # request to the server.
        published = set(self.store.list_files(_outcome_folder(self.cfg.study)))
        for run_id in [r for r in self._running if f"{r}.json" in published]:
            self._finished(run_id, None)
        now = time.monotonic()
        if self._running and now - self._states_read >= self.state_seconds:
            self._states_read = now
            self._check_states()

    def _check_states(self) -> None:
        """Read every run in flight (one request): a run that ended without publishing an
        outcome (its worker died) is retried, one that no worker took is reported."""
        for run in self._read_runs(list(self._running)):
            run_id, state = str(run.id), run.state
            if run_id not in self._running or state is None:
                continue
            if state.type.value in _FINAL:
                self._finished(run_id, state)
            elif state.type.value in _WAITING:
                self._check_waiting(run_id, state.name)
            else:
                self._since.pop(run_id, None)  # started: nothing more to watch

    def _check_waiting(self, run_id: str, state_name: str) -> None:
        since = self._since.get(run_id)
        if since is None or time.monotonic() - since < self.waiting_warn_seconds:
            return
        del self._since[run_id]  # once per run
        job, _ = self._running[run_id]
        say(
            self.cfg,
            f"trial {job.trial.number}: its {self.run_kind} {run_id} has waited "
            f"{self.waiting_warn_seconds:.0f} s without starting ({state_name}): "
            f"{self.worker_hint}",
        )

    def _finished(self, run_id: str, state: Any) -> None:
        """Take the outcome of run ``run_id``: published (``state`` None: not read), or
        ended in the final ``state``."""
        job, attempt = self._running.pop(run_id)
        self._since.pop(run_id, None)
        path = _outcome_path(self.cfg.study, run_id)
        try:
            out = read_published(self.store.read_file(path))
        except FileNotFoundError:
            if state is None:  # listed but gone: wait for the run's final state instead
                self._running[run_id] = (job, attempt)
                return
            if attempt < _ATTEMPTS:
                run_logger().warning(
                    "trial %d: %s %s ended %s without an outcome (%s); retrying it",
                    job.trial.number,
                    self.run_kind,
                    run_id,
                    state.name,
                    state.message,
                )
                self.submit(job, attempt + 1)
                return
            out = PublishedOutcome(
                error=f"{self.run_kind} {run_id} ended {state.name} without an outcome: "
                f"{state.message}"
            )
        run = {f"{self.run_kind.replace(' ', '_')}_id": run_id}
        told = out.model_dump(exclude={"schema_", "number"})
        self._done.append((job, TrialOutcome.model_validate({**told, **run}).checked()))

    def close(self) -> None:
        # Runs in flight go on, after an interrupt too: their work is kept (a resumed
        # controller waits for them by their ``ref`` in the crash marker).
        self._client.__exit__(None, None, None)


class WorkPoolExecutor(_RemoteExecutor):
    """``parallel`` trials at a time on the Prefect work pool ``work_pool``."""

    run_kind = "flow run"
    where = "still on the pool"

    @property
    def worker_hint(self) -> str:  # type: ignore[override]
        pool = self.cfg.work_pool
        return (
            f"is a worker of work pool {pool!r} running against this server? "
            f"(`prefect worker start --pool {pool}`, or `make worker`)"
        )

    def __init__(self, context: StudyContext) -> None:
        self._deployment = register_trial_deployment(context.config.work_pool)
        super().__init__(context)

    def describe(self) -> str:
        return f"{self.slots} trials at a time on work pool {self.cfg.work_pool!r}"

    def _start(self, job: TrialJob) -> str:
        from prefect.deployments import run_deployment

        with tags(f"study:{self.cfg.study}"):
            run = run_deployment(
                self._deployment,
                parameters={
                    "config": self.cfg.model_dump(mode="json"),
                    "number": job.trial.number,
                    "params": job.trial.params,
                    "adopt_after": job.adopt_after,
                },
                flow_run_name=f"trial-{job.trial.number}",
                timeout=0,
            )
        return str(run.id)

    def _read_runs(self, run_ids: list[str]) -> list[Any]:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        ids = [uuid.UUID(r) for r in run_ids]
        return self._client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)), limit=len(ids)
        )


# ---------------------------------------------------------------------- Prefect task workers
def _never_cached(context: Any, inputs: dict[str, Any]) -> None:
    """No cache key: a trial runs every time it is submitted (a task worker would otherwise
    give its tasks Prefect's default policy, and a retried trial would hit the cache)."""
    return None


@task(
    name="eeipu-warm-trial",
    task_run_name="trial-{number}",
    cache_key_fn=_never_cached,
    log_prints=False,
)
def warm_trial_task(
    config: dict[str, Any],
    number: int,
    params: dict[str, Any],
    adopt_after: float | None = None,
) -> PublishedOutcome:
    """One trial in a warm task worker (``eeipu worker``): :func:`flows.trial.trial_flow`
    as a subflow, its outcome written to the study's storage for the controller.

    ``config`` is ``StudyConfig.model_dump(mode="json")`` (no ``storage.options``: the
    worker's environment holds the storage credentials, as for the work pool).
    """
    from prefect.runtime import task_run
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    cfg = StudyConfig.from_mapping(config)
    # Built per trial, from the config it was sent (credentials from this worker's
    # environment); the worker keeps torch and the pipeline's modules imported.
    context = StudyContext.build(cfg)
    run_id = str(task_run.id)
    outcome = PublishedOutcome(
        number=number,
        task_run_id=run_id,
        # The task worker runs every trial in its own long-lived process.
        worker=f"{socket.gethostname()}:{os.getpid()}",
    )
    trial = trial_flow.with_options(flow_run_name=f"trial-{number}")

    def run() -> TrialOutcome:
        # As for the controller's in-process trials (flows.tune.run): a flow run's heartbeat
        # thread holds it up to 1 s at exit, and the task run that carries this subflow is
        # what the controller watches.
        with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            return trial(cfg, number, params, adopt_after, context=context)

    return _run_and_publish(context, run_id, outcome, run)


class TaskWorkerExecutor(_RemoteExecutor):
    """``parallel`` trials at a time as background task runs of :data:`warm_trial_task`,
    run by warm task workers (``eeipu worker``) that import torch and the pipeline once.

    The controller submits with ``apply_async``; Prefect stores the parameters in its task
    scheduling storage (``PREFECT_TASKS_SCHEDULING_DEFAULT_STORAGE_BLOCK``, else the local
    ``PREFECT_LOCAL_STORAGE_PATH``: across machines it must be a storage both reach) and
    the server hands the run to a subscribed worker over a websocket. Outcomes come back
    through the study's storage, as with the work pool.
    """

    run_kind = "task run"
    where = "still with the task workers"
    poll_seconds = _TASK_POLL_SECONDS
    worker_hint = (
        "is a task worker running against this server, with a free slot? "
        "(`eeipu worker --limit N`, or `make task-worker`)"
    )

    def __init__(self, context: StudyContext) -> None:
        from prefect.settings import get_current_settings

        cfg = context.config
        url = get_current_settings().api.url
        if url is None or is_temporary_server(url):
            raise ConfigError(
                "`executor` task_workers needs a Prefect server that the workers reach too, "
                "but PREFECT_API_URL is not set; start one (`make server`), export "
                "PREFECT_API_URL=http://127.0.0.1:4200/api and start workers (`eeipu worker`)"
            )
        super().__init__(context)
        key = warm_trial_task.task_key
        workers = self._client.request(
            "POST", "/task_workers/filter", json={"task_worker_filter": {"task_keys": [key]}}
        ).json()
        if not workers:
            # The key hashes the task's code: a worker started from another version of
            # eeipu serves another key, and would never receive these trials.
            say(
                cfg,
                f"no warm worker serves trials of this version of eeipu yet (task {key}); "
                "they wait until one starts: `eeipu worker` (restart workers after upgrading)",
            )

    def describe(self) -> str:
        return f"{self.slots} trials at a time on warm task workers (`eeipu worker`)"

    def _start(self, job: TrialJob) -> str:
        with tags(f"study:{self.cfg.study}"):
            future = warm_trial_task.apply_async(
                kwargs={
                    "config": self.cfg.model_dump(mode="json"),
                    "number": job.trial.number,
                    "params": job.trial.params,
                    "adopt_after": job.adopt_after,
                }
            )
        return str(future.task_run_id)

    def _read_runs(self, run_ids: list[str]) -> list[Any]:
        from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterId

        ids = [uuid.UUID(r) for r in run_ids]
        return self._client.read_task_runs(
            task_run_filter=TaskRunFilter(id=TaskRunFilterId(any_=ids)), limit=len(ids)
        )
