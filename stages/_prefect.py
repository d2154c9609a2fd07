"""How a stage runs as a Prefect task whose cache is the :class:`~stages.Store`.

Choice (after reading ``prefect/results.py``, ``cache_policies.py``, ``transactions.py``,
``task_engine.py`` and ``filesystems.py`` of Prefect 3.9): Prefect's own cache machinery
decides hits and loads results, and our store is its storage.

* :class:`MerkleCachePolicy` (a ``CachePolicy``) returns the stage's Merkle key from the task
  inputs (stage name and identity: its code fingerprint or explicit version; its
  hyperparameters and fixed parameters; its inputs' keys). Prefect's DEFAULT
  policy would add RUN_ID (no reuse across runs) and hash input values with cloudpickle
  (unstable across processes and slow for big outputs), so neither is used.
* The policy's ``key_storage`` is a :class:`StoreFileSystem` in the ``meta`` role, and the
  task's ``result_storage`` one in the ``data`` role. With ``key_storage`` set, Prefect's
  ``ResultStore`` writes the result payload and its metadata to separate paths, and its
  existence check (``ResultStore.exists``, run by ``Transaction.begin``) reads only the
  metadata file, so a cache lookup never downloads a payload. A hit loads metadata then
  payload, and the task ends in a ``Completed`` state named ``"Cached"``.
* The blocks map Prefect's writes onto the store's atomic writes (temp file + rename
  locally; a single PUT on S3; Prefect's own ``LocalFileSystem`` / ``RemoteFileSystem``
  write in place) and make the metadata file our sidecar: Prefect's record metadata plus an
  ``eeipu`` section with the payload's sha256, size, cost and timing. Reads verify the
  checksum.
* Prefect 3.9's ``Task`` refuses an unsaved ``result_storage`` block, so the data-role block
  is saved once per store and process (a named block document holding only the URL and
  role; credentials stay in the in-process fsspec filesystem and are never saved). The
  policy's ``key_storage`` may stay unsaved. ``result_storage_key`` is never set (it would
  silently disable the cache policy) and no lock manager is used (Prefect's
  ``FileSystemLockManager`` races under contention); two processes computing the same key
  at once both write the same result atomically, and the last one wins.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from prefect import Task
from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from prefect.filesystems import WritableFileSystem
from prefect.utilities.asyncutils import run_sync_in_worker_thread
from pydantic import PrivateAttr

from stages._errors import StoreError
from stages._pipeline import Reported, Stage, merkle_key
from stages._store import Store

__all__ = [
    "MerkleCachePolicy",
    "StageOutput",
    "StoreFileSystem",
    "result_storage_block",
    "stage_task",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageOutput:
    """What a stage task returns and the store keeps: the value and how it was made.

    Attributes:
        value: The stage's output (passed downstream).
        cost: Reported cost, or the measured wall-clock seconds of the function.
        seconds: Wall-clock seconds the function ran.
        reported: Whether ``cost`` was reported by the stage (``stages.Reported``).
    """

    value: Any
    cost: float
    seconds: float
    reported: bool = False


class StoreFileSystem(WritableFileSystem):
    """A Prefect filesystem block that reads and writes one role of a :class:`Store`.

    ``role="data"`` serves result payloads (``data/<key>.<sha>``); ``role="meta"`` serves result
    metadata, which is the store's sidecar (``meta/<key>.json``). Paths are keys; only the
    last path component is used, so entries survive moving the store.
    """

    _block_type_name: ClassVar[str] = "eeipu Store"
    _block_type_slug: ClassVar[str] = "eeipu-store"
    _description: ClassVar[str] = "Stage results of an eeipu pipeline (payloads or sidecars)."

    url: str
    role: Literal["data", "meta"] = "data"
    _store: Store | None = PrivateAttr(default=None)

    @classmethod
    def for_store(cls, store: Store, role: Literal["data", "meta"]) -> StoreFileSystem:
        block = cls(url=store.url, role=role)
        block._store = store
        return block

    @property
    def store(self) -> Store:
        if self._store is None:
            # A block loaded from the API: credentials come from the environment.
            self._store = Store(self.url)
        return self._store

    @staticmethod
    def _key(path: str) -> str:
        return str(path).rstrip("/").rsplit("/", 1)[-1]

    def read_path(self, path: str, _sync: bool | None = None) -> bytes:  # type: ignore[override]
        key = self._key(path)
        if self.role == "meta":
            return self.store.read_meta_bytes(key)
        _load_started[key] = time.perf_counter()
        return self.store.read(key)

    def write_path(self, path: str, content: bytes, _sync: bool | None = None) -> str:  # type: ignore[override]
        key = self._key(path)
        if self.role == "data":
            facts = self.store.write_payload(key, content)
            return self.store.data_path(key, facts["payload"])
        self.store.write_meta(key, json.loads(content))
        return self.store.meta_path(key)

    async def aread_path(self, path: str) -> bytes:
        return await run_sync_in_worker_thread(self.read_path, path)

    async def awrite_path(self, path: str, content: bytes) -> str:
        return await run_sync_in_worker_thread(self.write_path, path, content)


@dataclass
class MerkleCachePolicy(CachePolicy):
    """Cache key = the stage's Merkle key, computed from the task's ``params`` and
    ``input_keys`` inputs (never from input values, which may be large or unhashable)."""

    stage_name: str = ""
    version: str = ""  # the stage's identity (Stage.identity)

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        return merkle_key(self.stage_name, self.version, inputs["params"], inputs["input_keys"])


class PlannedHitMissing(RuntimeError):
    """A stage planned as a cache hit had to run, but its inputs were not loaded.

    Internal to ``stages``: raised by a :func:`stage_task` run without inputs, caught by
    ``run_pipeline``, which then runs the trial again in full.
    """


# When the payload read of each key began in this process (see load_started).
_load_started: dict[str, float] = {}


def load_started(key: str) -> float | None:
    """When (``time.perf_counter()``) this process last began reading the payload of
    ``key``, and forget it; None if it did not.

    Internal to ``stages``: ``run_pipeline`` charges a cache hit from there to the end of
    its task (read, checksum, unpickling), not the task's whole wall time, whose start
    holds Prefect's own set-up (seconds for the first task of a process).
    """
    return _load_started.pop(key, None)


# Keys whose stage function was entered in this process: a task that failed without entering
# it failed while *loading* its cached result (e.g. a pickle from another code version).
_entered: set[str] = set()


def forget_entered(key: str) -> None:
    """Forget that a stage function of ``key`` was entered (call before running its task).

    Internal to ``stages``, with :func:`was_entered`.
    """
    _entered.discard(key)


def was_entered(key: str) -> bool:
    """Whether a :func:`stage_task` entered its stage function for ``key`` in this process
    since :func:`forget_entered`; a task that failed without entering it failed while
    loading its cached result. Internal to ``stages``."""
    return key in _entered


_save_lock = threading.Lock()


def result_storage_block(store: Store) -> StoreFileSystem:
    """The block that stage tasks on ``store`` use as ``result_storage``: loaded from the
    Prefect API where it has it, else saved there (once per store object and API URL).

    A controller whose trials run in other processes (workers) calls it before submitting
    them, so that workers starting their first trials at once all find it and none writes.
    """
    from prefect.settings import PREFECT_API_URL

    # Kept on the store itself, per API URL: another server has its own block documents.
    api = str(PREFECT_API_URL.value())
    with _save_lock:
        saved: dict[str, StoreFileSystem] = store.prefect_blocks
        if api not in saved:
            # Only the URL and role are saved; credentials stay in the fsspec filesystem.
            name = "eeipu-store-" + hashlib.sha256(store.url.encode()).hexdigest()[:16]
            saved[api] = _load_or_save(StoreFileSystem.for_store(store, "data"), name)
        return saved[api]


def _load_or_save(block: StoreFileSystem, name: str) -> StoreFileSystem:
    """The block document ``name`` where the API already has it with ``block``'s fields
    (every process after the first: workers, resumed studies), else ``block`` saved as it.

    Loading first keeps the database quiet: saving over an existing document is an insert
    that violates its unique name (PostgreSQL logs an error, Prefect answers 409 and then
    updates). Two processes saving the first one at the same time still meet there, and
    ``overwrite=True`` settles it.
    """
    try:
        found = StoreFileSystem.load(name)
    except ValueError:  # Prefect's answer for a name (or block type) it does not have yet
        found = None
    if found is not None and (found.url, found.role) == (block.url, block.role):
        found._store = block.store
        return found
    block.save(name, overwrite=True)
    return block


def stage_task(
    stage: Stage,
    store: Store,
    *,
    retries: int = 0,
    retry_delay_seconds: float = 0.0,
    task_run_name: str | None = None,
) -> Task[..., StageOutput]:
    """A Prefect task that runs ``stage`` with results cached in ``store``.

    The task takes ``params`` (the stage's normalized hyperparameters), ``input_keys``
    (cache keys of its inputs, in order) and ``inputs`` (``{input name: value}``, wrap it in
    ``prefect.utilities.annotations.quote`` so Prefect does not walk large values, or
    ``None`` when the run is expected to be a cache hit). It returns a :class:`StageOutput`.
    """

    def run_stage(
        params: Mapping[str, Any], input_keys: Sequence[str], inputs: Mapping[str, Any] | None
    ) -> StageOutput:
        key = merkle_key(stage.name, stage.identity, params, input_keys)
        if inputs is None:
            raise PlannedHitMissing(f"stage {stage.name!r} (key {key}) expected a cache hit")
        _entered.add(key)
        start = time.perf_counter()
        value = stage.func(**inputs, **params)
        seconds = time.perf_counter() - start
        reported = isinstance(value, Reported)
        cost = value.cost if reported else seconds
        if reported:
            value = value.value
        # Facts for the sidecar that Prefect's commit writes right after this returns.
        store.note(
            key,
            stage=stage.name,
            version=stage.identity,
            cost=cost,
            seconds=seconds,
            reported=reported,
        )
        return StageOutput(value=value, cost=cost, seconds=seconds, reported=reported)

    policy = MerkleCachePolicy(
        stage_name=stage.name,
        version=stage.identity,
        key_storage=StoreFileSystem.for_store(store, "meta"),
    )
    task = Task(
        fn=run_stage,
        name=stage.name,
        task_run_name=task_run_name,
        cache_policy=policy,
        result_storage=result_storage_block(store),
        result_serializer="pickle",
        persist_result=True,
        cache_result_in_memory=False,  # outputs can be large; a hit must really load
        retries=retries,
        retry_delay_seconds=retry_delay_seconds,
        retry_condition_fn=_retry_unless_unavailable,
        tags=set(stage.tags),  # e.g. "gpu": Prefect's tag concurrency limits apply
    )
    if task.cache_policy is not policy:
        # PREFECT_TASKS_DISABLE_CACHING (or similar) replaced our policy: nothing is reused.
        logger.warning(
            "Prefect settings disabled the cache policy of stage %r; every run recomputes it",
            stage.name,
        )
    return task


def _retry_unless_unavailable(task: Any, task_run: Any, state: Any) -> bool:
    try:
        state.result()
    except (PlannedHitMissing, StoreError):
        # A missing or corrupt cache entry does not heal by retrying; run_pipeline handles it.
        return False
    except Exception:
        return True
    return True
