"""Trial records: the typed, versioned formats a trial's result travels in.

    TrialOutcome       what one trial run produced: the trial flow's return value, and what
                       an executor hands the study loop
    PublishedOutcome   a TrialOutcome as a remote worker writes it to the study's storage
                       (``studies/<study>/outcomes/<run id>.json``) for the controller
    TrialRecord        one told trial in the journal (``studies/<study>/trials/<n>.json``)
    RunningMarker      the trials in flight (``studies/<study>/running.json``), re-run after
                       a crash

Each is a pydantic model; records and published outcomes carry a ``schema`` version, and
:func:`read_records`, :func:`read_published` and :func:`read_running` read what older
versions wrote (see :data:`RECORD_SCHEMA`).

Numbers and times of a trial, as a record holds them:

* ``number``: *the* trial number: its place in the journal (telling order, 0, 1, 2, ...,
  dense and stable across resumes). ``results.csv``, ``best.yaml``, progress lines, failure
  messages and ``eeipu show`` / ``eeipu best`` all show this one.
* ``asked_as``: the optimizer's ask number (``eeipu.Trial.number``) in the run that asked
  it. Trials in flight together finish out of ask order, so it may differ from ``number``;
  Prefect names a trial's run ``trial-<asked_as>``, and messages about a trial not yet told
  (held back, re-run after a crash) use it too: they come before its ``number`` exists.
* ``asked_at``: when its ask began; ``submitted_at``: when the loop handed it to the
  executor; ``started_at`` / ``finished_at``: when a remote worker began and ended running
  it (None for trials run in the controller); ``told_at``: when the loop told the optimizer.

Schema 0 (no ``schema`` field, written before these models) named ``asked_at``
``started_at``, ``told_at`` ``finished_at`` and the worker's times ``ran_from`` / ``ran_to``,
and kept neither the stage versions nor the warm-up flags: :func:`read_records` renames the
first and derives the warm-up from ``asked_as`` and the study's ``n_init``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "OUTCOME_SCHEMA",
    "RECORD_SCHEMA",
    "AskedTrial",
    "PublishedOutcome",
    "Recommended",
    "RunningMarker",
    "RunningTrial",
    "TrialOutcome",
    "TrialRecord",
    "read_published",
    "read_record",
    "read_records",
    "read_running",
    "warmup_cost",
]

#: The journal record format written now (0: records written before it had a version).
RECORD_SCHEMA = 1
#: The published outcome format written now.
OUTCOME_SCHEMA = 1

# Schema 0 names -> schema 1 names, applied in this order (``started_at`` is renamed first).
_RENAMED_V0 = (
    ("started_at", "asked_at"),
    ("finished_at", "told_at"),
    ("ran_from", "started_at"),
    ("ran_to", "finished_at"),
)


class _Model(BaseModel):
    # Unknown fields are kept, not refused: a record written by a newer version (or a custom
    # executor's extra facts) still reads.
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class TrialOutcome(_Model):
    """What a trial run produced; ``error`` is set when it failed (``costs``: what it spent).

    A failed trial says why in ``reason`` (one line: ``"ValueError: ..."``, ``"objective is
    nan"``), where in ``stage`` (None: not a stage's doing, e.g. a lost worker) and how in
    ``traceback``. ``cached`` lists the stages loaded from the cache (failed trials too),
    ``adopted`` those a crashed attempt stored, ``metrics`` every scalar the sink returned.
    ``worker``, ``flow_run_id`` / ``task_run_id``, ``started_at`` and ``finished_at`` are set
    by executors whose trials run elsewhere.
    """

    objective: float | None = None
    costs: dict[str, float] = Field(default_factory=dict)
    cached: list[str] = Field(default_factory=list)
    adopted: list[str] = Field(default_factory=list)
    seconds: dict[str, float] = Field(default_factory=dict)
    # Not `keys`: Prefect takes an object with a `keys` attribute for a mapping.
    stage_keys: dict[str, str] = Field(default_factory=dict, alias="keys")
    metrics: dict[str, float] = Field(default_factory=dict)
    sink: str | None = None
    error: str | None = None
    reason: str | None = None
    stage: str | None = None
    traceback: str | None = None
    worker: str | None = None
    flow_run_id: str | None = None
    task_run_id: str | None = None
    started_at: float | None = None
    finished_at: float | None = None

    def checked(self) -> TrialOutcome:
        """This outcome with a non-finite objective turned into a failure of the sink (a
        failed outcome keeps no objective)."""
        if self.error:
            return self.model_copy(update={"objective": None, "reason": self.reason or self.error})
        if self.objective is not None and not _finite(self.objective):
            error = f"objective is {self.objective!r}"
            return self.model_copy(
                update={"objective": None, "error": error, "reason": error, "stage": self.sink}
            )
        return self

    @classmethod
    def failure(cls, exc: Any, **facts: Any) -> TrialOutcome:
        """A stage failure (a ``stages.StageError``: what it spent, where, why)."""
        return cls(
            error=str(exc),
            reason=exc.cause or str(exc),
            stage=exc.stage,
            traceback=exc.traceback,
            costs=dict(exc.costs),
            seconds=dict(exc.seconds),
            cached=list(exc.cached),
            **facts,
        )


class PublishedOutcome(TrialOutcome):
    """A :class:`TrialOutcome` as a remote worker publishes it: with the format's
    ``schema``, the trial's ask ``number`` and the run's facts."""

    schema_: int = Field(OUTCOME_SCHEMA, alias="schema")
    number: int | None = None

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode("utf-8")


class TrialRecord(_Model):
    """One told trial, as the journal holds it (see the module docstring for the numbers
    and times). ``state`` is ``"complete"`` or ``"failed"``; ``stage_keys`` (``keys`` in
    JSON) and ``versions`` name every stage's cache key and version (identity); ``sink`` is
    the pipeline's last stage;
    ``warmup`` says whether the trial counted towards the ``n_init`` warm-up, and
    ``warmup_spent`` is what the study had spent when its warm-up ended (None until then).
    """

    schema_: int = Field(RECORD_SCHEMA, alias="schema")
    number: int
    asked_as: int | None = None
    trial_id: str | None = None
    state: Literal["complete", "failed"]
    origin: str | None = None
    params: dict[str, dict[str, Any]]
    objective: float | None = None
    costs: dict[str, float] = Field(default_factory=dict)
    cached: list[str] = Field(default_factory=list)
    memoized: list[str] = Field(default_factory=list)
    overhead: float = 0.0
    acq_value: float | None = None
    acq_terms: dict[str, Any] | None = None
    stage_outputs: dict[str, float] | None = None
    error: str | None = None
    reason: str | None = None
    failed_stage: str | None = None
    traceback: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    seconds: dict[str, float] = Field(default_factory=dict)
    stage_keys: dict[str, str] = Field(default_factory=dict, alias="keys")
    versions: dict[str, str] = Field(default_factory=dict)
    sink: str | None = None
    warmup: bool | None = None
    warmup_spent: float | None = None
    waited_for: list[int] = Field(default_factory=list)
    expected_cost: float | None = None
    evicted: int | None = None
    worker: str | None = None
    flow_run_id: str | None = None
    task_run_id: str | None = None
    asked_at: float | None = None
    ask_seconds: float = 0.0
    submitted_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    told_at: float | None = None
    optimizer_state: dict[str, Any] | None = None

    @property
    def complete(self) -> bool:
        return self.state == "complete"

    @property
    def cost(self) -> float:
        """What the trial cost the budget: stage costs plus ``overhead``, as
        ``eeipu.Trial.cost`` counts it."""
        return sum(self.costs.values()) + self.overhead

    def to_json(self) -> dict[str, Any]:
        """The record as the journal writes it (JSON types, ``schema`` included)."""
        return self.model_dump(mode="json", by_alias=True)


class Recommended(BaseModel):
    """The trial ``eeipu.Optimizer.recommend`` picked (best posterior mean), as ``best.yaml``
    keeps it: its ``trial`` number, observed ``objective``, ``posterior_mean``, ``params``."""

    model_config = ConfigDict(frozen=True)

    trial: int
    objective: float | None
    posterior_mean: float
    params: dict[str, dict[str, Any]]

    @property
    def number(self) -> int:
        return self.trial


class AskedTrial(_Model):
    """What the optimizer said of a trial in flight (``eeipu.Trial.to_dict()``'s fields that
    ``Optimizer.enqueue`` takes back)."""

    params: dict[str, dict[str, Any]]
    origin: str = "resumed"
    acq_value: float | None = None
    acq_terms: dict[str, Any] | None = None
    memoized: list[str] | None = None


class RunningTrial(_Model):
    """A trial in flight, as the crash marker (``running.json``) lists it: ``trial_id``,
    what was asked, when its ask began, and ``ref``, the executor's handle on its run (a
    flow run id) when it has one."""

    trial_id: str | None = None
    trial: AskedTrial
    asked_at: float
    ask_seconds: float = 0.0
    ref: str | None = None


class RunningMarker(_Model):
    """The crash marker: the trials in flight and the optimizer's state after the last ask."""

    trials: list[RunningTrial] = Field(default_factory=list)
    optimizer_state: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=False)


def read_running(raw: Mapping[str, Any], n_told: int) -> RunningMarker:
    """A crash marker as written by any version (``n_told``: the records journaled)."""
    if "trials" not in raw:
        # Written by an early version: the one trial in flight, numbered like its record.
        if raw["number"] < n_told:
            return RunningMarker()
        asked = AskedTrial(params=raw["params"])
        return RunningMarker(trials=[RunningTrial(trial=asked, asked_at=raw["started_at"])])
    trials = []
    for t in raw["trials"]:
        t = dict(t)
        if "asked_at" not in t:  # before record schema 1: "started_at"
            t["asked_at"] = t.pop("started_at")
        trials.append(RunningTrial.model_validate(t))
    return RunningMarker(trials=trials, optimizer_state=raw.get("optimizer_state"))


def read_record(raw: Mapping[str, Any]) -> TrialRecord:
    """One journal record as written by any version (schema 0 names renamed)."""
    return TrialRecord.model_validate(_from_v0(raw, _RENAMED_V0))


def read_records(raws: Iterable[Mapping[str, Any]], n_init: int | None = None) -> list[TrialRecord]:
    """A journal's records, in ``number`` order, as written by any version. Schema 0
    records get their warm-up flags from ``asked_as`` and the study's ``n_init`` (as
    ``eeipu.Optimizer.tell`` counted them: the warm-up ends once ``n_init`` of the trials
    asked first are told)."""
    records = sorted((read_record(r) for r in raws), key=lambda r: r.number)
    if n_init is None or all(r.schema_ >= 1 for r in records):
        return records
    spent, told, ended = 0.0, 0, None
    out = []
    for r in records:
        spent += r.cost
        if r.schema_ >= 1:
            out.append(r)
            continue
        warmup = (r.number if r.asked_as is None else r.asked_as) < n_init
        told += warmup
        if ended is None and told >= n_init:
            ended = spent
        out.append(r.model_copy(update={"warmup": warmup, "warmup_spent": ended}))
    return out


def read_published(data: bytes | str) -> PublishedOutcome:
    """A published outcome as written by any version (``ran_from`` / ``ran_to``: the worker's
    ``started_at`` / ``finished_at`` before schema 1)."""
    return PublishedOutcome.model_validate(_from_v0(json.loads(data), _RENAMED_V0[2:]))


def warmup_cost(records: Sequence[TrialRecord]) -> float | None:
    """What the study had spent when its warm-up ended (the plot's line), from the newest
    record; None while the warm-up runs."""
    return records[-1].warmup_spent if records else None


def _from_v0(raw: Mapping[str, Any], renamed: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """``raw`` with schema 0's names ``renamed`` (old, new) and ``schema: 0``; as it is when
    it names its schema."""
    data = dict(raw)
    if "schema" not in data:
        for old, new in renamed:
            if old in data:
                data[new] = data.pop(old)
        data["schema"] = 0
    return data


def _finite(x: float) -> bool:
    return x == x and x not in (float("inf"), float("-inf"))
