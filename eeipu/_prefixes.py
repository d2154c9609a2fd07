"""The prefix pool: cached leading stages of told trials that a proposal may reuse."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from eeipu._cache import CacheView, canonical_json
from eeipu._space import SearchSpace
from eeipu._trial import Trial, TrialState

__all__ = ["Prefix", "build_prefix_pool"]


@dataclass(frozen=True)
class Prefix:
    """A cached prefix: the first ``n_stages`` stages of an earlier trial.

    Attributes:
        n_stages: δ, the number of leading stages fixed (and cached).
        x: ``prefix_dim`` encoded values of those stages.
        params: Their canonical values, copied verbatim into the proposal.
        score: Ranking score (best objective among trials that share the prefix).
    """

    n_stages: int
    x: Tensor
    params: dict[str, dict[str, Any]]
    score: float


_Group = list[tuple[str, Prefix]]  # one configuration's (key, prefix) pairs, longest last


def build_prefix_pool(
    space: SearchSpace,
    trials: Sequence[Trial],
    cache: CacheView,
    max_prefixes: int,
    direction: str = "maximize",
    rng: torch.Generator | None = None,
) -> list[Prefix]:
    """Distinct proper prefixes of told ``trials`` that ``cache`` confirms, best first.

    Capped by *configurations*, not prefixes: trials are ranked by objective and each
    of the best gives all its cached proper prefixes, until ``max_prefixes`` are taken;
    a quarter of the slots (at least one) goes to the prefixes of other configurations
    drawn at random (``rng``), for exploration. A prefix shared by several trials comes
    once, scored by the best of them. (Ranking prefixes one by one let the single best
    trial's S-1 prefixes fill the pool: at 10 stages EEIPU mined one configuration's
    tail.) The acquisition, not this order, decides which prefixes get optimizer starts.

    Trials still running (pending) give no prefix, so the optimizer passes the told ones
    only: a proposal that continued one would wait for it (the study holds a trial whose
    stage a trial in flight is computing), and at ``parallel=4`` those waits left a third
    of the slots idle (``benchmarks/parallel_wall.py --budget 120``: 9-11 trials held per
    study, 2.50x; without them none, 3.0x). Once told, its prefixes are in the pool.

    Example:
        >>> pool = build_prefix_pool(space, opt.trials, HistoryCacheView(space.stages), 24)
    """
    if max_prefixes == 0:
        return []
    sign = 1.0 if direction == "maximize" else -1.0
    groups: list[tuple[float, _Group]] = []
    for t in trials:
        score = sign * t.objective if t.state is TrialState.COMPLETE else -math.inf
        group = _cached_prefixes(space, t, score, cache)
        if group:
            groups.append((score, group))
    # Best first; the sort is stable, so ties keep telling order.
    groups.sort(key=lambda g: -g[0])
    found = _take_best_and_some(groups, max_prefixes, rng)
    # Best objective first; among equals prefer longer prefixes (cheaper candidates).
    return sorted(found.values(), key=lambda p: (-p.score, -p.n_stages))


def _cached_prefixes(space: SearchSpace, trial: Trial, score: float, cache: CacheView) -> _Group:
    """``trial``'s proper prefixes that ``cache`` confirms, keyed, longest last."""
    stages = space.stages
    x_full = None
    group: _Group = []
    for j in range(1, len(stages)):
        sub = {s: trial.params[s] for s in stages[:j]}
        if not cache.is_cached(stages[j - 1], sub):
            break  # a longer prefix cannot be cached if this one is not
        if x_full is None:  # most trials of a study have no cached prefix
            x_full = space.encode(trial.params)
        if group and space.prefix_dim(j) == space.prefix_dim(j - 1):
            # Stage j has no parameters and is cached: the prefix through it fixes the
            # same columns and loads one stage more, so it replaces the shorter.
            group.pop()
        prefix = Prefix(
            j, x_full[: space.prefix_dim(j)], {s: dict(v) for s, v in sub.items()}, score
        )
        group.append((canonical_json([j, sub]), prefix))
    return group


def _take_best_and_some(
    groups: list[tuple[float, _Group]], max_prefixes: int, rng: torch.Generator | None
) -> dict[str, Prefix]:
    """The prefixes of the best configurations (``groups`` best first), then of others
    drawn at random into the quarter of the slots kept for exploration."""
    found: dict[str, Prefix] = {}

    def take(group: _Group, cap: int) -> None:
        for key, prefix in reversed(group):  # longest (cheapest) first
            # Groups come best first: a shared prefix keeps its first (best) score.
            if key not in found and len(found) < cap:
                found[key] = prefix

    explore = max(1, max_prefixes // 4) if len(groups) > 1 else 0
    best_cap = max_prefixes - explore
    used = 0
    for _, group in groups:
        if len(found) >= best_cap:
            break
        take(group, best_cap)
        used += 1
    rest = groups[used:]
    if rest and explore:
        for i in torch.randperm(len(rest), generator=rng).tolist():
            if len(found) >= max_prefixes:
                break
            take(rest[i][1], max_prefixes)
    return found
