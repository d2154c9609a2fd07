"""MS-BO: cascade multi-stage Bayesian optimization (Kusakawa et al., Neural Computation 2022).

A cascade process feeds each stage's output to the next stage:

    y_1 = f_1(x_1),   y_k = f_k(x_k, y_{k-1}) (k = 2..S),   objective = y_S

(Kusakawa, Takeno, Inatsu, Kutsukake, Iwazaki, Nakano, Ujihara, Karasuyama, Takeuchi,
"Bayesian Optimization for Cascade-type Multistage Processes", Neural Computation 34(12),
2022; arXiv 2111.08330). Each stage k has its own GP on ``(x_k, y_{k-1})``. A candidate is
scored by propagating Monte Carlo samples through the cascade: draw y_1 from GP_1 at x_1,
feed each draw with x_2 to GP_2, and so on; the acquisition is the expected improvement of
the final output over the best observed objective, estimated from those samples:

    EI(x) = (1/M) Σ_m max(y_S^(m)(x) − best_f, 0)

computed in log space with a smooth (fat-tailed softplus) improvement, as BoTorch's qLogEI
does, so that it neither underflows nor has a zero gradient far from the incumbent.

Our pipelines' stages exchange artifacts, not scalars; a pipeline that has a scalar per
stage tells it with ``Optimizer.tell(..., stage_outputs={stage: value})``. The last stage's
model always targets the objective (the quantity being optimized); a told output of the last
stage is not used. Each GP trains on the trials that told its inputs and target (a failed
trial that reached stage k still trains GP_1..GP_k; asked-but-untold trials train none).
MS-BO has no cost model and no memoization (cost-unaware, as in the paper).

A stage without parameters is a stage of the cascade all the same: GP_k sees y_{k-1} alone,
and a first one (no input at all) is a constant, its told outputs' mean and spread.

Without stage outputs (real pipelines tell none) the intermediate outputs are unobserved:
the cascade then has nothing to learn about them, and MS-BO falls back to one GP on all
parameters with analytic LogEI, i.e. it proposes exactly what ``ei`` proposes. (Using the
objective as every stage's output instead would make GP_k's target equal to its own input
y_{k-1}: each stage would learn the identity and ignore its parameters.) ``cascade_used``
says which model the last proposal came from.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from botorch.acquisition import AcquisitionFunction
from botorch.acquisition.analytic import LogExpectedImprovement
from botorch.exceptions.warnings import BadInitialCandidatesWarning, OptimizationWarning
from botorch.optim import optimize_acqf
from botorch.sampling.qmc import NormalQMCEngine
from botorch.utils.safe_math import log_fatplus, logmeanexp
from botorch.utils.transforms import t_batch_mode_transform
from torch import Tensor

from eeipu._methods import (
    Method,
    Observations,
    Proposal,
    WarmStartState,
    impute_failed,
    register_method,
)
from eeipu._models import ConstantPredictor, _Predictor, fit_gp, gp_hyperparameters
from eeipu._options import CascadeBOOptions
from eeipu._parts import AcquisitionSearch

__all__ = ["CascadeBO", "CascadeLogEI", "CascadeStage"]

#: Temperature of the smoothed improvement, in units of the objective's standard deviation
#: (BoTorch's qLogEI default ``tau_relu``).
_TAU = 1e-6


@dataclass
class CascadeStage:
    """One stage's fitted GP in the cascade.

    Attributes:
        cols: The stage's own columns of the encoded input ``x``.
        predict: Mean and std of the GP's latent function, ``batch x (d_k [+ 1])`` ->
            (``batch``, ``batch``); stage k > 1 takes the scaled previous output last.
        out_lo: Lower end of this stage's observed output range: the next stage sees
            u = (y_k − out_lo) / out_scale, about the unit interval (unused for the last).
        out_scale: Width of that range.
    """

    cols: slice
    predict: Any
    out_lo: float = 0.0
    out_scale: float = 1.0


class CascadeLogEI(AcquisitionFunction):
    """log EI of the last stage's output, by Monte Carlo propagation through the cascade.

    Args:
        stages: The fitted stages in pipeline order (the last one models the objective).
        best_f: Best observed objective.
        scale: Objective scale (its standard deviation) for the smoothed improvement.
        z: ``M x S`` quasi-MC standard normal base samples, fixed so that the acquisition
            is deterministic and smooth in ``X`` (reparameterization).

    Example:
        >>> acq = CascadeLogEI(stages, best_f=Y.max(), scale=Y.std(), z=z)
        >>> acq(X)  # X: batch x 1 x d -> batch
    """

    def __init__(self, stages: list[CascadeStage], best_f: float, scale: float, z: Tensor):
        super().__init__(model=None)
        self.stages = stages
        self.best_f = float(best_f)
        self.scale = float(scale)
        self.z = z

    def samples(self, X: Tensor) -> Tensor:
        """Cascade samples of the final output, ``batch x d`` -> ``batch x M``."""
        first = self.stages[0]
        mean, std = first.predict(X[..., first.cols])  # b, b
        y = mean.unsqueeze(-1) + std.unsqueeze(-1) * self.z[:, 0]  # b x M
        for k in range(1, len(self.stages)):
            prev, stage = self.stages[k - 1], self.stages[k]
            xk = X[..., stage.cols]  # b x d_k
            u = (y - prev.out_lo) / prev.out_scale  # b x M: y_{k-1} scaled as in training
            b, M = u.shape
            inp = torch.cat([xk.unsqueeze(-2).expand(b, M, xk.shape[-1]), u.unsqueeze(-1)], -1)
            mean, std = stage.predict(inp.reshape(b * M, -1))  # bM, bM
            y = mean.reshape(b, M) + std.reshape(b, M) * self.z[:, k]
        return y

    @t_batch_mode_transform(expected_q=1)
    def forward(self, X: Tensor) -> Tensor:
        """``batch x 1 x d`` -> ``batch``."""
        y = self.samples(X.squeeze(-2))  # b x M
        log_imp = log_fatplus((y - self.best_f) / self.scale, tau=_TAU)
        return logmeanexp(log_imp, dim=-1) + math.log(self.scale)


class CascadeBO(WarmStartState, Method):
    """MS-BO (cascade BO): one GP per stage on (x_k, y_{k-1}), MC-propagated EI.

    EI rather than the paper's credible-interval (UCB-like) acquisition: EI is what every
    other baseline here maximizes, so the comparison isolates the cascade model, and it
    needs no confidence-width schedule.

    Args:
        num_restarts: L-BFGS starts.
        raw_samples: Raw Sobol samples screened for those starts.
        mc_samples: M, quasi-MC cascade samples per candidate.
        maxiter: L-BFGS iterations.
        warm_start: Start each GP fit from the previous ask's hyperparameters.
    """

    def __init__(
        self,
        num_restarts: int = 8,
        raw_samples: int = 256,
        mc_samples: int = 64,
        maxiter: int = 200,
        warm_start: bool = True,
    ) -> None:
        self.search = AcquisitionSearch(
            num_restarts=num_restarts,
            raw_samples=raw_samples,
            mc_samples=mc_samples,
            maxiter=maxiter,
            warm_start=warm_start,
        )
        self._init: dict[str, Any] = {}
        #: Whether the last proposal used the cascade (False: the single-GP fallback).
        self.cascade_used: bool | None = None

    # ------------------------------------------------------------------ models
    @property
    def warm_start(self) -> bool:
        return self.search.warm_start

    def _fit(self, key: str, X: Tensor, Y: Tensor):
        model = fit_gp(X, Y, self._init.get(key) if self.search.warm_start else None)
        self._init[key] = gp_hyperparameters(model)
        return model

    def fit_cascade(self, obs: Observations) -> list[CascadeStage] | None:
        """Fit GP_1..GP_S on the told stage outputs; None when they cannot support one
        (no outputs told, or a stage with fewer than two usable rows or a constant)."""
        space, O = obs.space, obs.stage_outputs
        S = len(space.stages)
        if O is None or S < 2:
            return None
        targets = [O[:, k] for k in range(S - 1)] + [obs.Y.squeeze(-1)]
        first = space.stage_slices[0]
        no_inputs = first.stop == first.start  # a first stage without parameters
        rows, ranges = [], []
        for k in range(S):
            ok = torch.isfinite(targets[k])
            if k > 0:
                ok = ok & torch.isfinite(O[:, k - 1])
            constant_ok = k == 0 and no_inputs  # no GP to fit: a constant may be constant
            if int(ok.sum()) < 2 or (not constant_ok and float(targets[k][ok].std()) <= 1e-12):
                return None
            rows.append(ok)
            if k < S - 1:
                seen = O[:, k][torch.isfinite(O[:, k])]
                width = float(seen.max() - seen.min())
                ranges.append((float(seen.min()), width if width > 0 else 1.0))
        stages = []
        for k in range(S):
            cols = space.stage_slices[k]
            inp = obs.X[:, cols]
            ok = rows[k]
            if k == 0 and no_inputs:
                # Nothing to condition on: the output's mean and spread as measured.
                y = targets[0][ok]
                predict = ConstantPredictor(float(y.mean()), float(y.std()))
            else:
                if k > 0:
                    lo, width = ranges[k - 1]
                    inp = torch.cat([inp, ((O[:, k - 1] - lo) / width).unsqueeze(-1)], -1)
                model = self._fit(f"stage{k}", inp[ok], targets[k][ok].unsqueeze(-1))
                predict = _Predictor(model)
            lo, width = ranges[k] if k < S - 1 else (0.0, 1.0)
            stages.append(CascadeStage(cols, predict, lo, width))
        return stages

    # ------------------------------------------------------------------ proposal
    def acquisition(self, obs: Observations) -> AcquisitionFunction:
        """The cascade's MC log EI, or analytic LogEI of one GP when there is no cascade."""
        stages = self.fit_cascade(obs)
        self.cascade_used = stages is not None
        if stages is None:
            model = self._fit("objective", obs.X, obs.Y)
            return LogExpectedImprovement(model, best_f=obs.Y.max())
        engine = NormalQMCEngine(d=len(stages), seed=obs.seed)
        z = engine.draw(self.search.mc_samples, dtype=obs.X.dtype)  # M x S
        return CascadeLogEI(stages, float(obs.Y.max()), float(obs.Y.std().clamp_min(1e-9)), z)

    def propose(self, obs: Observations) -> Proposal:
        obs = impute_failed(obs)
        acq = self.acquisition(obs)
        d = obs.space.dim
        bounds = torch.stack([torch.zeros(d), torch.ones(d)]).to(obs.X)
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
                return_best_only=False,
                retry_on_optimization_warning=False,
            )
        X = X.detach().reshape(-1, d)
        vals = vals.detach().reshape(-1)
        order = vals.argsort(descending=True).tolist()
        ranked = [Proposal(X[j], None, float(vals[j])) for j in order]
        return Proposal(ranked[0].x, None, ranked[0].acq_value, tuple(ranked[1:]))


register_method("ms_bo", CascadeBOOptions)(CascadeBO)
