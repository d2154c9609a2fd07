"""The fsspec store on a local folder or in memory (no Prefect needed)."""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

import pytest

from stages import Pipeline, Stage, Store, StoreCacheView, StoreError

FLOAT = {"type": "float", "low": 0.0, "high": 1.0}


class CountingStore(Store):
    """Counts listings and payload reads, through the store's own methods."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.listings = 0
        self.payload_reads = 0

    def keys(self):
        self.listings += 1
        return super().keys()

    def read(self, key):
        self.payload_reads += 1
        return super().read(key)


def test_write_read_exists_keys(tmp_path):
    store = Store(tmp_path / "cache")
    assert store.keys() == set() and not store.exists("k1")
    sidecar = store.write("k1", b"hello", {"cost": 2.5, "stage": "prep"})
    assert store.exists("k1") and store.keys() == {"k1"}
    assert store.read("k1") == b"hello"
    meta = store.read_meta("k1")
    assert meta == sidecar
    assert meta["eeipu"]["cost"] == 2.5 and meta["eeipu"]["size"] == 5
    assert len(meta["eeipu"]["sha256"]) == 64
    # Atomic writes leave no temporary files behind, and the layout is meta/ + data/.
    files = sorted(p.relative_to(tmp_path / "cache").as_posix() for p in tmp_path.rglob("*.*"))
    assert files == ["data/k1." + meta["eeipu"]["sha256"][:16], "meta/k1.json"]
    assert meta["eeipu"]["payload"] == "k1." + meta["eeipu"]["sha256"][:16]
    assert (tmp_path / "cache" / "data" / meta["eeipu"]["payload"]).read_bytes() == b"hello"
    store.delete("k1")
    assert not store.exists("k1") and store.keys() == set()


def test_relative_url_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = Store()
    assert store.url == str(tmp_path / ".eeipu" / "cache")
    assert repr(store) == f"Store({store.url!r})"


def test_another_installed_fsspec_protocol_works():
    # memory:// is built into fsspec: no package to install, and no bucket to create.
    store = Store(f"memory://eeipu-{uuid.uuid4().hex}/cache")
    store.check()
    store.write("k1", b"hello", {"cost": 1.0})
    assert store.keys() == {"k1"} and store.read("k1") == b"hello"
    store.write_file("studies/s/study.json", b"{}")
    assert store.list_files("studies/s") == ["study.json"]


def test_unusable_storage_fails_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gcsfs", None)  # as if gcsfs were not installed
    with pytest.raises(StoreError, match=r"^cannot use storage gs://b/x: ") as info:
        Store("gs://b/x")
    assert "gcsfs" in str(info.value) and "\n" not in str(info.value)
    assert isinstance(info.value.__cause__, ImportError)
    with pytest.raises(StoreError, match="fsspec knows no protocol 'nope'"):
        Store("nope://b/x")
    (tmp_path / "file").write_text("")
    store = Store(tmp_path / "file" / "cache")
    with pytest.raises(StoreError, match=r"^cannot use storage .*/file/cache: \w+Error: "):
        store.check()


def test_corrupt_payload_is_detected(tmp_path):
    store = Store(tmp_path)
    store.write("k1", b"hello")
    Path(store.payload_path("k1")).write_bytes(b"jello")
    with pytest.raises(StoreError, match=r"'k1'.*sha256.*Store.delete\('k1'\)"):
        store.read("k1")
    with pytest.raises(KeyError, match="'nope' is not in"):
        store.read("nope")


def test_bad_keys_are_refused(tmp_path):
    store = Store(tmp_path)
    for key in ("", "../x", "a/b", ".hidden"):
        with pytest.raises(ValueError, match="plain file name"):
            store.exists(key)


def test_existence_and_listing_read_no_payload(tmp_path):
    store = CountingStore(tmp_path)
    store.write("k1", b"x" * 1000)
    Path(store.payload_path("k1")).unlink()  # a payload read would now fail
    assert store.exists("k1") and store.keys() == {"k1"}
    assert store.payload_reads == 0


def test_cache_view_lists_once_and_answers_by_merkle_key(tmp_path):
    pipe = Pipeline(
        [
            Stage(lambda x: x, "a", space={"x": FLOAT}),
            Stage(lambda a, y: a + y, "b", inputs=("a",), space={"y": FLOAT}),
        ]
    )
    params = {"a": {"x": 0.1}, "b": {"y": 0.2}}
    store = CountingStore(tmp_path)
    store.write(pipe.key("a", params), b"payload")
    view = StoreCacheView(pipe, store)
    assert store.listings == 1
    assert view.is_cached("a", params)
    assert view.is_cached("a", {"a": {"x": 0.1}})  # downstream stages may be absent
    assert not view.is_cached("b", params)
    assert not view.is_cached("a", {"a": {"x": 0.3}, "b": {"y": 0.2}})
    for _ in range(50):
        view.is_cached("b", params)
    assert store.listings == 1 and store.payload_reads == 0
    # The view is a snapshot: a later write needs a new view (one per ask).
    store.write(pipe.key("b", params), b"payload")
    assert not view.is_cached("b", params)
    assert StoreCacheView(pipe, store).is_cached("b", params)


def test_cache_view_satisfies_the_eeipu_protocol(tmp_path):
    from eeipu._cache import CacheView

    pipe = Pipeline([Stage(lambda x: x, "a", space={"x": FLOAT})])
    assert isinstance(StoreCacheView(pipe, Store(tmp_path)), CacheView)


def test_sidecar_is_json_with_payload_checksum(tmp_path):
    store = Store(tmp_path)
    store.write("k1", b"abc")
    raw = json.loads((tmp_path / "meta" / "k1.json").read_text())
    assert raw["eeipu"]["sha256"] == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


def _hammer(url: str, writer: int, rounds: int) -> None:
    import os

    store = Store(url)
    for i in range(rounds):
        body = os.urandom(1000 * (1 + (i * 37 + writer * 11) % 300))
        store.write("shared", f"writer-{writer}-{i}-{len(body)}|".encode() + body, {"stage": "s"})


def _check(payload: bytes) -> None:
    head, _, body = payload.partition(b"|")
    assert len(body) == int(head.split(b"-")[-1]), "torn payload"


def test_two_processes_writing_one_key_never_leave_a_torn_entry(tmp_path):
    """Two processes write the same key 40 times each with different (non-reproducible)
    payloads while this process reads it: every read is whole and passes its checksum."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    url = str(tmp_path / "cache")
    store = Store(url)
    writers = [ctx.Process(target=_hammer, args=(url, w, 40)) for w in (1, 2)]
    for p in writers:
        p.start()
    reads = 0
    while any(p.is_alive() for p in writers):
        try:
            _check(store.read("shared"))  # raises StoreError on a sidecar/payload mismatch
            reads += 1
        except KeyError:
            pass  # not committed yet
    for p in writers:
        p.join()
        assert p.exitcode == 0
    _check(store.read("shared"))
    assert reads > 10
    winner = store.read("shared").split(b"-")[1]
    assert winner in (b"1", b"2")


def test_evict_dry_run_names_the_same_keys_and_deletes_nothing(tmp_path):
    import os

    store = Store(tmp_path)
    for i, key in enumerate(["a", "b", "c", "d"]):
        store.write(key, bytes(100 * (i + 1)))
        os.utime(store.payload_path(key), (1e9 + i, 1e9 + i))
    value = {"a": 1.0, "b": 1.0, "c": 2.0}
    before = store.usage()
    planned = store.evict(500, value, protect=["a"], dry_run=True)
    assert planned == ["d", "b"]  # d: no value; then b (a is protected)
    assert store.usage() == before and store.keys() == {"a", "b", "c", "d"}
    assert store.evict(500, value, protect=["a"]) == planned
    assert store.keys() == {"a", "c"}
    assert store.evict(10_000, value, dry_run=True) == []
