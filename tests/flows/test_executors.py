"""The in-process executors through the one study loop (the work pool's tests are in
test_parallel.py; the fault tests run with every executor, see ``tests.helpers.EXECUTORS``)."""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import replace
from typing import Any

import pytest

from flows.executors import LocalExecutor
from stages import Pipeline, Reported, stage
from stages.testing import synthetic_pipeline
from tests.helpers import FAST, composed, journal, run_study


@pytest.mark.slow
def test_local_executor_runs_trials_at_once_and_stops_within_one_trial_of_the_budget(
    prefect_harness, tmp_path
):
    result = run_study(tmp_path, "study=loc", "budget=60", "executor=local", "parallel=3")
    records = journal(tmp_path, "loc")
    # Trials finish out of ask order; the result (and the summary line) names the best trial
    # by its journal number, as results.csv and best.yaml do.
    best = max((r for r in records if r["state"] == "complete"), key=lambda r: r["objective"])
    assert (result.best_trial, result.best_objective) == (best["number"], best["objective"])
    assert [r["number"] for r in records] == list(range(len(records)))
    assert sorted(r["asked_as"] for r in records) == list(range(len(records)))
    assert all(r["state"] == "complete" for r in records)
    # Trials overlapped in time: three threads of the controller ran them.
    spans = sorted((r["asked_at"], r["told_at"]) for r in records)
    assert any(b[0] < a[1] for a, b in itertools.pairwise(spans))
    # Budget: a trial starts while others run only if what was spent plus what the trials
    # in flight were expected to cost left budget, so only the last one started overshoots.
    costs = [sum(r["costs"].values()) for r in records]
    assert result.spent == pytest.approx(sum(costs))
    assert result.spent >= 60.0
    checked = 0
    for r in records:
        t0 = r["asked_at"]
        spent = sum(c for c, o in zip(costs, records, strict=True) if o["told_at"] <= t0)
        running = [o for o in records if o["asked_at"] < t0 < o["told_at"]]
        if running:
            checked += 1
            assert spent + sum(o["expected_cost"] or 0.0 for o in running) < 60.0, r["number"]
    assert checked >= len(records) // 2
    assert sum(1 for r in records if r["expected_cost"]) >= len(records) // 2  # cost GP at work
    # Past the warm-up (n_init trials), trials are asked once two told warm-up trials can
    # train the models: none falls back to a random trial for want of observations.
    n_init = 3  # tests.helpers' default
    warmup = [r for r in records if r["asked_as"] < n_init]
    assert len(warmup) == n_init
    second_told = sorted(w["told_at"] for w in warmup)[1]
    later = [r for r in records if r["asked_as"] >= n_init]
    assert later and all(r["asked_at"] >= second_told for r in later)
    assert all(r["origin"] != "random" for r in later)
    # One trial is asked ahead while every slot is busy, and waits for the first that frees:
    # its ask overlaps the trials in flight, and no slot idles while it runs.
    ahead = [
        r
        for r in records
        if sum(o["submitted_at"] <= r["asked_at"] < o["told_at"] for o in records) == 3
    ]
    assert ahead
    assert all(r["submitted_at"] >= r["asked_at"] + r["ask_seconds"] for r in records)
    assert (
        max(
            sum(o["submitted_at"] <= r["submitted_at"] < o["told_at"] for o in records)
            for r in records
        )
        <= 3
    )  # never more than `parallel` trials run at once


class TogetherExecutor(LocalExecutor):
    """Trials that finish together: waiting for one waits for every trial in flight, then
    hands them out one at a time (the others to calls that do not wait). Records when a
    batch was complete and when its last trial was handed out."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.waiting: list = []
        self.n_running = 0
        self.batches: list[list[float]] = []  # [complete at, last handed out at, size]

    def submit(self, job):
        super().submit(job)
        self.n_running += 1

    def next_outcome(self, timeout=None):
        if timeout is None and not self.waiting:
            while self.n_running:
                self.waiting.append(super().next_outcome())
                self.n_running -= 1
            self.batches.append([time.time(), 0.0, len(self.waiting)])
        if not self.waiting:
            return None
        self.batches[-1][1] = time.time()
        return self.waiting.pop(0)


@pytest.mark.slow
def test_trials_that_finished_together_are_all_told_before_the_next_ask(prefect_harness, tmp_path):
    """When the loop learns that a trial finished, it tells every other trial that has
    finished too (``next_outcome(timeout=0)``) before it asks again."""
    from prefect import flow

    from flows._config import StudyConfig
    from flows.runtime import StudyContext
    from flows.study import run_study as run_loop

    cfg = StudyConfig.from_mapping(
        composed(
            *FAST,
            f"storage.url={tmp_path / 'cache'}",
            f"output_dir={tmp_path / 'out'}",
            "study=together",
            "executor=local",
            "parallel=3",
        )
    )
    context = StudyContext.build(cfg)
    executor = TogetherExecutor(context)

    @flow
    def controller():
        return run_loop(context, executor)

    controller()
    records = journal(tmp_path, "together")
    batches = [b[:2] for b in executor.batches if b[2] >= 2]  # trials that finished together
    assert len(batches) >= 2
    for complete, last in batches:
        asked = [r["asked_as"] for r in records if complete < r["asked_at"] < last]
        assert asked == [], (complete, last, asked)
    assert sorted(r["asked_as"] for r in records) == list(range(len(records)))


def test_trial_deployment_registers_when_a_worker_creates_the_pool_meanwhile(
    prefect_harness, monkeypatch
):
    """Workers (`prefect worker start --pool P`) create their pool if it is missing: one
    that starts with the controller can create it between the controller's read (not
    found) and its create. Registering must then go on with the pool the worker made."""
    from prefect import get_client
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    from flows.executors import register_trial_deployment

    pool = "raced-pool"
    read = SyncPrefectClient.read_work_pool

    def read_then_worker_creates(self, work_pool_name):
        try:
            return read(self, work_pool_name)
        except ObjectNotFound:
            with get_client(sync_client=True) as worker:  # the worker, just in between
                worker.create_work_pool(WorkPoolCreate(name=work_pool_name, type="process"))
            raise

    monkeypatch.setattr(SyncPrefectClient, "read_work_pool", read_then_worker_creates)
    name = register_trial_deployment(pool)
    monkeypatch.undo()
    with get_client(sync_client=True) as client:
        assert client.read_deployment_by_name(name).work_pool_name == pool


class _Gate:
    """A stage that waits (up to 60 s) until ``n`` stages have passed :meth:`count`;
    ``passed`` says whether they did (the loop runs in-process: LocalExecutor threads)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.reset()

    def reset(self) -> None:
        self.counted, self.passed = 0, None

    def count(self) -> None:
        with self._cond:
            self.counted += 1
            self._cond.notify_all()

    def wait(self, n: int) -> None:
        with self._cond:
            self.passed = self._cond.wait_for(lambda: self.counted >= n, 60.0)


# A pipeline whose dearest warm-up trial (seed 2: prep costs 4.86, 8.37, 4.62) waits in its
# prep stage until a third trial has finished its last stage, i.e. until a trial asked
# past the warm-up has run beside it.
_FINISHED = _Gate()


def gated_synthetic_pipeline() -> Pipeline:
    base = synthetic_pipeline()
    prep, train, finetune = base.stages

    def gated_prep(**kwargs: Any) -> Any:
        out = prep.func(**kwargs)
        if out.cost > 6.0:
            _FINISHED.wait(3)
        return out

    def counted_finetune(**kwargs: Any) -> Any:
        out = finetune.func(**kwargs)
        _FINISHED.count()
        return out

    stages = [replace(prep, func=gated_prep), train, replace(finetune, func=counted_finetune)]
    return Pipeline(stages, metric=base.metric, load_cost=base.load_cost)


@pytest.mark.slow
def test_parallel_study_asks_past_the_warm_up_without_waiting_for_its_dearest_trial(
    prefect_harness, tmp_path
):
    """Once two warm-up trials are told the models can be fitted: a freed slot runs a
    model-based trial while the third (dearest) warm-up trial still runs, instead of idling
    until it ends."""
    _FINISHED.reset()
    run_study(
        tmp_path,
        "study=early",
        "seed=2",
        "executor=local",
        "parallel=3",
        f"pipeline.target={__name__}:gated_synthetic_pipeline",
    )
    assert _FINISHED.passed is True  # False: the dearest trial waited 60 s for company
    records = journal(tmp_path, "early")
    warmup = sorted((r for r in records if r["origin"] == "warmup"), key=lambda r: r["told_at"])
    assert len(warmup) == 3 and warmup[2]["costs"]["prep"] > 6.0
    beside = [r for r in records if r["submitted_at"] < warmup[2]["told_at"]]
    assert {r["origin"] for r in beside} == {"warmup", "eeipu"}
    later = [r for r in records if r["origin"] != "warmup"]
    assert all(r["origin"] == "eeipu" and r["asked_at"] >= warmup[1]["told_at"] for r in later)


# A pipeline whose first stage has two values only, so warm-up trials share its keys: with
# seed 0 they are a, b, b, a, a, b. Trial 0's first stage (a) waits until three trials
# have finished, which happens only if the trials held back for it (3 and 4, which need
# its key) leave the second slot to another trial (5, b: cached by then).
_SCORED = _Gate()


@stage(space={"mode": {"type": "categorical", "choices": ["a", "b"]}})
def shared(mode: str) -> Reported:
    if mode == "a":
        _SCORED.wait(3)
    return Reported({"mode": mode}, cost=4.0)


@stage(inputs=["shared"], space={"x": {"type": "float", "low": 0.0, "high": 1.0}})
def score(shared: dict, x: float) -> Reported:
    _SCORED.count()
    return Reported(x + (0.5 if shared["mode"] == "a" else 0.0), cost=1.0)


def shared_key_pipeline() -> Pipeline:
    return Pipeline([shared, score], load_cost=0.01)


@pytest.mark.slow
def test_trials_held_back_for_a_trial_in_flight_leave_its_slot_free(prefect_harness, tmp_path):
    """Trials that need a stage key a trial in flight is computing wait for it, and the
    first of them starts in its slot when it ends: meanwhile the other slot runs trials
    that need nothing from it, instead of idling behind the held ones."""
    _SCORED.reset()
    run_study(
        tmp_path,
        "study=shared",
        "seed=0",
        "n_init=6",
        "budget=20",
        "executor=local",
        "parallel=2",
        "pipeline.name=shared",
        f"pipeline.target={__name__}:shared_key_pipeline",
        "pipeline.space=null",
    )
    assert _SCORED.passed is True  # False: trial 0 waited 60 s, one slot idle
    records = {r["asked_as"]: r for r in journal(tmp_path, "shared")}
    modes = [records[n]["params"]["shared"]["mode"] for n in range(6)]
    assert modes == ["a", "b", "b", "a", "a", "b"]
    first = records[0]
    assert records[3]["waited_for"] == [0] and records[4]["waited_for"] == [0]
    assert records[3]["cached"] == records[4]["cached"] == ["shared"]
    # Trial 5 ran while trial 0 was in flight (it is the third trial the gate counted). Not
    # finished_at: trial 5's bookkeeping after its score races trial 0's last stage.
    assert records[5]["waited_for"] == [] and records[5]["submitted_at"] < first["told_at"]
