"""Run an optimizer on the synthetic problem in process, with an exactly simulated cache.

A stage is a cache hit when it and all its upstream stages ran before with the same values;
a hit costs ``load_cost`` instead of the stage's simulated cost. This drives the same
ask/tell loop as the real pipelines (no copy of it) and is what the tests and benchmarks use
where Prefect would only add time.

Example:
    >>> from eeipu import Optimizer, SearchSpace
    >>> problem = SyntheticProblem()
    >>> opt = Optimizer(SearchSpace.from_dict(problem.space_dict()), budget=200.0, seed=0)
    >>> trials = simulate(opt, problem)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from eeipu import HistoryCacheView, Optimizer, Trial, cached_prefix

__all__ = ["SimulatedCache", "SimulatedProblem", "simulate"]


class SimulatedProblem(Protocol):
    """What :func:`simulate` needs of a problem (:class:`~stages.pipelines.SyntheticProblem`
    and the benchmark family's generated problems provide it)."""

    names: Sequence[str]
    fail_cost: float

    def evaluate(self, params: Mapping[str, Mapping[str, Any]]) -> tuple[float, dict[str, float]]:
        """(observed objective, {stage: simulated cost}) of a full run."""
        ...

    def stage_outputs(self, params: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
        """Each stage's scalar output (the last one's is the observed objective)."""
        ...

    def failed_stage(self, params: Mapping[str, Mapping[str, Any]]) -> str | None:
        """The first stage that fails for this configuration, None when none does."""
        ...


class SimulatedCache(HistoryCacheView):
    """The cache of a simulated study: every stage that ran, keyed by its upstream values."""

    def lookup(self, params: Mapping[str, Mapping[str, Any]]) -> list[str]:
        """The leading stages of ``params`` that are cached."""
        return list(cached_prefix(self, self._stages, params))


def simulate(
    optimizer: Optimizer,
    problem: SimulatedProblem,
    *,
    load_cost: float | Mapping[str, float] = 0.01,
    max_trials: int | None = None,
    on_trial: Callable[[Trial, Optimizer], None] | None = None,
) -> list[Trial]:
    """Ask/tell until the optimizer's budget is spent (or ``max_trials`` were told).

    Args:
        optimizer: A fresh optimizer over ``problem.space_dict()``.
        problem: The synthetic problem providing objective and stage costs.
        load_cost: Cost charged for a cache hit: one for every stage, or per stage name.
        max_trials: Optional cap on the number of trials.
        on_trial: Called after each tell (progress output, say).

    Returns:
        The told trials.
    """
    cache = SimulatedCache(problem.names)
    loads = (
        dict(load_cost)
        if isinstance(load_cost, Mapping)
        else dict.fromkeys(problem.names, float(load_cost))
    )
    if set(loads) != set(problem.names):
        raise ValueError(
            f"`load_cost` must name every stage {list(problem.names)}, but got {sorted(loads)}"
        )
    while not optimizer.done and (max_trials is None or len(optimizer.trials) < max_trials):
        trial = optimizer.ask(cache=cache)
        hits = cache.lookup(trial.params)
        objective, costs = problem.evaluate(trial.params)
        costs = {s: (loads[s] if s in hits else c) for s, c in costs.items()}
        outputs: dict[str, float] | None = problem.stage_outputs(trial.params)
        failed = problem.failed_stage(trial.params)
        if failed is not None:  # it crashed part-way; the stages after it did not run
            ran = problem.names[: problem.names.index(failed) + 1]
            costs = {s: costs[s] for s in ran}
            costs[failed] *= problem.fail_cost
            objective, outputs = None, {s: outputs[s] for s in ran[:-1]} or None
        told = optimizer.tell(
            trial,
            objective=objective,
            costs=costs,
            cached=hits,
            stage_outputs=outputs,
        )
        cache.add(trial.params, [s for s in problem.names if s in costs and s != failed])
        if on_trial is not None:
            on_trial(told, optimizer)
    return optimizer.trials
