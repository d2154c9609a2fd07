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
  is saved once per :class:`PrefectStorage` (the adapter a study holds for its store) and
  Prefect API (a named block document holding only the URL and role; credentials stay in
  the in-process fsspec filesystem and are never saved). The policy's ``key_storage`` may
  stay unsaved.
* A load failure is told from a stage failure by its type: everything on the load path
  (the blocks' reads, and the unpickling, through :class:`CheckedPickle`) raises
  :class:`~stages.StoreError` (:class:`~stages.CacheLoadError`), which the stage function
  never raises on our behalf. ``result_storage_key`` is never set (it would
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

import cloudpickle
from prefect import Task
from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from prefect.filesystems import WritableFileSystem
from prefect.utilities.asyncutils import run_sync_in_worker_thread
from pydantic import PrivateAttr

from stages._errors import CacheLoadError, PlannedHitMissing, StoreError
from stages._pipeline import Reported, Stage, merkle_key
from stages._store import Store

__all__ = [
    "CheckedPickle",
    "MerkleCachePolicy",
    "PrefectStorage",
    "StageOutput",
    "StoreFileSystem",
    "stage_task",
]

logger = logging.getLogger(__name__)

_CHECKED = f"{__name__}.CheckedPickle"


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


class CheckedPickle:
    """cloudpickle, whose ``loads`` raises :class:`~stages.CacheLoadError` for a payload
    that does not load (a class of another code version, a truncated pickle).

    Prefect unpickles a cached result with the ``picklelib`` its metadata names; the
    meta-role :class:`StoreFileSystem` names this one when it hands a sidecar to Prefect
    (the sidecar on storage keeps ``cloudpickle``, so any reader can still load it).
    """

    dumps = staticmethod(cloudpickle.dumps)

    @staticmethod
    def loads(data: bytes) -> Any:
        try:
            return cloudpickle.loads(data)
        except Exception as exc:
            raise CacheLoadError(f"payload does not load: {type(exc).__name__}: {exc}") from exc


def _checked_metadata(raw: bytes, key: str) -> bytes:
    """A sidecar as Prefect reads it: the payload's unpickler is :class:`CheckedPickle`."""
    try:
        meta = json.loads(raw)
    except ValueError as exc:
        raise CacheLoadError(f"sidecar of entry {key!r} is not JSON: {exc}") from exc
    serializer = meta.get("serializer") if isinstance(meta, dict) else None
    if isinstance(serializer, dict) and serializer.get("picklelib") == "cloudpickle":
        meta["serializer"] = {**serializer, "picklelib": _CHECKED}
        return json.dumps(meta).encode("utf-8")
    return raw


class StoreFileSystem(WritableFileSystem):
    """A Prefect filesystem block that reads and writes one role of a :class:`Store`.

    ``role="data"`` serves result payloads (``data/<key>.<sha>``); ``role="meta"`` serves result
    metadata, which is the store's sidecar (``meta/<key>.json``). Paths are keys; only the
    last path component is used, so entries survive moving the store. Reads of a missing or
    unreadable entry raise :class:`~stages.CacheLoadError`.
    """

    _block_type_name: ClassVar[str] = "eeipu Store"
    _block_type_slug: ClassVar[str] = "eeipu-store"
    _description: ClassVar[str] = "Stage results of an eeipu pipeline (payloads or sidecars)."

    url: str
    role: Literal["data", "meta"] = "data"
    _store: Store | None = PrivateAttr(default=None)
    # When each key's payload read began (time.perf_counter), for the adapter's read_began.
    _reads: dict[str, float] | None = PrivateAttr(default=None)

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
        try:
            if self.role == "meta":
                return _checked_metadata(self.store.read_meta_bytes(key), key)
            if self._reads is not None:
                self._reads[key] = time.perf_counter()
            return self.store.read(key)
        except (FileNotFoundError, KeyError) as exc:  # deleted since Prefect's lookup
            raise CacheLoadError(f"entry {key!r} vanished from {self.store!r}") from exc

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


class PrefectStorage:
    """What Prefect needs of one :class:`Store`: the result-storage block (saved to each
    Prefect API once), the key-storage block, and when each payload read began.

    A study's context holds one for its store, so its trials share the saved block;
    :func:`stages.run_pipeline` given a bare :class:`Store` makes its own.

    Example:
        >>> import tempfile
        >>> storage = PrefectStorage(Store(tempfile.mkdtemp()))
        >>> storage.key_storage.role
        'meta'
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.key_storage = StoreFileSystem.for_store(store, "meta")
        self._blocks: dict[str, StoreFileSystem] = {}  # by Prefect API URL
        self._reads: dict[str, float] = {}
        self._lock = threading.Lock()

    @classmethod
    def of(cls, store: Store | PrefectStorage) -> PrefectStorage:
        """``store`` itself when it is one, else a new adapter for it."""
        return store if isinstance(store, PrefectStorage) else cls(store)

    def result_storage(self) -> StoreFileSystem:
        """The block that stage tasks use as ``result_storage``: loaded from the Prefect API
        where it has it, else saved there (once per API URL).

        A controller whose trials run in other processes (workers) calls it before
        submitting them, so that workers starting their first trials at once all find it
        and none writes.
        """
        from prefect.settings import PREFECT_API_URL

        api = str(PREFECT_API_URL.value())  # another server has its own block documents
        with self._lock:
            if api not in self._blocks:
                # Only the URL and role are saved; credentials stay in the fsspec filesystem.
                name = "eeipu-store-" + hashlib.sha256(self.store.url.encode()).hexdigest()[:16]
                block = _load_or_save(StoreFileSystem.for_store(self.store, "data"), name)
                block._reads = self._reads
                self._blocks[api] = block
            return self._blocks[api]

    def read_began(self, key: str) -> float | None:
        """When (``time.perf_counter()``) this adapter last began reading the payload of
        ``key``, and forget it; None if it did not.

        ``run_pipeline`` charges a cache hit from there to the end of its task (read,
        checksum, unpickling), not the task's whole wall time, whose start holds Prefect's
        own set-up (seconds for the first task of a process).
        """
        return self._reads.pop(key, None)


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


def _stage_function(stage: Stage, store: Store) -> Any:
    """The function a stage task runs: the stage's own, timed, its facts noted for the
    sidecar. Only a task run that misses the cache enters it."""

    def run_stage(
        params: Mapping[str, Any], input_keys: Sequence[str], inputs: Mapping[str, Any] | None
    ) -> StageOutput:
        key = merkle_key(stage.name, stage.identity, params, input_keys)
        if inputs is None:
            raise PlannedHitMissing(f"stage {stage.name!r} (key {key}) expected a cache hit")
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

    return run_stage


def stage_task(
    stage: Stage,
    store: Store | PrefectStorage,
    *,
    retries: int = 0,
    retry_delay_seconds: float = 0.0,
    task_run_name: str | None = None,
) -> Task[..., StageOutput]:
    """A Prefect task that runs ``stage`` with results cached in ``store``.

    The task takes ``params`` (the stage's normalized hyperparameters), ``input_keys``
    (cache keys of its inputs, in order) and ``inputs`` (``{input name: value}``, wrap it in
    ``prefect.utilities.annotations.quote`` so Prefect does not walk large values, or
    ``None`` when the run is expected to be a cache hit). It returns a :class:`StageOutput`;
    a cached result that does not load fails it with a :class:`~stages.StoreError`.
    """
    storage = PrefectStorage.of(store)
    policy = MerkleCachePolicy(
        stage_name=stage.name, version=stage.identity, key_storage=storage.key_storage
    )
    task = Task(
        fn=_stage_function(stage, storage.store),
        name=stage.name,
        task_run_name=task_run_name,
        cache_policy=policy,
        result_storage=storage.result_storage(),
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
    except StoreError:
        # A missing or corrupt cache entry does not heal by retrying (PlannedHitMissing is
        # one too); run_pipeline handles it, and an outage has its own retries.
        return False
    except Exception:
        return True
    return True
