"""The study journal: one immutable JSON record per told trial, next to the cache.

Layout under the store root::

    studies/<study>/study.json              what the study is (space, method, seed, ...)
    studies/<study>/trials/<number>.json    one record per told trial (flows.records.TrialRecord),
                                            written atomically
    studies/<study>/running.json            the trials in flight (crash marker, see mark_running)

A record is written once and never changed (append-only by construction), each write is
atomic (temp file + rename locally, one PUT on S3), and the journal is read back with one
listing, so a study resumes after a crash and other machines can read it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from flows.records import RunningMarker, RunningTrial, TrialRecord, read_records, read_running

if TYPE_CHECKING:  # reading a journal (`eeipu studies`, `show`) loads neither torch nor Prefect
    from eeipu import Optimizer, SearchSpace
    from flows._config import StudyConfig
    from stages import Store

__all__ = ["StudyJournal"]

# Keys of study.json that must match for a study to be resumed under the same name.
_IDENTITY = ("space", "method", "seed", "n_init", "direction", "pipeline")


class StudyJournal:
    """Append-only journal of one study on a :class:`stages.Store`."""

    def __init__(self, store: Store, study: str) -> None:
        self.store = store
        self.study = study
        self.folder = f"studies/{study}"

    @property
    def url(self) -> str:
        return f"{self.store.url}/{self.folder}"

    def header(self) -> dict[str, Any] | None:
        """The study's ``study.json`` (None when the study does not exist yet)."""
        try:
            return json.loads(self.store.read_file(f"{self.folder}/study.json"))
        except FileNotFoundError:
            return None

    def open(
        self,
        config: StudyConfig,
        space: SearchSpace,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Create ``study.json``, or check that an existing study is the same study.

        ``extra`` adds keys to the header (the warm-start sources, say)."""
        header = {
            "study": self.study,
            **self.identity(config, space.to_dict()),
            "budget": config.budget,
            **(extra or {}),
        }
        existing = self.header()
        if existing is not None:
            from flows._config import ConfigError

            differ = self.differences(existing, header)
            if differ:
                raise ConfigError(
                    f"study {self.study!r} already exists at {self.url} with a different "
                    f"{', '.join(differ)}; resume it with the same settings or pick a new `study` name"
                )
        self.store.write_file(f"{self.folder}/study.json", _dumps(header))
        return header

    @staticmethod
    def identity(config: StudyConfig, space: Mapping[str, Any]) -> dict[str, Any]:
        """The header keys that make a study the same study (``space``: the search space's
        ``to_dict()``); a resumed study must match its journal's in every one."""
        return {
            "space": space,
            "method": config.optimizer.method,
            "seed": config.seed,
            "n_init": config.n_init,
            "direction": config.pipeline.direction,
            "pipeline": {"name": config.pipeline.name, "target": config.pipeline.target},
        }

    @staticmethod
    def differences(existing: Mapping[str, Any], header: Mapping[str, Any]) -> list[str]:
        """The identity keys in which a journal's ``existing`` header and ``header`` differ."""
        return [k for k in _IDENTITY if existing.get(k) != json.loads(json.dumps(header[k]))]

    def records(self) -> list[TrialRecord]:
        """Every record, in trial order (one listing, then one read per record), as
        written by any version (:func:`flows.records.read_records`)."""
        names = [n for n in self.store.list_files(f"{self.folder}/trials") if n.endswith(".json")]
        raws = [json.loads(self.store.read_file(f"{self.folder}/trials/{n}")) for n in names]
        # Only schema-0 records need the header (their warm-up is derived from n_init).
        header = self.header() if any("schema" not in r for r in raws) else None
        n_init = None if header is None else header.get("n_init")
        return read_records(raws, None if n_init is None else int(n_init))

    def numbered(self, records: list[TrialRecord]) -> bool:
        """Whether ``records`` hold every trial number from 0 on (no gap, no stray file)."""
        return all(rec.number == i for i, rec in enumerate(records))

    def append(self, record: TrialRecord) -> None:
        """Write one trial's record (atomic; a record is never rewritten)."""
        path = f"{self.folder}/trials/{record.number:06d}.json"
        self.store.write_file(path, _dumps(record.to_json()))

    def replay(self, optimizer: Optimizer) -> list[TrialRecord]:
        """Tell ``optimizer`` every journaled trial, in order; returns the records."""
        from flows._config import ConfigError

        records = self.records()
        for i, rec in enumerate(records):
            if rec.number != i:
                raise ConfigError(
                    f"the journal of study {self.study!r} at {self.url} misses trial {i}; "
                    "it was not written by this version or was edited"
                )
            optimizer.add_trial(
                rec.params,
                rec.objective if rec.complete else None,
                rec.costs,
                cached=rec.cached,
                origin=rec.origin or "replay",
                stage_outputs=rec.stage_outputs,
                overhead=rec.overhead,
            )
        if records and records[-1].optimizer_state:
            # What the method carried out of the last ask (warm-start hyperparameters):
            # the next proposal is then the one an uninterrupted run would have made.
            optimizer.load_state_dict(records[-1].optimizer_state)
        return records

    def mark_running(
        self, trials: list[RunningTrial], optimizer_state: dict[str, Any] | None
    ) -> None:
        """Note the trials in flight (written whenever one starts; see
        :class:`flows.records.RunningTrial`) and ``optimizer_state``, the optimizer's state
        after the last ask. If the process
        dies, the resumed study re-asks these trials (``Optimizer.enqueue``), re-runs them
        and adopts the stages they stored (see ``stages.run_pipeline(adopt_after=...)``).
        Entries whose ``trial_id`` is already in the journal were told: :meth:`running`
        leaves them out."""
        marker = RunningMarker(trials=trials, optimizer_state=optimizer_state)
        self.store.write_file(f"{self.folder}/running.json", _dumps(marker.to_json()))

    def running(self, records: list[TrialRecord]) -> RunningMarker:
        """What was in flight when the study last stopped and is not in ``records`` (no
        trials if none)."""
        try:
            raw = json.loads(self.store.read_file(f"{self.folder}/running.json"))
        except FileNotFoundError:
            return RunningMarker()
        marker = read_running(raw, len(records))
        told = {r.trial_id for r in records}
        trials = [t for t in marker.trials if t.trial_id is None or t.trial_id not in told]
        return marker.model_copy(update={"trials": trials})


def _dumps(obj: Any) -> bytes:
    return (json.dumps(obj, sort_keys=True, indent=1, allow_nan=False) + "\n").encode("utf-8")
