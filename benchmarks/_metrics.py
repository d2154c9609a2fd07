"""Metrics of the benchmark suite, as plain functions of raw runs (tested by hand).

A *run* is one (method, seed) study: a dict with ``trials`` (in telling order, each with
``cost`` and ``objective``, None when failed), ``n_init``, ``budget`` and ``direction``.

Definitions (the report states them too):

* candidates: trials the loop ran, i.e. every trial started while budget was left (the last
  one may overshoot the budget by at most its own cost: the optimizer's stopping rule).
  ``candidates_post`` counts those after the shared warm-up.
* improvement: best objective at the end of the budget minus best objective at the end of
  the warm-up, in the direction of the objective (>= 0). The warm-up is shared per seed, so
  every method starts from the same best.
* cost to target: cumulative cost at the first trial whose objective reaches the target
  (None when it never does).
* noisy problems: trials carry ``true_objective`` beside the observed ``objective`` and
  ``reported_true``, the true objective of the configuration the optimizer recommends after
  that trial (``Optimizer.recommend``: best posterior mean); every "best" above is then that
  true value.
* prefix reuse (``eeipu``, runs that record ``acq_terms`` per trial, see
  :func:`eeipu._methods.acquisition_terms`): the share of the trials after warm-up whose
  proposal reused a cached prefix; for those, the log EI given up against the best fresh
  candidate of the same ask (``log_ei_fresh - log_ei``, nats; negative when the reusing
  candidate was also the better one), and how many times cheaper it was expected to be
  (``exp(log_inv_cost - log_inv_cost_fresh)``, the ratio of expected inverse costs).
* relative gain of A over B (Essofi et al. 2024, "+103% candidates, +108% improvement"):
  ``100 * (mean_s A_s - mean_s B_s) / mean_s B_s``, means over the seeds both ran (the gain
  of the seed-averaged metrics; a per-seed ratio is undefined when B improved 0 on a seed).
  Against the mean of the baselines, B_s is replaced by the mean over baselines of B_s.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "best_curve",
    "bootstrap_diff",
    "bootstrap_gain",
    "cost_to_target",
    "mean_std",
    "quartiles",
    "relative_gain",
    "reuse_metrics",
    "run_metrics",
]


def _sign(run: Mapping[str, Any]) -> float:
    return 1.0 if run.get("direction", "maximize") == "maximize" else -1.0


def _reported(trials: Sequence[Mapping[str, Any]], sign: float) -> list[float | None]:
    """After each trial, the value of what the study would report (None before the first
    complete trial): the best objective so far; on a noisy problem, the true objective of
    the configuration the optimizer recommends (``reported_true``), else of the trial with
    the best *observed* objective (``true_objective``; what picking the best-looking trial
    really gets)."""
    out: list[float | None] = []
    best: Mapping[str, Any] | None = None
    for t in trials:
        if t["objective"] is not None and (
            best is None or sign * t["objective"] > sign * best["objective"]
        ):
            best = t
        if best is None:
            out.append(None)
        elif "reported_true" in t:
            out.append(t["reported_true"])
        else:
            out.append(best.get("true_objective", best["objective"]))
    return out


def _best(trials: Sequence[Mapping[str, Any]], sign: float) -> float | None:
    reported = _reported(trials, sign)
    return reported[-1] if reported else None


def run_metrics(run: Mapping[str, Any]) -> dict[str, Any]:
    """Per-run metrics: candidates (total, after warm-up), warm-up best, final best,
    improvement, spent, cache hits after warm-up, mean ask seconds after warm-up."""
    trials, n_init, sign = run["trials"], int(run["n_init"]), _sign(run)
    warm, post = trials[:n_init], trials[n_init:]
    y0, y1 = _best(warm, sign), _best(trials, sign)
    improvement = None if y0 is None or y1 is None else sign * (y1 - y0)
    asks = [t["seconds"] for t in post if t.get("seconds") is not None]
    return {
        "candidates": len(trials),
        "candidates_post": len(post),
        "warmup_best": y0,
        "final_best": y1,
        "improvement": improvement,
        "spent": sum(t["cost"] for t in trials),
        "warmup_spent": sum(t["cost"] for t in warm),
        "hits_post": sum(1 for t in post if t.get("n_cached", 0) > 0),
        "ask_seconds": sum(asks) / len(asks) if asks else None,
    }


def reuse_metrics(run: Mapping[str, Any]) -> dict[str, Any] | None:
    """Prefix reuse after warm-up, from the trials' ``acq_terms`` (None when no trial of the
    run records them, e.g. raw runs written before they existed).

    Returns ``trials`` (after warm-up), ``recorded`` (those with ``acq_terms``: the model's
    proposals), ``reuse`` (of those, proposals with a cached prefix), ``share`` (reuse /
    trials after warm-up: other trials reuse nothing), and per reusing proposal with a fresh
    candidate to compare: ``log_ei_given_up`` (``log_ei_fresh - log_ei``, nats),
    ``cost_ratio`` (``exp(log_inv_cost - log_inv_cost_fresh)``: fresh expected cost over
    the reuser's, in expected inverse cost) and ``margin`` (its acquisition minus the best
    fresh candidate's: >= 0 for a winner, smaller than 0 only for a runner-up chosen because
    the winner repeated an earlier configuration).
    """
    post = run["trials"][int(run["n_init"]) :]
    recorded = [t["acq_terms"] for t in post if t.get("acq_terms")]
    if not recorded:
        return None
    reuse = [a for a in recorded if a.get("prefix_stages", 0) > 0]
    paired = [a for a in reuse if "log_ei_fresh" in a]
    return {
        "trials": len(post),
        "recorded": len(recorded),
        "reuse": len(reuse),
        "share": len(reuse) / len(post),
        "log_ei_given_up": [a["log_ei_fresh"] - a["log_ei"] for a in paired],
        "cost_ratio": [math.exp(a["log_inv_cost"] - a["log_inv_cost_fresh"]) for a in paired],
        "margin": [
            a["log_ei"] + a["cost_term"] - a["log_ei_fresh"] - a["cost_term_fresh"] for a in paired
        ],
    }


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """25th, 50th and 75th percentiles (linear interpolation); NaN for no values."""
    vals = sorted(float(v) for v in values)
    if not vals:
        return math.nan, math.nan, math.nan

    def at(q: float) -> float:
        pos = q * (len(vals) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(vals) - 1)
        return vals[lo] + (pos - lo) * (vals[hi] - vals[lo])

    return at(0.25), at(0.5), at(0.75)


def best_curve(run: Mapping[str, Any], grid: Sequence[float]) -> list[float]:
    """Best objective seen by cumulative cost ``g`` for each ``g`` in ``grid`` (NaN before
    the first complete trial)."""
    points, spent = [], 0.0
    for t, best in zip(run["trials"], _reported(run["trials"], _sign(run)), strict=True):
        spent += t["cost"]
        points.append((spent, best))
    out, i, current = [], 0, math.nan
    for g in grid:
        while i < len(points) and points[i][0] <= g:
            current = math.nan if points[i][1] is None else points[i][1]
            i += 1
        out.append(current)
    return out


def cost_to_target(run: Mapping[str, Any], target: float) -> float | None:
    """Cumulative cost at the first trial whose objective reaches ``target`` (None: never)."""
    sign, spent = _sign(run), 0.0
    for t, best in zip(run["trials"], _reported(run["trials"], sign), strict=True):
        spent += t["cost"]
        if best is not None and sign * best >= sign * target:
            return spent
    return None


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value); NaN for none."""
    vals = [float(v) for v in values]
    if not vals:
        return math.nan, math.nan
    m = sum(vals) / len(vals)
    if len(vals) == 1:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


def relative_gain(ref: Sequence[float], other: Sequence[float]) -> float:
    """``100 * (mean(ref) - mean(other)) / mean(other)``: the gain of the seed means (NaN
    when ``mean(other)`` is not positive, e.g. a baseline that never improved)."""
    if not ref or len(ref) != len(other):
        raise ValueError(f"need paired, non-empty values, but got {len(ref)} and {len(other)}")
    a, b = sum(ref) / len(ref), sum(other) / len(other)
    return 100.0 * (a - b) / b if b > 0 else math.nan


def bootstrap_gain(
    ref: Sequence[float], other: Sequence[float], n: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """5th and 95th percentiles of :func:`relative_gain` over seeds resampled in pairs."""
    if len(ref) < 2:
        return math.nan, math.nan
    rng = random.Random(seed)
    k = len(ref)
    gains = []
    for _ in range(n):
        idx = [rng.randrange(k) for _ in range(k)]
        g = relative_gain([ref[i] for i in idx], [other[i] for i in idx])
        gains.append(g if not math.isnan(g) else math.inf)
    gains.sort()
    return gains[int(0.05 * (n - 1))], gains[int(0.95 * (n - 1))]


def bootstrap_diff(
    ref: Sequence[float], other: Sequence[float], n: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """5th and 95th percentiles of ``mean(ref - other)`` over seeds resampled in pairs."""
    if len(ref) != len(other) or len(ref) < 2:
        return math.nan, math.nan
    rng = random.Random(seed)
    d = [a - b for a, b in zip(ref, other, strict=True)]
    means = sorted(sum(d[rng.randrange(len(d))] for _ in range(len(d))) / len(d) for _ in range(n))
    return means[int(0.05 * (n - 1))], means[int(0.95 * (n - 1))]
