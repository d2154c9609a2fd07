"""Continuing and warm-starting studies.

* ``extra_budget``: a run of an *existing* study gets the budget of its previous run plus
  ``extra_budget`` (so a scheduled deployment keeps adding budget to one study), counted from
  what it spent instead where its last trial overshot that budget, so a run given extra
  budget always has that much to spend; a new study starts with ``budget``. The journal's
  ``study.json`` keeps the budget in force.
* ``warm_start=[names]``: earlier studies of the same pipeline and search space, on the same
  storage. Their told trials become *prior observations* of the optimizer
  (:meth:`eeipu.Optimizer.add_prior`): they train the objective and cost models, and their
  cached prefixes (confirmed by the store) join the prefix pool. They are not this study's
  trials: they spend none of its budget, take no trial numbers, do not count towards its
  ``n_init`` warm-up (which still runs) and are never its best trial. The new study's
  ``study.json`` records each source with the number of trials read from it, so a resumed
  study replays exactly the same priors even after a source study grew.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from flows._config import ConfigError, StudyConfig
from flows._journal import StudyJournal
from flows.records import TrialRecord

if TYPE_CHECKING:  # resolving a budget imports neither torch nor the pipeline layer
    from eeipu import Optimizer, SearchSpace
    from stages import Store

__all__ = ["open_study", "resolve_budget"]

# study.json keys that must match between a study and the studies it warm-starts from.
_SAME = ("space", "direction", "pipeline")


def resolve_budget(cfg: StudyConfig, store: Store) -> StudyConfig:
    """Apply ``extra_budget``: for an existing study, the larger of the previous run's
    budget and what the study spent (its last trial may overshoot the budget), plus the
    extra; ``budget`` for a new one. Returns a config without ``extra_budget`` (so applying
    it again within the same run changes nothing)."""
    if cfg.extra_budget is None:
        return cfg
    journal = StudyJournal(store, cfg.study)
    header = journal.header()
    if header is None:
        budget = cfg.budget
    else:
        spent = sum(r.cost for r in journal.records())
        budget = max(float(header["budget"]), spent) + cfg.extra_budget
    return cfg.model_copy(update={"budget": budget, "extra_budget": None})


def open_study(
    journal: StudyJournal, cfg: StudyConfig, space: SearchSpace, optimizer: Optimizer
) -> list[tuple[str, int]]:
    """Open (or check) the study's journal and add its warm-start priors to ``optimizer``.

    Returns:
        The warm-start sources as ``[name, number of trials]`` pairs, as journaled.

    Raises:
        ConfigError: A source study is missing, differs in pipeline, space or direction, or
            a resumed study was asked for other sources than it started with.
    """
    expected = json.loads(
        json.dumps(
            {
                "space": space.to_dict(),
                "direction": cfg.pipeline.direction,
                "pipeline": {"name": cfg.pipeline.name, "target": cfg.pipeline.target},
            }
        )
    )
    existing = journal.header()
    if existing is None:
        read = {name: _source(journal.store, name, expected) for name in cfg.warm_start}
        sources = [(name, len(records)) for name, records in read.items()]
    else:
        sources = [(str(n), int(k)) for n, k in existing.get("warm_start") or []]
        names = tuple(n for n, _ in sources)
        if cfg.warm_start and cfg.warm_start != names:
            raise ConfigError(
                f"study {cfg.study!r} already exists with warm_start={list(names)}, but "
                f"warm_start={list(cfg.warm_start)} was given; resume it with the same "
                "warm_start (or none) or pick a new `study` name"
            )
        read = {name: _source(journal.store, name, expected) for name in names}
    journal.open(cfg, space, extra={"warm_start": [list(s) for s in sources]})
    for name, n in sources:
        records = read[name]
        if len(records) < n:
            raise ConfigError(
                f"warm-start source study {name!r} has {len(records)} trials, but this study "
                f"started from its first {n}; restore its journal or start a new study"
            )
        for rec in records[:n]:
            optimizer.add_prior(
                rec.params,
                rec.objective if rec.complete else None,
                rec.costs,
                cached=rec.cached,
                origin=f"prior:{name}",
            )
    return sources


def _source(store: Store, name: str, expected: dict[str, Any]) -> list[TrialRecord]:
    """The told trials of warm-start source ``name``, checked to fit this study."""
    source = StudyJournal(store, name)
    header = source.header()
    if header is None:
        raise ConfigError(
            f"`warm_start` names study {name!r}, but there is no such study at {source.url}"
        )
    differ = [k for k in _SAME if header.get(k) != expected[k]]
    if differ:
        raise ConfigError(
            f"warm-start source study {name!r} has a different {', '.join(differ)}; "
            "only studies of the same pipeline and search space can warm-start a study"
        )
    return source.records()
