"""LaMBO: lazy modular Bayesian optimization with switching costs (Lin, Miano, Dyer, UAI 2021).

LaMBO (Chi-Heng Lin, Joseph D. Miano, Eva L. Dyer, "Bayesian Optimization for Modular
Black-Box Systems with Switching Costs", UAI 2021, PMLR 161:1024-1034; arXiv 2006.02624)
treats the search space of the *upstream* modules (every stage but the last) as the arms of
a multi-armed bandit with switching costs, and runs BO inside the arm it picks:

1. **Tree of regions (the paper's MSET).** The unit cube of the upstream stages is split by
   recursive bisection into a binary tree: the levels nearest the root bisect stage 1's
   parameters (one dimension per level, cycling through them), the next levels stage 2's,
   and so on; the last stage is never split. The ``2^H`` leaves are the arms. Moving
   between two leaves costs, in the tree metric, ~2^h where h is the height of their lowest
   common ancestor, so a stage's levels are placed to make that metric match what a switch
   really costs: re-running that stage and everything after it. With measured mean stage
   costs c_k and C_k = Σ_{j≥k} c_j, stage k gets d_k = round(log2(C_k / C_{k+1})) levels
   (at least 1, total capped by ``max_depth``), so that 2^(height of stage k's top level)
   ≈ C_k / C_S. These are the measured costs of ``Observations.costs`` (compute costs,
   not cache loads); before any are measured every stage gets one level. Stages without
   parameters get no level (there is nothing to split): their cost counts in the switch of
   the stage upstream that re-runs them, and the last stage *with* parameters is the free one.
2. **Slowly moving bandit.** Arms are drawn by the Slowly Moving Bandit algorithm of Koren,
   Livni & Mansour ("Multi-Armed Bandits with Metric Movement Costs", NeurIPS 2017), which
   LaMBO runs on this tree: after round t it draws signs σ_{t,0..H-1} (σ_{t,H} = −1) and
   h_t = min{h : σ_{t,h} = −1}; the next arm is drawn from p_{t+1} *restricted to the
   subtree of height h_t that holds the current arm*. So it stays on the same leaf with
   probability 1/2 and leaves the subtree of height h with probability 2^-h: it is lazy
   about switching early stages, the expensive ones. The loss estimates are SMB's
   (importance-weighted, recursively smoothed up the tree) and p is updated by exponential
   weights with rate ``lr``.
3. **BO inside the arm.** LogEI of one GP on all parameters is maximized with the arm's
   region as the *bounds* of the acquisition optimizer (upstream dimensions in the leaf's
   box, the last stage free).

Deviations from the paper, on purpose:

- **Losses.** The bandit's loss for a round is the GP's view of the configuration evaluated
  in it: ℓ_t = (μ_max − μ(x_t)) / (μ_max − μ_min) ∈ [0, 1], with μ the posterior mean of the
  objective GP at the told points (the paper derives the loss from the GP's acquisition
  value at the time of the round). Every ask recomputes all rounds' losses with the current
  GP and replays the bandit from the first observation, with each round's signs σ_t drawn
  from a generator seeded by (optimizer seed, t). The bandit state is therefore a pure
  function of the seed and the observations: a study resumed by replaying its trials with
  ``add_trial`` proposes what the uninterrupted one would have, and nothing hidden is kept.
  Warm-up trials (and any trial not proposed by LaMBO) count as rounds played on the leaf
  that holds them. A point on a split (exactly the midpoint) belongs to the upper half.
- **Keeping upstream values (``keep_upstream``, default on).** The paper charges a switching
  cost only when the arm of a module changes; in our exact-match cache a stage is reused
  only if its values are *identical*. So, as the paper's cost model implies, the stages
  whose part of the arm did not change keep the previous trial's values (and load from the
  cache); only the stages from the first switched one on are optimized inside the new
  region. With ``keep_upstream=False`` every upstream dimension is re-optimized inside the
  arm's box each round (the bandit still moves lazily, but no stage is reused).
- No partition refinement (eliminating low-probability arms and re-splitting): the tree is
  fixed by the costs.

``lazy=False`` is the zero-switching-cost variant: arms are drawn from the whole
distribution every round (EXP3 on the same leaves).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from botorch.acquisition.analytic import LogExpectedImprovement
from botorch.exceptions.warnings import BadInitialCandidatesWarning, OptimizationWarning
from botorch.optim import optimize_acqf
from torch import Tensor

from eeipu._errors import OptimizerError
from eeipu._methods import (
    Method,
    Observations,
    Prefix,
    Proposal,
    WarmStartState,
    impute_failed,
    register_method,
)
from eeipu._models import fit_gp, gp_hyperparameters
from eeipu._options import LaMBOOptions
from eeipu._parts import AcquisitionSearch
from eeipu._space import SearchSpace

__all__ = ["LaMBO", "RegionTree", "smb_loss_estimate", "smb_update", "stage_depths"]


# ---------------------------------------------------------------------- the tree
def _tuned(space: SearchSpace) -> list[int]:
    """Indices of the stages with parameters: all but the last of them are split (the
    upstream modules), the last is the free one."""
    return [k for k, s in enumerate(space.stages) if space.stage_params(s)]


def stage_depths(
    space: SearchSpace, costs: Tensor, cached: Tensor, max_depth: int = 6
) -> list[int]:
    """Levels of the region tree per upstream stage (all stages but the last).

    d_k = round(log2(C_k / C_{k'})), at least 1, from the mean measured compute cost c_k
    of each stage (C_k = Σ_{j≥k} c_j), where k' is the next stage with parameters; one
    level each while some stage has no measured cost. Stages without parameters get no
    level (nothing to split): their cost counts in the switch of the stage with parameters
    upstream of them, which re-runs them. The last stage with parameters is the free one,
    as the last stage is in the paper; it and the stages after it get none either. Capped
    at ``max_depth`` levels in all, taking levels from the latest stages first (a stage
    left with 0 levels is not split).

    Args:
        costs: ``n x S`` measured stage costs (NaN where unknown).
        cached: ``n x S`` bool, cache loads (excluded: they are not compute costs).
    """
    S = len(space.stages)
    if S < 2:
        return []
    tuned = _tuned(space)
    split = tuned[:-1]  # the upstream stages with parameters
    ok = torch.isfinite(costs) & (costs > 0) & ~cached
    means = []
    for k in range(S):
        c = costs[:, k][ok[:, k]]
        means.append(float(c.mean()) if c.numel() else math.nan)
    depths = [0] * (S - 1)
    for i, k in enumerate(split):
        if any(math.isnan(m) for m in means):
            depths[k] = 1
        else:
            depths[k] = max(1, round(math.log2(sum(means[k:]) / sum(means[tuned[i + 1] :]))))
    while sum(depths) > max_depth:
        # Trim the deepest stage (the latest on ties); below one level, the latest stage.
        if max(depths) > 1:
            k = max(range(len(depths)), key=lambda i: (depths[i], i))
        else:
            k = max(i for i, v in enumerate(depths) if v > 0)
        depths[k] -= 1
    return depths


@dataclass(frozen=True)
class RegionTree:
    """A binary tree of axis-aligned regions of the unit cube; leaves are the arms.

    Level ``l`` (0 = the root's split) bisects dimension ``split_dims[l]`` of the current
    box. Leaf ``i``'s bits, most significant first, say which half was taken at each level
    (1 = upper half). ``stage_of_level[l]`` is the stage whose parameters level ``l`` splits.
    """

    dim: int
    split_dims: tuple[int, ...]
    stage_of_level: tuple[int, ...]

    @classmethod
    def build(cls, space: SearchSpace, depths: list[int]) -> RegionTree:
        """Stage k's ``depths[k]`` levels bisect its dimensions in turn, stage 1 nearest
        the root."""
        dims, stages = [], []
        for k, d_k in enumerate(depths):
            cols = range(space.stage_slices[k].start, space.stage_slices[k].stop)
            for j in range(d_k):
                dims.append(cols[j % len(cols)])
                stages.append(k)
        return cls(space.dim, tuple(dims), tuple(stages))

    @property
    def H(self) -> int:
        return len(self.split_dims)

    @property
    def n_leaves(self) -> int:
        return 2**self.H

    def leaf_of(self, X: Tensor) -> Tensor:
        """``n x d`` points -> ``n`` leaf indices (a point on a split goes to the upper half)."""
        n = X.shape[0]
        lo = torch.zeros(n, self.dim, dtype=X.dtype)
        hi = torch.ones(n, self.dim, dtype=X.dtype)
        leaf = torch.zeros(n, dtype=torch.long)
        rows = torch.arange(n)
        for dim in self.split_dims:
            mid = (lo[:, dim] + hi[:, dim]) / 2
            upper = X[:, dim] >= mid
            leaf = 2 * leaf + upper.long()
            lo[rows, dim] = torch.where(upper, mid, lo[:, dim])
            hi[rows, dim] = torch.where(upper, hi[:, dim], mid)
        return leaf

    def box(self, leaf: int) -> tuple[Tensor, Tensor]:
        """Leaf ``leaf``'s region: (lower, upper), each ``d`` (the last stage spans [0, 1])."""
        lo = torch.zeros(self.dim, dtype=torch.double)
        hi = torch.ones(self.dim, dtype=torch.double)
        for level, dim in enumerate(self.split_dims):
            mid = (lo[dim] + hi[dim]) / 2
            if (leaf >> (self.H - 1 - level)) & 1:
                lo[dim] = mid
            else:
                hi[dim] = mid
        return lo, hi

    def unchanged_stages(self, a: int, b: int, n_upstream: int) -> int:
        """How many leading upstream stages have the same region in leaves ``a`` and ``b``
        (all ``n_upstream`` when a == b)."""
        diff = a ^ b
        if diff == 0:
            return n_upstream
        first_level = self.H - diff.bit_length()  # the first (root-most) differing level
        return self.stage_of_level[first_level]


# ---------------------------------------------------------------------- the bandit
def smb_loss_estimate(p: Tensor, arm: int, loss: float, sigma: Tensor, lr: float) -> Tensor:
    """The Slowly Moving Bandit's loss estimate ℓ̃ (Koren, Livni & Mansour 2017, Alg. 1).

    Args:
        p: ``k`` arm probabilities (k = 2^H leaves of a complete binary tree; A_h(i) is the
            set of the 2^h leaves under i's ancestor at height h).
        arm: The arm played this round.
        loss: Its loss, in [0, 1].
        sigma: ``H`` signs ±1 (σ_{t,0..H-1}).
        lr: Learning rate η.

    Returns:
        ℓ̃ (``k``). With ℓ̄_0 = loss/p(arm) on the played arm (0 elsewhere) and, for h ≥ 1,
        ℓ̄_h(i) = −(1/η) log Σ_{j ∈ A_h(i)} p(j)/p(A_h(i)) exp(−η (1 + σ_{h−1}) ℓ̄_{h−1}(j)),
        ℓ̃ = ℓ̄_0 + Σ_{h<H} σ_h ℓ̄_h, an unbiased estimate of ℓ̄_0 over the signs; zero when
        some ancestor A_h of the arm has p(A_h) < 2^h η (SMB's exclusion set E_t).
    """
    k = p.numel()
    H = k.bit_length() - 1
    for h in range(H):
        size = 2**h
        block = p[(arm // size) * size : (arm // size + 1) * size]
        if float(block.sum()) < size * lr:
            return torch.zeros_like(p)
    lbar = torch.zeros_like(p)
    lbar[arm] = loss / p[arm]
    total = lbar * (1 + sigma[0])
    for h in range(1, H):
        size = 2**h
        P = p.reshape(-1, size)
        log_w = P.log() - P.sum(-1, keepdim=True).log()
        inner = log_w - lr * (1 + sigma[h - 1]) * lbar.reshape(-1, size)
        lbar = (-torch.logsumexp(inner, dim=-1) / lr).repeat_interleave(size)
        total = total + sigma[h] * lbar
    return total


def smb_update(p: Tensor, arm: int, loss: float, sigma: Tensor, lr: float) -> Tensor:
    """One round of SMB: p_{t+1} ∝ p_t · exp(−η ℓ̃_t) (see :func:`smb_loss_estimate`)."""
    return torch.softmax(p.log() - lr * smb_loss_estimate(p, arm, loss, sigma, lr), dim=0)


def exp3_update(p: Tensor, arm: int, loss: float, lr: float) -> Tensor:
    """EXP3's update (no switching cost): p_{t+1} ∝ p · exp(−η · loss/p(arm) on ``arm``);
    skipped when p(arm) < η, as SMB skips (a warm-up point may land on a starved arm)."""
    if float(p[arm]) < lr:
        return p.clone()
    est = torch.zeros_like(p)
    est[arm] = loss / p[arm]
    return torch.softmax(p.log() - lr * est, dim=0)


def round_signs(optimizer_seed: int, t: int, H: int) -> Tensor:
    """σ_{t,0..H-1} ∈ {±1}, fixed by (optimizer seed, round): a replay redraws the same."""
    gen = torch.Generator().manual_seed((optimizer_seed * 7_919 + 104_729 * (t + 1)) % (2**63))
    bits = torch.randint(0, 2, (64,), generator=gen, dtype=torch.long)[:H]
    return (2 * bits - 1).to(torch.double)


def first_negative(sigma: Tensor) -> int:
    """h_t = min{h : σ_{t,h} = −1}, with σ_{t,H} = −1."""
    neg = (sigma < 0).nonzero()
    return int(neg[0]) if neg.numel() else sigma.numel()


@dataclass(frozen=True)
class BanditState:
    """The replayed bandit after the told rounds: p, the last arm and h of the last round."""

    p: Tensor
    last_arm: int | None
    h: int


def replay(
    leaves: Tensor, losses: Tensor, H: int, lr: float, optimizer_seed: int, lazy: bool = True
) -> BanditState:
    """Run the bandit over the told rounds (``leaves``, ``losses``: ``n`` each)."""
    k = 2**H
    p = torch.full((k,), 1.0 / k, dtype=torch.double)
    h = H
    for t in range(leaves.numel() if H > 0 else 0):
        arm, loss = int(leaves[t]), float(losses[t])
        if lazy:
            sigma = round_signs(optimizer_seed, t, H)
            p = smb_update(p, arm, loss, sigma, lr)
            h = first_negative(sigma)
        else:
            p = exp3_update(p, arm, loss, lr)
    last = int(leaves[-1]) if leaves.numel() else None
    return BanditState(p, last, h)


def choose_arm(state: BanditState, H: int, rng: torch.Generator) -> int:
    """Draw the next arm from p restricted to the height-h subtree of the last arm."""
    k = 2**H
    if k == 1:
        return 0
    if state.last_arm is None:
        allowed = torch.arange(k)
    else:
        base = (state.last_arm >> state.h) << state.h
        allowed = torch.arange(base, base + 2**state.h)
    w = state.p[allowed]
    return int(allowed[torch.multinomial(w / w.sum(), 1, generator=rng)])


# ---------------------------------------------------------------------- the method
class LaMBO(WarmStartState, Method):
    """Lazy modular BO: a slowly moving bandit over a cost-shaped tree of upstream regions,
    LogEI maximized inside the chosen region (see the module docstring).

    Args:
        lr: Bandit learning rate η; None: min(1/(2k), sqrt(ln k / (k T))) with k leaves and
            T rounds so far (η ≤ 1/(2k) keeps every arm out of SMB's exclusion set at the
            start; the second term is EXP3's rate).
        depth: Levels per upstream stage; None: from the measured stage costs.
        max_depth: Cap on the tree's total depth H (at most 2^H arms).
        lazy: Slowly moving (switching-cost-aware) arm choice; False: EXP3 over all arms.
        keep_upstream: Keep the previous trial's values of the stages whose region did not
            change (they load from the cache); False: re-optimize them inside the region.
        num_restarts: L-BFGS starts.
        raw_samples: Raw Sobol samples screened for those starts.
        maxiter: L-BFGS iterations.
        warm_start: Start each GP fit from the previous ask's hyperparameters.
    """

    def __init__(
        self,
        lr: float | None = None,
        depth: int | None = None,
        max_depth: int = 6,
        lazy: bool = True,
        keep_upstream: bool = True,
        num_restarts: int = 8,
        raw_samples: int = 256,
        maxiter: int = 200,
        warm_start: bool = True,
    ) -> None:
        self.search = AcquisitionSearch(
            num_restarts=num_restarts,
            raw_samples=raw_samples,
            maxiter=maxiter,
            warm_start=warm_start,
        )
        if lr is not None and not (isinstance(lr, int | float) and lr > 0 and math.isfinite(lr)):
            raise OptimizerError(f"`lr` must be None or a positive number, but got {lr!r}")
        if depth is not None and (
            isinstance(depth, bool) or not isinstance(depth, int) or depth < 1
        ):
            raise OptimizerError(f"`depth` must be None or a positive integer, but got {depth!r}")
        if (
            isinstance(max_depth, bool)
            or not isinstance(max_depth, int)
            or not 1 <= max_depth <= 12
        ):
            raise OptimizerError(
                f"`max_depth` must be an integer in [1, 12], but got {max_depth!r}"
            )
        self.lr = lr
        self.depth = depth
        self.max_depth = max_depth
        self.lazy = lazy
        self.keep_upstream = keep_upstream
        self._init: dict[str, Any] = {}
        #: What the last proposal chose (arm, its box, the previous arm, kept stages), for
        #: inspection and tests; rebuilt every ask, never read back.
        self.last_choice: dict[str, Any] = {}

    def tree(self, obs: Observations) -> RegionTree:
        """The region tree for these observations (its depths follow the measured costs)."""
        space = obs.space
        S = len(space.stages)
        if self.depth is not None:
            split = _tuned(space)[:-1]
            depths = [self.depth if k in split else 0 for k in range(S - 1)]
            while sum(depths) > self.max_depth:
                depths[max(i for i, v in enumerate(depths) if v > 0)] -= 1
        else:
            depths = stage_depths(space, obs.costs, obs.cached, self.max_depth)
        return RegionTree.build(space, depths)

    def bandit(self, obs: Observations, model) -> tuple[RegionTree, BanditState, float]:
        """Replay the bandit over the observations; returns the tree, the state and η."""
        tree = self.tree(obs)
        leaves = tree.leaf_of(obs.X)
        with torch.no_grad():
            mu = model.posterior(obs.X).mean.reshape(-1)
        span = float(mu.max() - mu.min())
        losses = (mu.max() - mu) / span if span > 0 else torch.zeros_like(mu)
        k = tree.n_leaves
        T = max(int(leaves.numel()), 1)
        lr = self.lr if self.lr is not None else min(1 / (2 * k), math.sqrt(math.log(k) / (k * T)))
        state = replay(leaves, losses, tree.H, lr, obs.optimizer_seed, lazy=self.lazy)
        return tree, state, lr

    @property
    def warm_start(self) -> bool:
        return self.search.warm_start

    def propose(self, obs: Observations) -> Proposal:
        obs = impute_failed(obs)
        model = fit_gp(obs.X, obs.Y, self._init.get("objective") if self.warm_start else None)
        self._init["objective"] = gp_hyperparameters(model)
        tree, state, lr = self.bandit(obs, model)
        arm = choose_arm(state, tree.H, obs.rng)
        lower, upper = tree.box(arm)
        # Stages whose region did not change keep the previous trial's values (cached).
        kept = 0
        # The upstream stages: those before the last stage with parameters (the free one).
        n_upstream = _tuned(obs.space)[-1]
        if self.keep_upstream and state.last_arm is not None and n_upstream > 0:
            kept = tree.unchanged_stages(arm, state.last_arm, n_upstream)
        prefix = _last_prefix(obs, kept) if kept else None
        self.last_choice = {
            "arm": arm,
            "previous_arm": state.last_arm,
            "h": state.h,
            "lower": lower,
            "upper": upper,
            "kept_stages": kept,
            "n_arms": tree.n_leaves,
            "lr": lr,
        }
        acq = LogExpectedImprovement(model, best_f=obs.Y.max())
        return self._maximize(acq, obs, lower, upper, prefix)

    def _maximize(
        self,
        acq: LogExpectedImprovement,
        obs: Observations,
        lower: Tensor,
        upper: Tensor,
        prefix: Prefix | None,
    ) -> Proposal:
        """The best point of ``acq`` in the box ``lower``..``upper`` (``d`` each), the
        columns of ``prefix`` held at its values; the other starts' optima as runners-up."""
        d = obs.space.dim
        n_fixed = 0 if prefix is None else prefix.x.numel()
        fixed = {j: float(obs.X[-1][j]) for j in range(n_fixed)}
        bounds = torch.stack([lower, upper]).to(obs.X)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizationWarning)
            warnings.simplefilter("ignore", BadInitialCandidatesWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            X, vals = optimize_acqf(
                acq,
                bounds=bounds,
                q=1,
                num_restarts=self.search.num_restarts,
                raw_samples=self.search.raw_samples,
                options={"maxiter": self.search.maxiter, "seed": obs.seed},
                fixed_features=fixed or None,
                return_best_only=False,
                retry_on_optimization_warning=False,
            )
        X = X.detach().reshape(-1, d)
        # Keep the fixed values bit-exact and the rest inside the region.
        X = torch.minimum(torch.maximum(X, lower), upper)
        for j, v in fixed.items():
            X[:, j] = v
        vals = vals.detach().reshape(-1)
        order = vals.argsort(descending=True).tolist()
        ranked = [Proposal(X[j], prefix, float(vals[j])) for j in order]
        return Proposal(ranked[0].x, prefix, ranked[0].acq_value, tuple(ranked[1:]))


def _last_prefix(obs: Observations, kept: int) -> Prefix:
    """The first ``kept`` stages of the last told trial, as a prefix to reuse."""
    space = obs.space
    x_prev = obs.X[-1]
    decoded = space.decode(x_prev)
    return Prefix(
        kept,
        x_prev[: space.prefix_dim(kept)].clone(),
        {s: decoded[s] for s in space.stages[:kept]},
        float(obs.Y[-1]),
    )


register_method("lambo", LaMBOOptions)(LaMBO)
