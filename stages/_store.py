"""The memoizing store: stage results on an fsspec filesystem, keyed by Merkle key.

Layout under the store's URL (a local folder or ``s3://bucket/prefix``)::

    meta/<key>.json          small sidecar: sha256, size and file name of the payload, cost,
                             timing, stage, version, plus Prefect's result-record metadata
    data/<key>.<sha256[:16]> payload: the serialized stage output, named by its content

The sidecar is written after the payload and is the commit marker: an entry exists exactly
when its sidecar exists, so existence checks and listings touch only ``meta/`` and never
download a payload. Payload files are named by their content, so two processes that compute
the same key at once write two different files and each sidecar names its own: whichever
sidecar lands last wins, and a reader never pairs one writer's sidecar with the other's
payload (no torn entry, even when a stage's output is not bit-for-bit reproducible). Every file is written atomically: on a local disk to a temporary name
and then renamed (``os.replace`` semantics), on object stores as one PUT (S3 objects appear
whole or not at all).

Credentials come from ``storage_options`` or the standard environment variables
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ...). They are kept
only inside the fsspec filesystem object and never appear in ``repr`` or in error messages.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem
from fsspec.registry import known_implementations

from stages._errors import StoreError, StoreUnavailable

__all__ = ["DEFAULT_STORE_URL", "Store"]

DEFAULT_STORE_URL = ".eeipu/cache"
"""Where :class:`Store` keeps its entries when given no URL (relative to the working
directory), as ``storage.url`` does in the shipped ``local`` storage config."""

logger = logging.getLogger(__name__)

# Errors that retrying cannot fix: an absent object, refused credentials, a bad path.
_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, KeyError)
# Packages whose errors are network/service errors (worth a retry); anything else, such as a
# TypeError, is a bug and is raised at once.
_NETWORK_PACKAGES = {
    "botocore",
    "aiobotocore",
    "aiohttp",
    "s3fs",
    "gcsfs",
    "adlfs",
    "urllib3",
    "requests",
    "httpx",
    "google",
    "azure",
    "fsspec",
}


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, _PERMANENT):
        return False
    return isinstance(exc, OSError) or type(exc).__module__.split(".")[0] in _NETWORK_PACKAGES


def _modified(entry: Mapping[str, Any]) -> float:
    """Last-modified time of an ``fs.ls(detail=True)`` entry (local: mtime; S3: datetime)."""
    value = entry.get("mtime") or entry.get("LastModified") or entry.get("created") or 0.0
    return value.timestamp() if hasattr(value, "timestamp") else float(value)


def _sizes(payloads: Mapping[str, list[tuple[str, int, float]]]) -> dict[str, tuple[int, float]]:
    """``{key: (total bytes, newest modification)}`` of :meth:`Store._payloads`."""
    return {
        key: (sum(size for _, size, _ in files), max(mtime for _, _, mtime in files))
        for key, files in payloads.items()
    }


def _cause(exc: BaseException) -> str:
    """``Type: first line of the message``, for one-line errors."""
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {first}"


def _filesystem(url: str, protocol: str, options: Mapping[str, Any]) -> tuple[Any, str]:
    """``fsspec.core.url_to_fs``, with one-line errors for an unknown protocol or a protocol
    whose package is not installed (fsspec's registry names the package to install)."""
    if "::" not in url and protocol not in fsspec.available_protocols():
        raise StoreError(
            f"cannot use storage {url}: fsspec knows no protocol {protocol!r}; use a local "
            "folder, s3://bucket/prefix or another fsspec URL"
        )
    try:
        return fsspec.core.url_to_fs(url, **options)
    except ImportError as exc:
        hint = known_implementations.get(protocol, {}).get("err") or str(exc)
        raise StoreError(f"cannot use storage {url}: {hint} ({exc.__cause__ or exc})") from exc


def _check_key(key: str) -> str:
    # Keys become file names; refuse anything that could escape the store's folders.
    if not key or any(c in key for c in "/\\") or key.startswith("."):
        raise ValueError(f"a store key must be a plain file name, but got {key!r}")
    return key


class Store:
    """Stage results on an fsspec filesystem.

    Args:
        url: A local folder (default ``.eeipu/cache``, made absolute) or any fsspec URL such
            as ``s3://bucket/prefix``.
        storage_options: Passed to the fsspec filesystem (for S3: ``key``, ``secret``,
            ``endpoint_url``, ``client_kwargs``...). For S3 without an explicit endpoint,
            ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` are honoured.
        retry_seconds: Remote stores only: how long a failing read or write is retried,
            with exponential backoff (0.25 s doubling up to 8 s), before it raises
            :class:`StoreUnavailable` naming the endpoint. Errors that retrying cannot fix
            (a missing object, refused credentials) are raised at once.

    Raises:
        StoreError: When fsspec knows no such protocol, or the package it needs for the
            protocol is not installed (the message names it, e.g. ``gcsfs`` for ``gs://``).

    Example:
        >>> import tempfile
        >>> store = Store(tempfile.mkdtemp())
        >>> _ = store.write("k1", b"payload", {"cost": 1.0})
        >>> store.exists("k1"), store.read("k1")
        (True, b'payload')
    """

    def __init__(
        self,
        url: str | os.PathLike[str] = DEFAULT_STORE_URL,
        storage_options: Mapping[str, Any] | None = None,
        retry_seconds: float = 30.0,
    ) -> None:
        url = os.fspath(url)
        self.retry_seconds = float(retry_seconds)
        protocol = url.split("://", 1)[0] if "://" in url else "file"
        options = dict(storage_options or {})
        if protocol in ("file", "local"):
            url = os.path.abspath(url.split("://", 1)[-1])
        elif protocol in ("s3", "s3a"):
            endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            if endpoint and "endpoint_url" not in options:
                options["endpoint_url"] = endpoint
            # This store retries with backoff itself (``retry_seconds``); botocore's own
            # retries would multiply the wait, so each attempt is a single request.
            config = dict(options.get("config_kwargs") or {})
            config.setdefault("retries", {"max_attempts": 1})
            config.setdefault("connect_timeout", 10)
            options["config_kwargs"] = config
        if protocol not in ("file", "local"):
            # Another process may write at any time: never answer from a stale listing.
            options.setdefault("use_listings_cache", False)
        self.url = url.rstrip("/")
        self.fs, root = _filesystem(self.url, protocol, options)
        self.root = root.rstrip("/")
        self._atomic_rename = isinstance(self.fs, LocalFileSystem)
        # Digests and run facts waiting for the sidecar write (see write_meta).
        self._pending: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    # ------------------------------------------------------------------ paths
    def meta_path(self, key: str) -> str:
        return f"{self.root}/meta/{_check_key(key)}.json"

    def data_path(self, key: str, name: str | None = None) -> str:
        """Path of a payload file: ``name`` from the sidecar, or the legacy ``data/<key>``."""
        return f"{self.root}/data/{_check_key(name or key)}"

    def payload_path(self, key: str) -> str:
        """Path of the payload that the committed sidecar of ``key`` names.

        Raises:
            KeyError: When the key is not in the store.
        """
        return self.data_path(key, self.read_meta(key).get("eeipu", {}).get("payload"))

    # ------------------------------------------------------------------ queries
    def exists(self, key: str) -> bool:
        """True when the entry is committed (its sidecar exists). Reads no payload."""
        return bool(self._retry(self.fs.exists, self.meta_path(key)))

    def keys(self) -> set[str]:
        """All committed keys, from ONE listing of ``meta/`` (no payload is touched)."""
        folder = f"{self.root}/meta"
        try:
            names = self._retry(self.fs.ls, folder, detail=False)
        except FileNotFoundError:
            return set()
        keys = set()
        for name in names:
            base = str(name).rstrip("/").rsplit("/", 1)[-1]
            if base.endswith(".json") and not base.startswith("."):
                keys.add(base[: -len(".json")])
        return keys

    def read_meta_bytes(self, key: str) -> bytes:
        """The sidecar of ``key`` as stored (Prefect reads it as a result record's metadata).

        Raises:
            FileNotFoundError: When the key is not in the store.
        """
        return self._retry(self.fs.cat_file, self.meta_path(key))

    def read_meta(self, key: str) -> dict[str, Any]:
        """The sidecar of ``key``.

        Raises:
            KeyError: When the key is not in the store.
        """
        try:
            return json.loads(self.read_meta_bytes(key))
        except FileNotFoundError:
            raise KeyError(f"key {key!r} is not in {self!r}") from None

    def read(self, key: str) -> bytes:
        """The payload of ``key``, checked against the sidecar's sha256.

        Raises:
            KeyError: When the key is not in the store.
            StoreError: When the payload is missing or does not match its checksum.
        """
        meta = self.read_meta(key)
        try:
            payload = self._retry(
                self.fs.cat_file, self.data_path(key, meta.get("eeipu", {}).get("payload"))
            )
        except FileNotFoundError as exc:
            raise StoreError(
                f"entry {key!r} in {self!r} has a sidecar but no payload; delete it with "
                f"Store.delete({key!r}) so the stage runs again"
            ) from exc
        expected = meta.get("eeipu", {}).get("sha256")
        if expected is not None and hashlib.sha256(payload).hexdigest() != expected:
            raise StoreError(
                f"payload of entry {key!r} in {self!r} does not match its sha256 checksum "
                f"(corrupt or overwritten); delete it with Store.delete({key!r})"
            )
        return payload

    # ------------------------------------------------------------------ writes
    def write(
        self, key: str, payload: bytes, meta: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Write payload then sidecar (the commit marker), each atomically.

        Args:
            key: The entry's key (a Merkle key).
            payload: Serialized stage output.
            meta: Extra facts for the sidecar's ``eeipu`` section (cost, seconds, stage...).

        Returns:
            The sidecar written.
        """
        facts = self.write_payload(key, payload)
        facts.update(meta or {})
        return self.write_meta(key, facts=facts)

    def write_payload(self, key: str, payload: bytes) -> dict[str, Any]:
        """Write a payload file, named by its content, without committing the entry.

        The entry exists only once :meth:`write_meta` writes its sidecar, which records this
        payload. :meth:`write` does both; the two steps are apart for Prefect, whose result
        store writes a result's payload and its metadata in separate calls.

        Returns:
            ``{"sha256", "size", "payload"}``: the payload's digest, bytes and file name.
        """
        digest = hashlib.sha256(payload).hexdigest()
        name = f"{_check_key(key)}.{digest[:16]}"
        self._put(self.data_path(key, name), payload)
        facts = {"sha256": digest, "size": len(payload), "payload": name}
        with self._lock:
            self._pending.setdefault(key, {}).update(facts)
        return dict(facts)

    def note(self, key: str, **facts: Any) -> None:
        """Remember facts (cost, timing) for the sidecar that the next :meth:`write_meta` of
        ``key`` writes in this process."""
        with self._lock:
            self._pending.setdefault(key, {}).update(facts)

    def write_meta(
        self,
        key: str,
        record: Mapping[str, Any] | None = None,
        facts: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Commit ``key``: atomically write its sidecar, the commit marker.

        Args:
            key: The entry's key.
            record: Top-level sidecar fields (Prefect's result-record metadata).
            facts: For the sidecar's ``eeipu`` section, over what :meth:`write_payload` and
                :meth:`note` recorded for ``key`` in this process.

        Returns:
            The sidecar written or, when another thread committed ``key`` first and this
            process wrote no payload for it, the committed one.
        """
        with self._lock:
            pending = self._pending.pop(key, {})
        extra = {**pending, **(facts or {})}
        if "sha256" not in extra:
            if self.exists(key):
                # Another thread of this process committed this key (with these facts)
                # first: its entry is whole; keep it.
                return self.read_meta(key)
            # The payload was written through another Store object: hash what is stored.
            payload = self._retry(self.fs.cat_file, self.data_path(key))
            extra.update(sha256=hashlib.sha256(payload).hexdigest(), size=len(payload))
        extra.setdefault("written_at", time.time())
        sidecar = {**(record or {}), "eeipu": {"key": key, **extra}}
        self._put(self.meta_path(key), json.dumps(sidecar, sort_keys=True).encode("utf-8"))
        return sidecar

    def delete(self, key: str) -> None:
        """Remove an entry (sidecar first, so it stops existing before its payload goes)."""
        try:
            payload = self.payload_path(key)
        except (KeyError, ValueError):  # ValueError: an unreadable sidecar
            payload = self.data_path(key)
        for path in {self.meta_path(key): 0, payload: 0, self.data_path(key): 0}:
            with contextlib.suppress(FileNotFoundError):
                self._retry(self.fs.rm_file, path)

    @property
    def endpoint(self) -> str | None:
        """The S3 endpoint in use (None for AWS's default or a local folder)."""
        kwargs = getattr(self.fs, "client_kwargs", None) or {}
        return getattr(self.fs, "endpoint_url", None) or kwargs.get("endpoint_url")

    def check(self) -> None:
        """Fail fast, with one clear line, when the storage is unreachable or missing.

        Raises:
            StoreError: Naming the URL and endpoint (never credentials) and the cause.
        """
        where = self.url + (f" (endpoint {self.endpoint})" if self.endpoint else "")
        if self._atomic_rename:
            try:
                self.fs.makedirs(self.root, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot use storage {where}: {_cause(exc)}") from exc
            return
        bucket = self.root.split("/", 1)[0]
        try:
            self.fs.ls(bucket, detail=False)
        except FileNotFoundError as exc:
            raise StoreError(
                f"storage {where}: bucket {bucket!r} does not exist; create it first"
            ) from exc
        except Exception as exc:
            raise StoreError(f"cannot reach storage {where}: {_cause(exc)}") from exc

    # ------------------------------------------------------------------ size and eviction
    def usage(self) -> dict[str, tuple[int, float]]:
        """``{key: (bytes, last modified)}`` of every payload, from ONE listing of ``data/``.

        Includes payloads without a committed sidecar (an interrupted write, the loser of two
        writers of one key); their bytes count too.
        """
        return _sizes(self._payloads())

    def evict(
        self,
        max_bytes: int,
        value: Mapping[str, float],
        protect: Iterable[str] = (),
        *,
        dry_run: bool = False,
    ) -> list[str]:
        """Delete entries until the payloads take at most ``max_bytes``.

        Entries go in order of ``value`` (lowest first; keys missing from it count as
        ``-inf``), oldest first among equals. ``protect`` lists keys that must stay (a
        trial in flight). Returns the evicted keys. With ``dry_run`` nothing is deleted:
        it returns the keys, in the same order, that a real call would evict now.
        """
        payloads = self._payloads()
        usage = _sizes(payloads)
        total = sum(size for size, _ in usage.values())
        if total <= max_bytes:
            return []
        keep = set(protect)
        order = sorted(
            (k for k in usage if k not in keep),
            key=lambda k: (value.get(k, -math.inf), usage[k][1]),
        )
        evicted = []
        for key in order:
            if total <= max_bytes:
                break
            if not dry_run:
                # Sidecar first (the entry stops existing), then every payload file of the key.
                for path in [self.meta_path(key)] + [path for path, _, _ in payloads[key]]:
                    with contextlib.suppress(FileNotFoundError):
                        self._retry(self.fs.rm_file, path)
            total -= usage[key][0]
            evicted.append(key)
        return evicted

    def _payloads(self) -> dict[str, list[tuple[str, int, float]]]:
        """``{key: [(path, bytes, last modified), ...]}`` from one listing of ``data/``."""
        try:
            entries = self._retry(self.fs.ls, f"{self.root}/data", detail=True)
        except FileNotFoundError:
            return {}
        out: dict[str, list[tuple[str, int, float]]] = {}
        for e in entries:
            base = str(e["name"]).rstrip("/").rsplit("/", 1)[-1]
            if base.startswith(".") or e.get("type") == "directory":
                continue
            out.setdefault(base.split(".", 1)[0], []).append(
                (str(e["name"]), int(e.get("size") or 0), _modified(e))
            )
        return out

    # ------------------------------------------------------------------ side files
    def write_file(self, relpath: str, content: bytes) -> None:
        """Atomically write a side file (a study journal record, say) under the store root."""
        self._put(f"{self.root}/{relpath.lstrip('/')}", content)

    def read_file(self, relpath: str) -> bytes:
        """Read a side file written by :meth:`write_file`."""
        return self._retry(self.fs.cat_file, f"{self.root}/{relpath.lstrip('/')}")

    def list_files(self, relpath: str) -> list[str]:
        """Names of the files in a side folder (one listing; empty if it does not exist)."""
        try:
            names = self._retry(self.fs.ls, f"{self.root}/{relpath.strip('/')}", detail=False)
        except FileNotFoundError:
            return []
        return sorted(str(n).rstrip("/").rsplit("/", 1)[-1] for n in names)

    # ------------------------------------------------------------------ internals
    def _retry(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Call ``fn``; on a remote store, retry transient errors with backoff."""
        if self._atomic_rename:
            return fn(*args, **kwargs)
        start = time.monotonic()
        delay, attempt = 0.25, 0
        while True:
            attempt += 1
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                if not _transient(exc):
                    raise
                waited = time.monotonic() - start
                if waited + delay > self.retry_seconds:
                    where = self.url + (f" (endpoint {self.endpoint})" if self.endpoint else "")
                    raise StoreUnavailable(
                        f"storage {where} is unavailable: {attempt} attempts over "
                        f"{waited:.0f}s failed ({_cause(exc)}); re-run the "
                        "same command to resume once it is back"
                    ) from exc
                logger.warning(
                    "storage %s: %s (%s); retrying in %.2gs",
                    self.url,
                    getattr(fn, "__name__", "call"),
                    type(exc).__name__,
                    delay,
                )
                time.sleep(delay)
                delay = min(2 * delay, 8.0)

    def _put(self, path: str, content: bytes) -> None:
        if self._atomic_rename:
            folder = path.rsplit("/", 1)[0]
            self.fs.makedirs(folder, exist_ok=True)
            tmp = f"{folder}/.tmp-{uuid.uuid4().hex}"
            with open(tmp, "wb") as f:
                f.write(content)
            os.replace(tmp, path)  # atomic on POSIX within one filesystem
        else:
            self._retry(self.fs.pipe_file, path, content)  # one PUT: atomic on object stores
