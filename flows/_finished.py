"""A finished study's re-run, answered from its journal and outputs alone.

``eeipu tune`` of a study with nothing left to run (its budget spent, or ``max_trials``
reached) used to build the optimizer, replay the journal, fit a model for the recommended
configuration and redraw the plot, to print what the run that finished it had printed and
written. When that run's outputs are up to date (``results.csv`` and ``best.yaml`` are what
the journal gives now, ``best.yaml`` holds its ``recommended`` section, the plot is not older
than ``best.yaml``), :func:`answer_finished` says so and leaves them as they are: no torch,
no Prefect, no model. Anything it cannot decide from the journal (warm-start priors, another
budget than the journal's, a gap in the trial numbers, stale outputs) goes the full way,
which checks and writes as before (:func:`flows.study.report_finished`).
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import yaml

from flows._journal import StudyJournal
from flows._outputs import best_record, output_paths, results_csv, study_summary, trial_rows
from flows._progress import FILE_ONLY
from flows.runtime import say

if TYPE_CHECKING:
    from flows._config import StudyConfig
    from stages import Store

__all__ = ["StudyResult", "answer_finished", "done_line", "nothing_left_line"]

logger = logging.getLogger("eeipu")


@dataclass(frozen=True)
class StudyResult:
    """What a study run returns (:meth:`flows.Study.optimize`, ``eeipu tune``).

    Attributes:
        study: The study's name.
        n_trials: Trials in its journal.
        spent: Budget spent, warm-up included.
        best_objective: The best trial's objective (None: no trial succeeded).
        best_params: The best trial's ``{stage: {param: value}}``.
        outputs: ``{"csv", "yaml", "png"}``: paths of ``results.csv``, ``best.yaml`` and the
            plot.
        journal_url: Where the study's journal lives.
        best_trial: The best trial's number in the journal and ``results.csv``.
    """

    study: str
    n_trials: int
    spent: float
    best_objective: float | None
    best_params: dict[str, Any] | None
    outputs: dict[str, str]
    journal_url: str
    best_trial: int | None = None  # the best trial's number in the journal and results.csv


def nothing_left_line(cfg: StudyConfig, reason: str, detail: str = "") -> str:
    """What a re-run of a finished study says first (``reason``: why it is finished)."""
    return (
        f"study {cfg.study!r}: nothing left to run ({reason}){detail}; raise `budget` or "
        "`max_trials`, or set `extra_budget`, to continue it"
    )


def done_line(
    cfg: StudyConfig,
    n_trials: int,
    spent: float,
    best: tuple[float, int] | None,
    *,
    workers: int | None = None,
    stopped: str | None = None,
) -> str:
    """A study's last line: trials, spent/budget, why it stopped and its ``best`` (objective,
    trial number)."""
    return (
        f"done: {n_trials} trials"
        + (f" on {workers} workers" if workers else "")
        + f", spent {spent:.4g}/{cfg.budget:g} ({100.0 * spent / cfg.budget:.0f}%)"
        + (f"; stopped: {stopped}" if stopped else "")
        + "; best "
        + ("-" if best is None else f"{best[0]:.6g} (trial {best[1]})")
        + f"; outputs in {cfg.output_dir}"
    )


def answer_finished(cfg: StudyConfig, store: Store) -> StudyResult | None:
    """Answer a re-run of a study with nothing left to run whose outputs are up to date:
    its two lines, and the result :func:`flows.study.report_finished` would return. None
    when the study may run on, or when only the full way can answer (see the module)."""
    journal = StudyJournal(store, cfg.study)
    header = journal.header()
    if header is None or header.get("warm_start") or header.get("budget") != cfg.budget:
        return None
    records = journal.records()
    if not journal.numbered(records):
        return None  # the replay says what is wrong
    spent = sum(r.cost for r in records)
    if spent >= cfg.budget:  # as Optimizer.done and flows.study.why_done say it
        reason = f"budget {cfg.budget:g} spent"
    elif cfg.max_trials is not None and len(records) >= cfg.max_trials:
        reason = f"max_trials={cfg.max_trials} reached"
    else:
        return None
    if not _same_study(cfg, header):
        return None  # the full way names what differs
    summary = study_summary(cfg.study, records, cfg.pipeline.direction)
    paths = output_paths(cfg.output_dir)
    if not _up_to_date(paths, summary, trial_rows(records, cfg.pipeline.direction)):
        return None
    workers = cfg.parallel if cfg.parallel > 1 else None
    best = best_record(records, cfg.pipeline.direction)
    for line in (
        nothing_left_line(cfg, reason, f"; its outputs in {cfg.output_dir} are up to date"),
        done_line(
            cfg,
            len(records),
            spent,
            None if best is None else (best.objective, best.number),
            workers=workers,
            stopped=reason,
        ),
    ):
        say(cfg, line, logger)
        if cfg.progress:  # the console has it; tune.log too
            logger.info(line, extra=FILE_ONLY)
    return StudyResult(
        study=cfg.study,
        n_trials=len(records),
        spent=spent,
        best_objective=None if best is None else best.objective,
        best_params=None if best is None else best.params,
        outputs={k: str(v) for k, v in paths.items()},
        journal_url=journal.url,
        best_trial=None if best is None else best.number,
    )


def _same_study(cfg: StudyConfig, header: dict[str, Any]) -> bool:
    """Whether ``cfg`` is the journaled study (what ``StudyJournal.open`` checks). The
    search space comes from the config's ``pipeline.space`` when it gives one and pins no
    parameter; else from the pipeline (its factory's module is imported)."""
    from eeipu import SearchSpace
    from flows.runtime import build_pipeline

    if cfg.pipeline.space is not None and not cfg.pipeline.fixed:
        space = cfg.pipeline.space
    else:
        space = build_pipeline(cfg).space_dict()
    ours = StudyJournal.identity(cfg, SearchSpace.from_dict(space).to_dict())
    return not StudyJournal.differences(header, ours)


def _up_to_date(paths: dict[str, Any], summary: dict[str, Any], rows: list[dict[str, Any]]) -> bool:
    """Whether the outputs are what the journal gives: ``results.csv`` and ``best.yaml`` (with
    its ``recommended`` section wherever there is a best trial) as it would write them, and
    the plot drawn after ``best.yaml``."""
    try:
        written = yaml.safe_load(paths["yaml"].read_text())
        csv_text = paths["csv"].read_bytes().decode()
        fresh_plot = paths["png"].stat().st_mtime_ns >= paths["yaml"].stat().st_mtime_ns
    except (OSError, ValueError, yaml.YAMLError):  # UnicodeDecodeError is a ValueError
        return False
    # Rows as dicts: a live run orders the columns by stage, a replayed journal by name.
    same_rows = _csv_rows(csv_text) == _csv_rows(results_csv(rows))
    if not isinstance(written, dict) or not fresh_plot or not same_rows:
        return False
    recommended = written.pop("recommended", None)
    return written == summary and (recommended is not None) == (summary["best"] is not None)


def _csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))
