"""run_pipeline end to end on a local store, with stages as Prefect tasks."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import pytest

from eeipu.testing import SyntheticProblem
from stages import (
    Pipeline,
    Reported,
    Stage,
    StageError,
    Store,
    StoreCacheView,
    StoreFileSystem,
    run_pipeline,
)
from stages.testing import synthetic_pipeline

pytestmark = pytest.mark.usefixtures("prefect_harness")

FLOAT = {"type": "float", "low": 0.0, "high": 1.0}
CALLS: Counter[str] = Counter()


def _prep(k):
    CALLS["prep"] += 1
    return list(range(k))


def _train(prep, lr):
    CALLS["train"] += 1
    return Reported(sum(prep) * lr, cost=7.0)


def _evaluate(train, t):
    CALLS["evaluate"] += 1
    return {"auroc": train + t, "loss": -train}


def _chain(version: str = "1") -> Pipeline:
    return Pipeline(
        [
            Stage(_prep, "prep", space={"k": {"type": "int", "low": 1, "high": 9}}),
            Stage(_train, "train", inputs=("prep",), version=version, space={"lr": FLOAT}),
            Stage(_evaluate, "evaluate", inputs=("train",), space={"t": FLOAT}),
        ],
        metric="auroc",
    )


PARAMS = {"prep": {"k": 4}, "train": {"lr": 0.5}, "evaluate": {"t": 0.25}}


@pytest.fixture(autouse=True)
def _reset_calls():
    CALLS.clear()


def test_second_run_is_all_cached_with_load_costs(tmp_path):
    store = Store(tmp_path)
    pipe = _chain()
    first = run_pipeline(pipe, PARAMS, store)
    assert first.objective == pytest.approx(6 * 0.5 + 0.25)
    assert first.cached == {"prep": False, "train": False, "evaluate": False}
    assert first.costs["train"] == 7.0  # reported
    assert 0 <= first.costs["prep"] <= first.seconds["prep"]  # measured function time
    assert first.output == {"auroc": 3.25, "loss": -3.0}
    assert store.keys() == set(first.keys.values())
    meta = store.read_meta(first.keys["train"])["eeipu"]
    assert meta["cost"] == 7.0 and meta["reported"] is True and meta["stage"] == "train"

    second = run_pipeline(pipe, PARAMS, store)
    assert CALLS == {"prep": 1, "train": 1, "evaluate": 1}
    assert second.cached_stages == {"prep", "train", "evaluate"}
    assert second.objective == first.objective
    assert second.keys == first.keys
    # A hit costs its measured load (payload read, checksum, unpickling), not its task's
    # wall time, which also holds Prefect's set-up of the task run (seconds for the first
    # task of a process: it made a resumed study's first hit look dear).
    assert all(0 < second.costs[s] < second.seconds[s] for s in second.costs)


def test_prefix_change_recomputes_only_downstream(tmp_path):
    store = Store(tmp_path)
    pipe = _chain()
    run_pipeline(pipe, PARAMS, store)
    changed = {**PARAMS, "train": {"lr": 0.75}}
    result = run_pipeline(pipe, changed, store)
    assert result.cached == {"prep": True, "train": False, "evaluate": False}
    assert CALLS == {"prep": 1, "train": 2, "evaluate": 2}
    assert result.objective == pytest.approx(6 * 0.75 + 0.25)


def test_version_bump_recomputes_that_stage_and_downstream(tmp_path):
    store = Store(tmp_path)
    run_pipeline(_chain(), PARAMS, store)
    result = run_pipeline(_chain(version="2"), PARAMS, store)
    assert result.cached == {"prep": True, "train": False, "evaluate": False}


def test_lazy_run_skips_loading_what_nothing_needs(tmp_path):
    store = Store(tmp_path)
    pipe = _chain()
    run_pipeline(pipe, PARAMS, store)
    result = run_pipeline(pipe, {**PARAMS, "evaluate": {"t": 0.5}}, store, lazy=True)
    assert result.skipped == {"prep"}
    assert result.cached == {"prep": True, "train": True, "evaluate": False}
    assert result.costs["prep"] == 0.0
    assert result.objective == pytest.approx(3.5)
    assert CALLS["prep"] == 1 and CALLS["train"] == 1


def test_lazy_run_recovers_when_a_planned_hit_vanishes(tmp_path):
    class Vanishing(Store):
        # The plan sees the entry; it is gone when Prefect looks.
        def exists(self, key):
            found = super().exists(key)
            if found and key == self.victim:
                self.delete(key)
            return found

    store = Vanishing(tmp_path)
    pipe = _chain()
    first = run_pipeline(pipe, PARAMS, store)
    store.victim = first.keys["train"]
    result = run_pipeline(pipe, {**PARAMS, "evaluate": {"t": 0.5}}, store, lazy=True)
    assert result.objective == pytest.approx(3.5)
    assert result.cached == {"prep": True, "train": False, "evaluate": False}


def test_stage_failure_raises_stage_error_with_costs(tmp_path):
    def explode(train, t):
        raise RuntimeError("boom")

    pipe = Pipeline(
        [*_chain().stages[:2], Stage(explode, "evaluate", inputs=("train",), space={"t": FLOAT})],
        metric="auroc",
    )
    store = Store(tmp_path)
    with pytest.raises(StageError) as info:
        run_pipeline(pipe, PARAMS, store)
    err = info.value
    key = pipe.key("evaluate", PARAMS)
    assert err.stage == "evaluate" and err.key == key
    assert "'evaluate'" in str(err) and key in str(err) and "boom" in str(err)
    assert isinstance(err.__cause__, RuntimeError)
    assert set(err.costs) == {"prep", "train", "evaluate"} and err.costs["train"] == 7.0
    assert not store.exists(key)  # a failure is never cached
    # Earlier stages were stored and are reused by the next trial.
    assert store.exists(pipe.key("train", PARAMS))


def test_stage_error_says_the_stage_the_cause_what_loaded_and_the_traceback(tmp_path):
    def explode(train, t):
        raise ValueError(f"t={t} is too hot")

    store = Store(tmp_path)
    run_pipeline(_chain(), PARAMS, store)  # prep and train are stored
    pipe = Pipeline(
        [*_chain().stages[:2], Stage(explode, "evaluate", inputs=("train",), space={"t": FLOAT})],
        metric="auroc",
    )
    with pytest.raises(StageError) as info:
        run_pipeline(pipe, PARAMS, store)
    err = info.value
    assert err.cause == "ValueError: t=0.25 is too hot"
    assert err.reason == "stage 'evaluate': ValueError: t=0.25 is too hot"
    assert err.cached == ("prep", "train")
    assert err.traceback.startswith("Traceback (most recent call last)")
    assert 'raise ValueError(f"t={t} is too hot")' in err.traceback
    assert err.traceback.rstrip().endswith("ValueError: t=0.25 is too hot")


def test_every_scalar_metric_of_the_sink_is_kept(tmp_path):
    result = run_pipeline(_chain(), PARAMS, Store(tmp_path))
    assert result.metrics == {"auroc": result.objective, "loss": -3.0}
    assert all(type(v) is float for v in result.metrics.values())


def test_missing_metric_is_a_stage_error(tmp_path):
    pipe = Pipeline(_chain().stages, metric="f1")
    with pytest.raises(StageError, match=r"stage 'evaluate' produced no objective.*'f1'"):
        run_pipeline(pipe, PARAMS, Store(tmp_path))


def test_bad_params_fail_before_anything_runs(tmp_path):
    with pytest.raises(ValueError, match=r"stage 'train'.*missing=\['lr'\]"):
        run_pipeline(_chain(), {**PARAMS, "train": {}}, Store(tmp_path))
    assert not CALLS


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b"garbage",
        lambda b: b"",
        lambda b: b[: len(b) // 2],
        lambda b: b[:10] + bytes([b[10] ^ 0xFF]) + b[11:],
    ],
    ids=["garbage", "zero-bytes", "truncated", "bit-flip"],
)
@pytest.mark.parametrize("lazy", [False, True])
def test_corrupt_entry_is_reported_recomputed_and_replaced(tmp_path, caplog, damage, lazy):
    store = Store(tmp_path)
    first = run_pipeline(_chain(), PARAMS, store)
    # Lazy runs load only what they need: with everything cached that is the sink.
    stage = "evaluate" if lazy else "train"
    key = first.keys[stage]
    path = Path(store.payload_path(key))
    path.write_bytes(damage(path.read_bytes()))
    with caplog.at_level(logging.WARNING, logger="stages._run"):
        again = run_pipeline(_chain(), PARAMS, store, lazy=lazy)
    warnings = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(warnings) == 1 and f"'{stage}'" in warnings[0] and key in warnings[0]
    assert {s for s, hit in again.cached.items() if not hit} == {stage}
    assert again.objective == first.objective  # never the corrupt value
    third = run_pipeline(_chain(), PARAMS, store)  # the entry was replaced by a good one
    assert all(third.cached.values()) and third.objective == first.objective


def test_cache_view_answers_from_the_store_after_a_run(tmp_path):
    store = Store(tmp_path)
    pipe = _chain()
    run_pipeline(pipe, PARAMS, store)
    view = StoreCacheView(pipe, store)
    assert all(view.is_cached(s, PARAMS) for s in pipe.stage_names)
    other = {**PARAMS, "train": {"lr": 0.1}}
    assert view.is_cached("prep", other)
    assert not view.is_cached("train", other) and not view.is_cached("evaluate", other)


def test_prefect_existence_check_reads_metadata_only(tmp_path):
    from prefect.results import ResultStore

    store = Store(tmp_path)
    key = run_pipeline(_chain(), PARAMS, store).keys["evaluate"]
    prefect_store = ResultStore(
        result_storage=StoreFileSystem.for_store(store, "data"),
        metadata_storage=StoreFileSystem.for_store(store, "meta"),
    )
    assert prefect_store.exists(key)
    Path(store.payload_path(key)).unlink()  # reading the payload would now fail
    assert prefect_store.exists(key)
    assert not prefect_store.exists("0" * 64)


def test_runs_inside_a_flow(tmp_path):
    from prefect import flow

    store = Store(tmp_path)
    pipe = _chain()

    @flow
    def trial(params):
        return run_pipeline(pipe, params, store)

    first = trial(PARAMS)
    second = trial(PARAMS)
    assert first.cached_stages == set() and second.cached_stages == {"prep", "train", "evaluate"}
    # The same entries serve runs outside any flow.
    assert run_pipeline(pipe, PARAMS, store).cached_stages == {"prep", "train", "evaluate"}


def test_synthetic_pipeline_matches_the_problem(tmp_path):
    problem = SyntheticProblem(seed=1)
    pipe = synthetic_pipeline(problem)
    params = {
        s: {x: (v["low"] + v["high"]) / 3 for x, v in sec.items()}
        for s, sec in pipe.space_dict().items()
    }
    objective, costs = problem.evaluate(params)
    result = run_pipeline(pipe, params, Store(tmp_path))
    assert result.objective == pytest.approx(objective)
    assert result.costs == pytest.approx(costs)
    assert pipe.space_dict() == problem.space_dict()


def test_synthetic_pipeline_fails_where_the_problem_fails(tmp_path):
    problem = SyntheticProblem(seed=1, fail_share=(0.0, 0.5, 0.0), fail_random=0.5)
    pipe = synthetic_pipeline(problem)
    space = pipe.space_dict()
    grid = [
        {
            s: {x: v["low"] + (v["high"] - v["low"]) * f for x, v in sec.items()}
            for s, sec in space.items()
        }
        for f in (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    ]
    outcomes = {problem.failed_stage(p) for p in grid}
    assert outcomes == {None, "prep", "train", "finetune"}  # by region and at random
    for i, params in enumerate(grid):
        if problem.failed_stage(params) is None:
            assert run_pipeline(pipe, params, Store(tmp_path / str(i))).objective == pytest.approx(
                problem.evaluate(params)[0]
            )
        else:
            stage = problem.failed_stage(params)
            with pytest.raises(Exception, match=f"simulated failure of stage '{stage}'"):
                run_pipeline(pipe, params, Store(tmp_path / str(i)))


def test_retries_rerun_a_flaky_stage(tmp_path):
    def flaky(prep, lr):
        CALLS["flaky"] += 1
        if CALLS["flaky"] == 1:
            raise ConnectionError("transient")
        return sum(prep) * lr

    stages = _chain().stages
    pipe = Pipeline(
        [stages[0], Stage(flaky, "train", inputs=("prep",), space={"lr": FLOAT}), stages[2]],
        metric="auroc",
    )
    result = run_pipeline(pipe, PARAMS, Store(tmp_path), retries=1)
    assert CALLS["flaky"] == 2 and result.objective == pytest.approx(3.25)


def _other_version_pickle() -> bytes:
    """A payload as another version of the code wrote it: a valid pickle (and, below, a valid
    checksum) of a class that this version does not have."""
    import base64
    import pickle
    import sys
    import types

    module = types.ModuleType("eeipu_removed_module")
    Gone = type("Gone", (), {"__module__": "eeipu_removed_module"})
    module.Gone = Gone
    sys.modules["eeipu_removed_module"] = module
    try:
        return base64.encodebytes(pickle.dumps(Gone()))
    finally:
        del sys.modules["eeipu_removed_module"]


@pytest.mark.parametrize("lazy", [False, True])
def test_entry_from_another_version_is_reported_recomputed_and_replaced(tmp_path, caplog, lazy):
    import hashlib
    import json

    store = Store(tmp_path)
    first = run_pipeline(_chain(), PARAMS, store)
    stage = "evaluate" if lazy else "train"
    key = first.keys[stage]
    payload = _other_version_pickle()
    Path(store.payload_path(key)).write_bytes(payload)
    meta_path = tmp_path / "meta" / f"{key}.json"
    meta = json.loads(meta_path.read_text())
    meta["eeipu"].update(sha256=hashlib.sha256(payload).hexdigest(), size=len(payload))
    meta_path.write_text(json.dumps(meta))  # the checksum matches: only loading can tell
    with caplog.at_level(logging.WARNING, logger="stages._run"):
        again = run_pipeline(_chain(), PARAMS, store, lazy=lazy)
    warnings = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(warnings) == 1 and f"'{stage}'" in warnings[0] and key in warnings[0]
    assert again.objective == first.objective
    assert {s for s, hit in again.cached.items() if not hit} == {stage}


def test_the_result_storage_block_is_saved_once_and_then_loaded(tmp_path):
    from prefect import get_client

    def document():
        with get_client(sync_client=True) as client:
            (doc,) = [
                d
                for d in client.read_block_documents()
                if d.data.get("url") == Store(tmp_path).url and d.block_type.slug == "eeipu-store"
            ]
        return doc

    first = run_pipeline(_chain(), PARAMS, Store(tmp_path))
    saved = document()
    # Another process (a worker, a resumed study) has a new Store of the same URL: it loads
    # the document instead of writing it again, and its trials still share the cache.
    again = run_pipeline(_chain(), PARAMS, Store(tmp_path))
    assert document().updated == saved.updated and document().id == saved.id
    assert first.cached_stages == set() and again.cached_stages == {"prep", "train", "evaluate"}


def test_a_cache_hit_is_charged_from_its_payload_read(tmp_path):
    """The adapter's data block notes when each payload read begins; a hit costs from there
    to the end of its task, not Prefect's set-up before it."""
    from stages import PrefectStorage

    storage = PrefectStorage(Store(tmp_path))
    run_pipeline(_chain(), PARAMS, storage)
    began: list[float | None] = []
    read_began = storage.read_began
    storage.read_began = lambda key: began.append(read_began(key)) or began[-1]
    again = run_pipeline(_chain(), PARAMS, storage)
    assert again.cached_stages == {"prep", "train", "evaluate"}
    assert len(began) == 3 and None not in began
    assert all(0 <= again.costs[s] <= again.seconds[s] for s in again.costs)


def test_a_payload_that_does_not_load_is_a_cache_load_error():
    from stages import CacheLoadError, StoreError
    from stages._prefect import CheckedPickle

    with pytest.raises(CacheLoadError, match="payload does not load: UnpicklingError"):
        CheckedPickle.loads(b"not a pickle")
    assert issubclass(CacheLoadError, StoreError)
