"""Inspect a storage from the command line: its studies, one study's trials, the stage cache.

``flows/cli.py`` runs these as subcommands of ``eeipu``. Each takes the arguments after
the subcommand's name and returns the exit code: 0, or 2 after one ``error: ...`` line on
stderr when the input is bad (an unknown study, an unusable storage, a bad size)::

    eeipu studies [--storage URL]                                   one row per study
    eeipu show STUDY [--storage URL] [--outputs DIR] [--write DIR]  trials, best, recommended
    eeipu best STUDY [--storage URL] [--outputs DIR] [--recommended]  YAML to feed back
    eeipu cache [--storage URL] [--max-bytes SIZE] [--study NAME]   sizes, eviction dry run

The storage is opened as a study opens it (``stages.Store``): a local folder, or
``s3://bucket/prefix`` with credentials and endpoint from the standard ``AWS_*`` variables.
Nothing here writes to the storage, and nothing writes files but ``show --write DIR``.
The recommended configuration (the best posterior mean, ``eeipu.Optimizer.recommend``) is
read from the ``best.yaml`` that the study's run wrote (``--outputs``, default
``outputs/STUDY``), not recomputed: that would load torch and fit a model. None of these
commands imports torch or Prefect (``cache --max-bytes`` rebuilds the studies' pipelines,
which may).

Example:
    >>> import tempfile
    >>> from flows.inspection import studies_main
    >>> studies_main(["--storage", tempfile.mkdtemp()])  # doctest: +ELLIPSIS
    no studies in /...
    0
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import yaml
from pydantic import ValidationError

from flows._journal import StudyJournal
from flows._outputs import best_record, record_of, trial_rows, write_outputs
from flows.records import Recommended, TrialRecord, warmup_cost
from stages import Store, StoreError

if TYPE_CHECKING:
    from stages import Pipeline, Stage

# Reading a journal and a store needs neither torch nor Prefect, so these commands answer
# at once: what imports them (the config models, a study's pipeline, eviction's ranking)
# is imported where `cache --max-bytes` needs it.

__all__ = [
    "DEFAULT_STORAGE",
    "best_main",
    "best_trial",
    "cache_main",
    "human_bytes",
    "recommended_trial",
    "show_main",
    "studies_main",
]

# The storage URL of the shipped default config, flows/conf/storage/local.yaml.
DEFAULT_STORAGE = ".eeipu/cache"

_NO_SIDECAR = "(no sidecar)"  # a payload without a committed entry (an interrupted write)
# A sidecar that names no stage: Prefect's own result of a *failed* stage run (the pickled
# exception, under a random key) lands in the same storage.
_NO_STAGE = "(no stage)"


class _BadInput(Exception):
    """Input the user can fix; its message is printed as one ``error:`` line."""


@dataclass(frozen=True)
class _Study:
    name: str
    header: dict[str, Any]
    records: list[TrialRecord]

    @property
    def direction(self) -> str:
        return str(self.header.get("direction", "maximize"))


class _Entry(NamedTuple):
    stage: str
    version: str | None
    size: int


# ---------------------------------------------------------------------- entry points
def studies_main(argv: Sequence[str]) -> int:
    """``eeipu studies``: one row per study on the storage, newest first.

    Args:
        argv: The arguments after ``studies``.

    Returns:
        The exit code: 0, or 2 when the storage cannot be used.
    """
    parser = _parser("studies", "List the studies on a storage, most recently updated first.")
    return _guarded(_studies, parser.parse_args(argv))


def show_main(argv: Sequence[str]) -> int:
    """``eeipu show STUDY``: the trials table and the best and recommended configurations.

    Prints only; ``--write DIR`` also writes ``results.csv``, ``best.yaml`` and
    ``best_vs_cost.png`` into ``DIR``, with the recommended configuration the study wrote.

    Args:
        argv: The arguments after ``show``.

    Returns:
        The exit code: 0, or 2 for an unknown study or an unusable storage.
    """
    parser = _study_parser(
        "show",
        "Print one study's trials and its best and recommended configurations; "
        "writes nothing unless --write is given.",
    )
    parser.add_argument(
        "--write",
        metavar="DIR",
        help="also write results.csv, best.yaml and best_vs_cost.png into DIR "
        "(best.yaml keeps the recommended configuration from --outputs)",
    )
    return _guarded(_show, parser.parse_args(argv))


def best_main(argv: Sequence[str]) -> int:
    """``eeipu best STUDY``: the best configuration as YAML to feed back into a study.

    Prints ``{stage: {param: value}}`` with comments naming the trial and objective and the
    Hydra override (``++pipeline.fixed=...``) that pins it; ``--recommended`` prints the
    recommended configuration instead, as the study's run wrote it to ``best.yaml``.

    Args:
        argv: The arguments after ``best``.

    Returns:
        The exit code: 0, or 2 for an unknown study, an unusable storage, a study without a
        complete trial or (``--recommended``) without a recommended configuration.
    """
    parser = _study_parser(
        "best",
        "Print a study's best configuration as YAML ({stage: {param: value}}), for "
        "`pipeline.fixed` in a config file or as a Hydra override.",
    )
    parser.add_argument(
        "--recommended",
        action="store_true",
        help="the recommended configuration (best posterior mean) instead of the best "
        "observed one, as the study's run wrote it to best.yaml under --outputs",
    )
    return _guarded(_best, parser.parse_args(argv))


def cache_main(argv: Sequence[str]) -> int:
    """``eeipu cache``: the stage cache's size per stage, and what eviction would remove.

    Args:
        argv: The arguments after ``cache``.

    Returns:
        The exit code: 0, or 2 for a bad ``--max-bytes``, an unknown study or an unusable
        storage.
    """
    parser = _parser(
        "cache", "Show the stage cache's size per stage and what a size cap would evict."
    )
    parser.add_argument(
        "--max-bytes",
        metavar="SIZE",
        help="list what eviction down to SIZE (bytes, or 500MB, 2GiB) would remove; "
        "deletes nothing",
    )
    parser.add_argument(
        "--study",
        metavar="NAME",
        help="rank entries by this study's trials, as its own eviction does "
        "(default: every study on the storage)",
    )
    return _guarded(_cache, parser.parse_args(argv))


# ---------------------------------------------------------------------- shared plumbing
def _parser(command: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"eeipu {command}", description=description)
    parser.add_argument(
        "--storage",
        metavar="URL",
        default=DEFAULT_STORAGE,
        help=f"a local folder or s3://bucket/prefix (default: {DEFAULT_STORAGE})",
    )
    return parser


def _study_parser(command: str, description: str) -> argparse.ArgumentParser:
    """:func:`_parser` with a ``STUDY`` and the ``--outputs`` folder its run wrote."""
    parser = _parser(command, description)
    parser.add_argument("study", metavar="STUDY", help="the study's name (see `eeipu studies`)")
    parser.add_argument(
        "--outputs",
        metavar="DIR",
        help="where the study's run wrote its outputs, read for the recommended "
        "configuration in its best.yaml (default: outputs/STUDY, the default output_dir)",
    )
    return parser


def _guarded(command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run ``command``; bad input becomes one ``error:`` line and exit code 2."""
    try:
        return command(args)
    except (_BadInput, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
    except BrokenPipeError:  # `eeipu best X | head` stopped reading: no storage error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nor one at exit
        return 0
    except OSError as exc:  # a local folder we may not read, say
        print(f"error: cannot read storage {args.storage}: {_one_line(exc)}", file=sys.stderr)
    return 2


def _one_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"


def _open_store(url: str) -> Store:
    """The storage, opened as a study opens it (credentials from the environment)."""
    store = Store(url)
    if "://" in store.url:
        store.check()  # remote: one line naming the endpoint when it cannot be reached
    elif os.path.exists(store.url) and not os.path.isdir(store.url):
        raise StoreError(f"cannot use storage {store.url}: it is a file, not a folder")
    return store


def _study_names(store: Store) -> list[str]:
    """Names of the folders under ``studies/`` that hold a ``study.json``."""
    return [n for n in store.list_files("studies") if _header(store, n) is not None]


def _header(store: Store, name: str) -> dict[str, Any] | None:
    try:
        return StudyJournal(store, name).header()
    except NotADirectoryError:  # a stray file under studies/
        return None
    except ValueError as exc:
        raise _BadInput(f"study {name!r} in {store.url}: unreadable study.json ({exc})") from exc


def _load(store: Store, name: str) -> _Study:
    journal = StudyJournal(store, name)
    header = _header(store, name)
    if header is None:
        known = ", ".join(_study_names(store)) or "none"
        raise _BadInput(f"no study {name!r} in {store.url}; known: {known}")
    try:
        records = journal.records()
    except ValueError as exc:
        raise _BadInput(f"study {name!r} in {store.url}: unreadable record ({exc})") from exc
    return _Study(name, header, records)


def _table(
    header: Sequence[str], rows: Sequence[Sequence[str]], right: frozenset[int] = frozenset()
) -> str:
    """Plain aligned columns, two spaces apart; ``right`` holds the right-aligned ones."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def human_bytes(n: int | float) -> str:
    """``163`` -> ``163 B``, ``1_300_000`` -> ``1.2 MiB`` (powers of 1024).

    Example:
        >>> human_bytes(1_300_000)
        '1.2 MiB'
    """
    if n < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            break
    return f"{n:.1f} {unit}"


# ---------------------------------------------------------------------- eeipu studies
def _studies(args: argparse.Namespace) -> int:
    store = _open_store(args.storage)
    studies = [_load(store, n) for n in _study_names(store)]
    if not studies:
        where = "" if os.path.isdir(store.url) or "://" in store.url else " (no such folder)"
        print(f"no studies in {store.url}{where}")
        return 0
    studies.sort(key=lambda s: _last_update(s.records) or -math.inf, reverse=True)
    header = ["STUDY", "METHOD", "PIPELINE", "TRIALS", "FAILED", "SPENT/BUDGET", "BEST"]
    print(f"{len(studies)} {'study' if len(studies) == 1 else 'studies'} in {store.url}")
    print(
        _table(
            [*header, "LAST UPDATE (UTC)"],
            [_summary(s) for s in studies],
            right=frozenset({3, 4, 5, 6}),
        )
    )
    return 0


def _last_update(records: Sequence[TrialRecord]) -> float | None:
    """When the newest record was told (its ``told_at``)."""
    times = [r.told_at or r.asked_at for r in records]
    return max((t for t in times if t is not None), default=None)


def _summary(study: _Study) -> list[str]:
    # trial_rows sums each record's costs, as the optimizer's `spent` does (failed included).
    rows = trial_rows(study.records, study.direction)
    spent = rows[-1]["cumulative_cost"] if rows else 0.0
    best = rows[-1]["best"] if rows else None
    failed = sum(not r.complete for r in study.records)
    budget = study.header.get("budget")
    budget_text = "?" if budget is None else f"{budget:g}"
    return [
        study.name,
        str(study.header.get("method", "?")),
        str((study.header.get("pipeline") or {}).get("name", "?")),
        str(len(study.records)),
        str(failed),
        f"{spent:.4g}/{budget_text}",
        _num(best),
        _when(_last_update(study.records)),
    ]


# ---------------------------------------------------------------------- eeipu show
def _show(args: argparse.Namespace) -> int:
    store = _open_store(args.storage)
    study = _load(store, args.study)
    print(f"study {study.name}: " + ", ".join(_summary_facts(study)))
    if study.records:
        print(_trials_table(study))
    else:
        print("no trials told yet")
    best = _best_record(study)
    recommended, source = _recommended(study, args.outputs)
    if best is not None:
        print(f"\nbest configuration (eeipu best {study.name}):")
        print(_feedback_yaml(study, best, "best observed configuration").rstrip())
    if recommended is not None:
        print(f"\nrecommended configuration (eeipu best {study.name} --recommended):")
        print(_feedback_yaml(study, recommended, _recommended_title(recommended, source)).rstrip())
    if args.write:
        if recommended is None:
            print(f"note: {source}; best.yaml is written without it", file=sys.stderr)
        paths = write_outputs(
            args.write,
            study.name,
            study.records,
            study.direction,
            warmup_cost(study.records),
            recommended,
        )
        print("\nwrote:")
        for path in paths.values():
            print(f"  {path}")
    return 0


# ---------------------------------------------------------------------- eeipu best
def _best(args: argparse.Namespace) -> int:
    store = _open_store(args.storage)
    study = _load(store, args.study)
    if args.recommended:
        record, source = _recommended(study, args.outputs)
        if record is None:
            raise _BadInput(f"study {study.name!r}: {source}")
        print(_feedback_yaml(study, record, _recommended_title(record, source)), end="")
        return 0
    record = _best_record(study)
    if record is None:
        raise _BadInput(
            f"study {study.name!r} has no complete trial yet ({len(study.records)} told)"
        )
    print(_feedback_yaml(study, record, "best observed configuration"), end="")
    return 0


def best_trial(storage: str, study: str) -> tuple[TrialRecord, str]:
    """A study's best complete trial, as ``eeipu best`` prints it: its journal record
    (``number``, ``params`` ``{stage: {param: value}}``, ``objective``, ...) and the
    study's direction.

    Raises:
        LookupError: No such study, or none of its trials completed.
        StoreError: The storage cannot be read.
    """
    found = _found(storage, study)
    record = _best_record(found)
    if record is None:
        raise LookupError(f"study {study!r} has no complete trial yet ({len(found.records)} told)")
    return record, found.direction


def recommended_trial(
    storage: str, study: str, outputs: str | None = None
) -> tuple[Recommended, str]:
    """A study's recommended configuration (best posterior mean), as ``eeipu best
    --recommended`` prints it: what its run wrote to ``best.yaml`` under ``outputs``
    (default ``outputs/STUDY``; ``number``, ``params``, ``objective``, ``posterior_mean``),
    kept only while the journal still holds that trial, and the file it came from.

    Raises:
        LookupError: No such study, or no recommended configuration of it.
        StoreError: The storage cannot be read.
    """
    found = _found(storage, study)
    record, source = _recommended(found, outputs)
    if record is None:
        raise LookupError(f"study {study!r}: {source}")
    return record, source


def _found(storage: str, study: str) -> _Study:
    """:func:`_load` for the public readers: an unknown study is a LookupError."""
    try:
        return _load(_open_store(storage), study)
    except _BadInput as exc:
        raise LookupError(str(exc)) from None


def _best_record(study: _Study) -> TrialRecord | None:
    return best_record(study.records, study.direction)


def _recommended(study: _Study, outputs: str | None) -> tuple[Recommended | None, str]:
    """The recommended configuration that the study's run wrote to ``best.yaml``, and where
    it came from (or, with None, why there is none).

    The recommendation is the best posterior mean of a GP fitted to every complete trial
    (``eeipu.Optimizer.recommend``): computing it here would load torch and fit a model,
    so the study's own answer is read back, and kept only while the journal still holds
    that trial (same number, parameters and objective).
    """
    path = Path(outputs or Path("outputs") / study.name) / "best.yaml"
    try:
        written = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        return None, f"no recommended configuration: no {path} (the study's run writes it)"
    except (OSError, yaml.YAMLError) as exc:
        return None, f"no recommended configuration: cannot read {path} ({_one_line(exc)})"
    section = written.get("recommended") if isinstance(written, dict) else None
    if not isinstance(section, dict) or written.get("study") != study.name:
        return None, f"no recommended configuration of study {study.name!r} in {path}"
    try:
        rec = Recommended.model_validate(section)
    except ValidationError:
        return None, f"the recommended configuration in {path} is not a trial of this journal"
    match = record_of(study.records, rec.params, rec.objective)
    if match is None or match.number != rec.trial:
        return None, f"the recommended configuration in {path} is not a trial of this journal"
    return rec, str(path)


def _recommended_title(record: Recommended, source: str) -> str:
    return (
        f"recommended configuration (posterior mean {_num(record.posterior_mean)}, from {source})"
    )


def _feedback_yaml(study: _Study, record: TrialRecord | Recommended, title: str) -> str:
    """``record``'s parameters as a YAML ``{stage: {param: value}}`` document, with comments
    naming the trial and the two ways to pin them: ``pipeline.fixed`` in a config file,
    or a Hydra override."""
    params = json.loads(json.dumps(record.params))  # plain types, as best.yaml has them
    return (
        f"# study {study.name} ({study.direction}): {title}\n"
        f"# trial {record.number}, objective {_num(record.objective)}\n"
        "# pin it under `pipeline: fixed:` in a config file, or with the override:\n"
        f"#   {shlex.quote('++pipeline.fixed=' + _hydra_value(params))}\n"
        + yaml.safe_dump(params, sort_keys=False)
    )


def _hydra_value(value: Any) -> str:
    """``value`` in Hydra's override grammar: ``{prep: {k: 3, kind: "rbf"}}``.

    Strings are quoted, so one that reads as a number stays a string."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_hydra_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_hydra_value(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # inf, -inf, nan: Hydra's spelling
    return json.dumps(value)  # numbers, true/false, null


def _summary_facts(study: _Study) -> list[str]:
    row = _summary(study)
    return [
        f"pipeline {row[2]}",
        f"method {row[1]}",
        f"direction {study.direction}",
        f"{row[3]} trials ({row[4]} failed)",
        f"spent {row[5]}",
        f"best {row[6]}",
    ]


def _trials_table(study: _Study) -> str:
    rows = []
    for record, row in zip(study.records, trial_rows(study.records, study.direction), strict=True):
        params = " ".join(
            f"{stage}.{name}={_num(v) if isinstance(v, float) else v}"
            for stage, section in record.params.items()
            for name, v in section.items()
        )
        metrics = " ".join(f"{k}={_num(v)}" for k, v in record.metrics.items())
        rows.append(
            [
                str(row["trial"]),
                _num(row["objective"]),
                f"{row['cost']:.4g}",
                ",".join(record.cached) or "-",
                row["state"],
                metrics or "-",
                params,
                row["reason"] or "-",
            ]
        )
    header = ["TRIAL", "OBJECTIVE", "COST", "CACHED", "STATE", "METRICS", "PARAMS", "REASON"]
    # Metrics (every scalar the sink returned) and failure reasons, where a study has any.
    keep = [i for i in range(len(header)) if i < 5 or i == 6 or any(r[i] != "-" for r in rows)]
    return _table(
        [header[i] for i in keep], [[r[i] for i in keep] for r in rows], right=frozenset({0, 1, 2})
    )


# ---------------------------------------------------------------------- eeipu cache
def _cache(args: argparse.Namespace) -> int:
    max_bytes = None if args.max_bytes is None else _size(args.max_bytes)
    store = _open_store(args.storage)
    studies = [_load(store, args.study)] if args.study else None
    entries = _entries(store)
    if not entries:
        print(f"no cache entries in {store.url}")
        return 0
    total = sum(e.size for e in entries.values())
    print(f"cache {store.url}: {len(entries)} entries, {human_bytes(total)}")
    print(_stage_table(entries))
    if max_bytes is not None:
        if studies is None:
            studies = [_load(store, n) for n in _study_names(store)]
        unknown = f"not a trial of {args.study}" if args.study else "no study's trial"
        _dry_run(store, entries, studies, max_bytes, args.max_bytes, unknown)
    return 0


def _size(text: str) -> int:
    """``--max-bytes``, read as a study's ``storage.max_bytes`` is."""
    from pydantic import TypeAdapter, ValidationError

    from flows._config import Bytes  # loads torch (through eeipu): only for --max-bytes

    try:
        return TypeAdapter(Bytes).validate_python(text)
    except ValidationError:
        raise _BadInput(
            f"--max-bytes must be a positive size (bytes, or 500MB, 2GiB), but got {text!r}"
        ) from None


def _entries(store: Store) -> dict[str, _Entry]:
    """``{key: (stage, version, bytes)}`` of every payload and committed entry: one listing
    of ``data/`` and of ``meta/``, then one sidecar read per entry."""
    usage = store.usage()
    committed = sorted(store.keys())
    with ThreadPoolExecutor(max_workers=8) as pool:  # sidecars are small: latency-bound
        metas = dict(zip(committed, pool.map(lambda k: _sidecar(store, k), committed), strict=True))
    out = {}
    for key in sorted(set(usage) | set(committed)):
        meta = metas.get(key)
        stage = _NO_SIDECAR if meta is None else str(meta.get("stage") or _NO_STAGE)
        version = None if meta is None else meta.get("version")
        out[key] = _Entry(stage, version, usage[key][0] if key in usage else 0)
    return out


def _sidecar(store: Store, key: str) -> dict[str, Any] | None:
    try:
        return store.read_meta(key).get("eeipu", {})
    except KeyError:  # evicted since the listing
        return None
    except ValueError:  # not JSON: count it, with an unknown stage
        return {}


def _stage_table(entries: dict[str, _Entry]) -> str:
    per_stage: dict[str, list[int]] = {}
    for e in entries.values():
        n_bytes = per_stage.setdefault(e.stage, [0, 0])
        n_bytes[0] += 1
        n_bytes[1] += e.size
    order = sorted(per_stage.items(), key=lambda item: (-item[1][1], item[0]))
    rows = [[stage, str(n), human_bytes(b)] for stage, (n, b) in order]
    total = sum(e.size for e in entries.values())
    rows.append(["total", str(len(entries)), human_bytes(total)])
    return _table(["STAGE", "ENTRIES", "BYTES"], rows, right=frozenset({1, 2}))


def _dry_run(
    store: Store,
    entries: dict[str, _Entry],
    studies: Sequence[_Study],
    max_bytes: int,
    text: str,
    unknown: str,
) -> None:
    """Print what ``Store.evict`` would remove now, in its order, without deleting."""
    total = sum(e.size for e in entries.values())
    print()
    if total <= max_bytes:
        print(f"--max-bytes {text}: {human_bytes(total)} stored, within the cap; nothing to evict")
        return
    value = _values(entries, studies)
    keys = store.evict(max_bytes, value, dry_run=True)
    # A study running on this storage may have written entries since they were listed.
    listed = [entries.get(k, _Entry("?", None, 0)) for k in keys]
    freed = sum(e.size for e in listed)
    exact = f" ({freed} B)" if freed >= 1024 else ""
    print(
        f"--max-bytes {text} ({max_bytes} B): {human_bytes(total)} stored, "
        f"{human_bytes(total - max_bytes)} over; eviction would remove {len(keys)} entries, "
        f"{human_bytes(freed)}{exact}, "
        "in this order (dry run: nothing deleted):"
    )
    rows = [
        [e.stage, k[:12], human_bytes(e.size), _why(value.get(k), unknown)]
        for k, e in zip(keys, listed, strict=True)
    ]
    print(_table(["STAGE", "KEY", "BYTES", "WHY"], rows, right=frozenset({2})))


def _why(value: float | None, unknown: str) -> str:
    """The eviction policy's class of an entry (see flows/_eviction.py)."""
    if value is None:
        return unknown
    if value < 0:
        return "last stage"
    return f"prefix, trial rank {value - 1:.2f}"


def _values(entries: dict[str, _Entry], studies: Sequence[_Study]) -> dict[str, float]:
    """``reuse_value`` of each study, as its eviction computes it; a key several studies
    share keeps its highest value. Records name their stage keys and last stage; for
    journals written before they did (schema 0), the pipeline is rebuilt: a study whose
    pipeline cannot be rebuilt adds none."""
    versions: dict[str, set[str]] = {}
    for e in entries.values():
        if e.version is not None:
            versions.setdefault(e.stage, set()).add(str(e.version))
    committed = {k for k, e in entries.items() if e.stage != _NO_SIDECAR}
    from flows._eviction import reuse_value

    value: dict[str, float] = {}
    for study in studies:
        records = study.records
        if any(r.sink is None for r in records):
            try:
                records = _keyed(study, _rebuild_pipeline(study, versions, committed))
            except Exception as exc:  # a user's factory may raise anything; the listing goes on
                print(
                    f"note: cannot rebuild the pipeline of study {study.name!r} "
                    f"({_one_line(exc)}); its entries rank as no study's",
                    file=sys.stderr,
                )
                continue
        for key, v in reuse_value(records, study.direction).items():
            value[key] = max(value.get(key, -math.inf), v)
    return value


def _keyed(study: _Study, pipeline: Pipeline) -> list[TrialRecord]:
    """``study``'s records, those that do not name their stage keys and last stage given
    ``pipeline``'s."""
    sink = pipeline.sink.name
    return [
        r
        if r.sink is not None
        else r.model_copy(update={"stage_keys": pipeline.keys(r.params), "sink": sink})
        for r in study.records
    ]


def _rebuild_pipeline(study: _Study, versions: dict[str, set[str]], stored: set[str]) -> Pipeline:
    """The pipeline of a study journaled before records named their stage keys (schema 0),
    as far as its cache keys go.

    The journal names the factory (``pipeline.target``) and the search space, but not the
    factory's ``kwargs``: the factory is called with its defaults and the journaled space
    replaces the stages' own, as ``flows.study.build_pipeline`` does. Kwargs such as
    ``size`` and ``seed`` enter the stage versions, so each stage takes the version, among
    those its sidecars record, under which the most of this study's keys are stored.
    """
    from flows._config import PipelineConfig
    from stages import Pipeline

    info = study.header["pipeline"]
    built = PipelineConfig(name=str(info["name"]), target=str(info["target"])).factory()()
    space = study.header.get("space") or {}
    keys: list[dict[str, str]] = [{} for _ in study.records]
    stages = []
    for s in built.stages:
        s = replace(s, space=space.get(s.name, s.space))
        upstream = [u.name for u in built.upstream(s.name)]
        candidates = sorted(versions.get(s.name, set()) | {s.identity})
        s = replace(s, version=_fit_version(s, upstream, candidates, study.records, keys, stored))
        for record, known in zip(study.records, keys, strict=True):
            known[s.name] = _stage_key(s, s.version, upstream, record, known)
        stages.append(s)
    return Pipeline(stages, metric=built.metric, load_cost=built.load_cost)


def _stage_key(
    stage: Stage, version: str, upstream: list[str], record: TrialRecord, known: dict[str, str]
) -> str:
    from stages import merkle_key

    own = stage.normalize(record.params.get(stage.name))
    return merkle_key(stage.name, version, own, [known[u] for u in upstream])


def _fit_version(
    stage: Stage,
    upstream: list[str],
    candidates: list[str],
    records: Sequence[TrialRecord],
    keys: Sequence[dict[str, str]],
    stored: set[str],
) -> str:
    """The candidate version under which the most of these records' keys are stored (a
    tie keeps the factory's own)."""

    def hits(version: str) -> tuple[int, bool]:
        found = sum(
            _stage_key(stage, version, upstream, r, k) in stored
            for r, k in zip(records, keys, strict=True)
        )
        return found, version == stage.identity

    return max(candidates, key=hits)
