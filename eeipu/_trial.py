"""Trials: what ``ask`` proposes and ``tell`` completes."""

from __future__ import annotations

import copy
import enum
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Trial", "TrialState"]


class TrialState(enum.StrEnum):
    """Where a trial stands: ``PENDING`` from ``ask()`` until told, then ``COMPLETE`` (an
    objective was told) or ``FAILED`` (told ``objective=None``)."""

    PENDING = "pending"
    COMPLETE = "complete"
    FAILED = "failed"


@dataclass
class Trial:
    """One candidate configuration and, once told, its results.

    Attributes:
        number: 0-based index in asking order.
        params: ``{stage: {param: value}}`` with canonical values.
        memoized: Stages the optimizer expects to load from the cache (a leading run of
            stages, in pipeline order).
        origin: ``"warmup"`` or the method that proposed it.
        acq_value: The acquisition value of the proposal, where there is one (in nats for
            the EI-based ones; the standardized index for ``tradeoff='gittins'``).
        state: pending, complete or failed.
        objective: The objective (None while pending or when failed).
        costs: What each stage really cost (a cached stage: its load cost).
        cached: Stages that really loaded from the cache.
        stage_outputs: Optional scalar output of each stage, ``{stage: value}`` (e.g. an
            intermediate validation metric), told by pipelines that have one; cascade
            methods (``ms_bo``) model them. None when not told.
        overhead: Cost charged on top of the stages (e.g. the wall seconds of ``ask()``
            and orchestration, when a study charges them): it counts in :attr:`cost` and
            the budget, and trains no cost model.
        acq_terms: For memoization-aware methods (``eeipu``), ``acq_value`` split into its
            quality term (``log_ei``) and cost term (``cost_term``), beside those of the best
            candidate of the same ask that reuses no prefix (``log_ei_fresh``,
            ``cost_term_fresh``), or the Gittins index's terms; see
            :func:`eeipu._methods.acquisition_terms` for every key. None when not recorded.
    """

    number: int
    params: dict[str, dict[str, Any]]
    memoized: tuple[str, ...] = ()
    origin: str = "warmup"
    acq_value: float | None = None
    state: TrialState = TrialState.PENDING
    objective: float | None = None
    costs: dict[str, float] = field(default_factory=dict)
    cached: tuple[str, ...] = ()
    stage_outputs: dict[str, float] | None = None
    overhead: float = 0.0
    acq_terms: dict[str, float] | None = None

    @property
    def cost(self) -> float:
        """Total cost of the trial: the sum over stages, plus :attr:`overhead`."""
        return float(sum(self.costs.values())) + self.overhead

    def copy(self) -> Trial:
        return copy.deepcopy(self)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record of the trial (for journals and tables); ``acq_terms`` only
        when recorded."""
        out = {
            "number": self.number,
            "state": self.state.value,
            "origin": self.origin,
            "params": copy.deepcopy(self.params),
            "memoized": list(self.memoized),
            "cached": list(self.cached),
            "objective": self.objective,
            "costs": dict(self.costs),
            "acq_value": self.acq_value,
            "stage_outputs": None if self.stage_outputs is None else dict(self.stage_outputs),
            "overhead": self.overhead,
        }
        if self.acq_terms is not None:
            out["acq_terms"] = dict(self.acq_terms)
        return out
