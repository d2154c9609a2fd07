"""Bounded cache: `storage.max_bytes`, the eviction order, and the optimizer's view of it."""

from __future__ import annotations

import os

import pytest

from flows import ConfigError, StorageConfig, StudyConfig
from stages import Store
from stages.testing import synthetic_pipeline
from tests.helpers import EXECUTOR_CASES, EXECUTORS, composed, journal, run_study


@pytest.mark.parametrize(
    ("text", "n"),
    [(5000, 5000), ("5000", 5000), ("500MB", 500 * 10**6), ("2 GiB", 2 * 2**30), ("1.5kb", 1500)],
)
def test_max_bytes_takes_bytes_or_a_unit(text, n):
    assert StorageConfig(url="x", max_bytes=text).max_bytes == n


@pytest.mark.parametrize("bad", [0, -5, "lots", "5 parsecs", True, "0MB"])
def test_bad_max_bytes_names_the_key(bad):
    with pytest.raises(ConfigError, match=r"`storage.max_bytes` must be a positive size"):
        StudyConfig.from_mapping({**composed(), "storage": {"url": "x", "max_bytes": bad}})


def test_evict_takes_lowest_value_then_oldest_and_spares_protected(tmp_path):
    store = Store(tmp_path)
    for i, key in enumerate(["a", "b", "c", "d"]):
        store.write(key, bytes(100))
        os.utime(store.payload_path(key), (1e9 + i, 1e9 + i))  # a is the oldest
    assert sum(size for size, _ in store.usage().values()) == 400
    # d: no value (unknown, goes first); a and b tie (older a first); c most valuable.
    evicted = store.evict(150, {"a": 1.0, "b": 1.0, "c": 2.0}, protect=["a"])
    assert evicted == ["d", "b", "c"]
    assert store.keys() == {"a"} and sum(s for s, _ in store.usage().values()) == 100
    assert store.evict(150, {}) == []


@pytest.mark.slow
@pytest.mark.parametrize("executor", EXECUTOR_CASES)
def test_study_under_max_bytes_evicts_and_the_optimizer_sees_it(
    prefect_harness, tmp_path, executor
):
    result = run_study(
        tmp_path, *EXECUTORS[executor], "study=small", "budget=60", "storage.max_bytes=1500"
    )
    records = journal(tmp_path, "small")
    store = Store(tmp_path / "cache")
    assert sum(size for size, _ in store.usage().values()) <= 1500
    assert sum(r["evicted"] for r in records) > 0
    # The optimizer never planned on an evicted entry: what it expected to load, loaded.
    assert all(set(r["memoized"]) <= set(r["cached"]) for r in records)
    # The best trial's reusable prefix outlives the rest (last-stage entries go first).
    pipe = synthetic_pipeline()
    best = max((r for r in records if r["state"] == "complete"), key=lambda r: r["objective"])
    keys = pipe.keys(best["params"])
    stored = store.keys()
    assert keys["prep"] in stored
    sinks = {pipe.keys(r["params"])["finetune"] for r in records}
    assert len(sinks & stored) <= 1
    assert result.spent >= 60.0
