"""Surrogate models: the objective GP and the cost models (per stage or total).

Cost models predict the *log* cost with a GP (outcomes standardized) and turn it into the
Monte Carlo expected inverse cost of DESIGN.md:

    C^(m)(x; δ) = Σ_{k≤δ} ε_k + Σ_{k>δ} exp(g_k^(m)(x)),    I(x; δ) = (1/M) Σ_m 1 / C^(m)(x; δ)

with g_k^(m) quasi-MC draws of stage k's log-cost posterior and ε_k stage k's load cost.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from botorch.exceptions.warnings import OptimizationWarning
from botorch.fit import fit_gpytorch_mll
from botorch.models import SingleTaskGP
from botorch.models.transforms.outcome import Standardize
from botorch.sampling.qmc import NormalQMCEngine
from gpytorch.kernels import RBFKernel
from gpytorch.likelihoods import GaussianLikelihood
from gpytorch.means import ConstantMean
from gpytorch.mlls import ExactMarginalLogLikelihood
from torch import Tensor

__all__ = ["ConstantPredictor", "CostModel", "conditioned_gp", "fit_gp", "gp_hyperparameters"]


def fit_gp(X: Tensor, Y: Tensor, init: dict[str, Tensor] | None = None) -> SingleTaskGP:
    """Fit a SingleTaskGP (``n x d`` inputs in the unit cube, ``n x 1`` outcomes, standardized).

    Hyperparameters are fitted by maximizing the marginal likelihood (L-BFGS); BoTorch's own
    fallbacks handle fitting failures.

    Args:
        init: Hyperparameters to start from (see :func:`gp_hyperparameters`), e.g. those of
            the previous ask's model: with one new point the optimum barely moves, and a
            warm start needs a few L-BFGS steps instead of ~80 (10x faster asks). When
            ``init`` was fitted on exactly these ``X``, ``Y`` (a parallel study's asks with
            no trial told in between), it is the fit: the model gets those hyperparameters
            without an L-BFGS run.
    """
    model = SingleTaskGP(X, Y, outcome_transform=Standardize(m=1))
    if init is not None:
        loaded = _load_hyperparameters(model, init)
        if loaded and init.get(FITTED_ON) == _data_digest(model):
            model.eval()
            return model
    mll = ExactMarginalLogLikelihood(model.likelihood, model)
    with warnings.catch_warnings():
        # Fitting on few points often stops early; the fitted model is still usable.
        warnings.simplefilter("ignore", OptimizationWarning)
        # ftol 1e-6 (scipy's default is ~2e-9) stops once the likelihood stops moving in the
        # 6th digit: 3x fewer steps, same model for all practical purposes.
        fit_gpytorch_mll(mll, optimizer_kwargs={"options": {"ftol": 1e-6}})
    model.eval()
    return model


def conditioned_gp(X: Tensor, Y: Tensor, hyperparameters: dict[str, Tensor]) -> SingleTaskGP | None:
    """A SingleTaskGP with given hyperparameters (see :func:`gp_hyperparameters`) conditioned
    on ``n x d`` inputs and ``n x 1`` outcomes (standardized), not fitted: its posterior costs
    one Cholesky of the ``n x n`` kernel matrix instead of an L-BFGS fit of the marginal
    likelihood. None when the hyperparameters do not fit the model (another input dimension).
    """
    model = SingleTaskGP(X, Y, outcome_transform=Standardize(m=1))
    if not _load_hyperparameters(model, hyperparameters):
        return None
    model.eval()
    return model


def _load_hyperparameters(model: SingleTaskGP, hyperparameters: dict[str, Any]) -> bool:
    """Load ``hyperparameters`` into ``model`` if every one matches its shape there."""
    tensors = {k: v for k, v in hyperparameters.items() if k != FITTED_ON}
    current = model.state_dict()
    if not all(k in current and current[k].shape == v.shape for k, v in tensors.items()):
        return False
    model.load_state_dict(tensors, strict=False)
    return True


FITTED_ON = "fitted_on"  # gp_hyperparameters' digest of the data they were fitted on


def _data_digest(model: SingleTaskGP) -> str:
    """A digest of ``model``'s training data (inputs and transformed targets, bit for bit)."""
    h = hashlib.blake2b(digest_size=16)
    for t in (model.train_inputs[0], model.train_targets):
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def gp_hyperparameters(model: SingleTaskGP) -> dict[str, Any]:
    """The fitted hyperparameters of ``model`` (no data-dependent buffers such as the
    outcome transform's mean and scale), to warm-start a later fit, and under
    :data:`FITTED_ON` a digest of the data they were fitted on (a JSON string): a later fit
    on the same data reuses them (:func:`fit_gp`)."""
    out: dict[str, Any] = {
        k: v.detach().clone()
        for k, v in model.state_dict().items()
        if not k.startswith("outcome_transform") and not k.startswith("train")
    }
    out[FITTED_ON] = _data_digest(model)
    return out


class _Predictor:
    """Mean and standard deviation of a fitted SingleTaskGP's latent function, fast.

    The acquisition asks each cost GP for its marginal at the same few dozen points some
    50 times per ask; BoTorch's ``posterior`` builds a full multivariate normal through
    GPyTorch each time. Here the Cholesky factor and the weights are computed once, so a
    call is two small matrix products and a triangular solve (2.6x faster, equal to
    ``posterior`` to ~1e-12; see tests). Models this shortcut does not cover (other
    likelihoods, input transforms) go through ``posterior``.
    """

    def __init__(self, model: SingleTaskGP) -> None:
        self.model = model
        tf = getattr(model, "outcome_transform", None)
        self.fast = (
            isinstance(tf, Standardize)
            and getattr(model, "input_transform", None) is None
            and isinstance(model.likelihood, GaussianLikelihood)
            and model.train_inputs[0].dim() == 2
        )
        if not self.fast:
            return
        with torch.no_grad():
            X = model.train_inputs[0]
            K = model.covar_module(X).to_dense()
            K = K + model.likelihood.noise.reshape(-1)[0] * torch.eye(len(X), dtype=X.dtype)
            self.L = torch.linalg.cholesky(K)
            resid = (model.train_targets - model.mean_module(X)).unsqueeze(-1)
            self.alpha = torch.cholesky_solve(resid, self.L).squeeze(-1)  # n
            self.X = X
            self.y_mean = tf.means.reshape(-1)[0]
            self.y_std = tf.stdvs.reshape(-1)[0]
            # BoTorch's default kernel (an ARD RBF, no outputscale) with a constant mean:
            # written out in torch, without GPyTorch's lazy-tensor machinery per call (the
            # acquisition calls every stage's predictor ~150 times per ask).
            self.rbf = type(model.covar_module) is RBFKernel and isinstance(
                model.mean_module, ConstantMean
            )
            if self.rbf:
                self.lengthscale = model.covar_module.lengthscale.detach().reshape(-1)  # d
                self.constant = model.mean_module.constant.detach().reshape(-1)[0]
                self.Xs = X / self.lengthscale  # n x d
                self.Xs_sq = (self.Xs**2).sum(-1)  # n

    def _kernel(self, X: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Prior mean (``batch``), cross-covariance with the training inputs (``batch x n``)
        and prior variance (``batch``) at ``batch x d`` inputs."""
        m = self.model
        if not self.rbf:
            k = m.covar_module(X, self.X).to_dense()
            return m.mean_module(X), k, m.covar_module(X, diag=True)
        Xs = X / self.lengthscale
        sq = (Xs**2).sum(-1, keepdim=True) + self.Xs_sq - 2.0 * Xs @ self.Xs.transpose(-1, -2)
        k = torch.exp(-0.5 * sq.clamp_min(0.0))
        ones = torch.ones(X.shape[:-1], dtype=X.dtype, device=X.device)
        return self.constant * ones, k, ones

    def __call__(self, X: Tensor) -> tuple[Tensor, Tensor]:
        """``batch x d`` -> (mean, std), each ``batch``, in the original outcome scale."""
        if not self.fast:
            post = self.model.posterior(X.unsqueeze(-2))  # batch x 1 x d
            mean = post.mean.reshape(X.shape[:-1])
            return mean, post.variance.clamp_min(1e-12).sqrt().reshape(X.shape[:-1])
        prior_mean, k, prior_var = self._kernel(X)  # batch, batch x n, batch
        mean = prior_mean + k @ self.alpha
        v = torch.linalg.solve_triangular(self.L, k.transpose(-1, -2), upper=False)  # n x batch
        var = prior_var - (v**2).sum(-2)
        return mean * self.y_std + self.y_mean, var.clamp_min(1e-12).sqrt() * self.y_std


@dataclass(frozen=True)
class ConstantPredictor:
    """A predictor without inputs: the same mean and standard deviation everywhere, e.g. for
    a quantity of a stage without parameters (nothing upstream to condition on)."""

    mean: float
    std: float = 0.0

    def __call__(self, X: Tensor) -> tuple[Tensor, Tensor]:
        """``batch x d`` (``d`` may be 0) -> (mean, std), each ``batch``."""
        zero = torch.zeros(X.shape[:-1], dtype=X.dtype, device=X.device)
        return zero + self.mean, zero + self.std


@dataclass
class _StageCost:
    """One stage's log-cost predictor: a GP on the columns ``cols``, or a constant (with
    spread ``std``)."""

    model: SingleTaskGP | None
    cols: slice
    constant: float = 0.0
    std: float = 0.0

    def __post_init__(self) -> None:
        self._predict = (
            ConstantPredictor(self.constant, self.std)
            if self.model is None
            else _Predictor(self.model)
        )

    def mean_std(self, X: Tensor) -> tuple[Tensor, Tensor]:
        """``batch x d`` -> (mean, std) of the log cost, each ``batch``."""
        if self.model is None:
            return self._predict(X)
        sub = X[..., self.cols]
        mean, std = self._predict(sub.reshape(-1, sub.shape[-1]))
        return mean.reshape(X.shape[:-1]), std.reshape(X.shape[:-1])


class CostModel:
    """Expected inverse cost of running a candidate, given how many leading stages are cached.

    Args:
        stages: One predictor per stage, in pipeline order (a single one for total cost).
        log_load: ``S`` log load costs ε_k charged for cached stages.
        n_samples: Number M of quasi-MC samples.
        seed: Seed of the (fixed) quasi-MC base samples, so the acquisition is deterministic
            and smooth in ``X``.
        overhead: A cost every trial pays on top of its stages, whatever it computes or
            loads (e.g. the measured wall time of ``ask()`` and orchestration): with it, a
            trial that loads nearly everything is no longer nearly free.
    """

    def __init__(
        self,
        stages: Sequence[_StageCost],
        log_load: Tensor,
        n_samples: int = 128,
        seed: int = 0,
        overhead: float = 0.0,
    ) -> None:
        if not (overhead >= 0 and math.isfinite(overhead)):
            raise ValueError(f"`overhead` must be a finite number >= 0, but got {overhead!r}")
        self.stages = list(stages)
        self.log_load = log_load
        self.overhead = float(overhead)
        engine = NormalQMCEngine(d=len(self.stages), seed=seed)
        self.z = engine.draw(n_samples, dtype=log_load.dtype)  # M x S

    @classmethod
    def fit(
        cls,
        X: Tensor,
        costs: Tensor,
        cached: Tensor,
        stage_cols: Sequence[slice],
        *,
        load_eps: float | None = None,
        n_samples: int = 128,
        seed: int = 0,
        init: Sequence[dict[str, Tensor] | None] | None = None,
        overhead: float = 0.0,
    ) -> CostModel:
        """Fit one log-cost GP per stage.

        Args:
            X: ``n x d`` observed inputs (unit cube).
            costs: ``n x S`` measured stage costs (NaN where unknown).
            cached: ``n x S`` bool, True where the stage was loaded from the cache: those
                costs are load costs and train ε_k, the others train the GPs.
            stage_cols: For each stage, the columns its GP sees (its own and upstream
                parameters, only its own, or all columns for a total-cost model). A stage
                that sees no column (a first stage without parameters) costs a constant:
                its log cost is the mean of the measured ones, with their standard
                deviation as the spread, since only noise (the machine's load) moves it.
            load_eps: ε_k before any load was measured; default 1% of the stage's typical
                compute cost.
            overhead: The per-trial cost on top of the stages (see the class).
        """
        predictors, log_load = [], []
        for k, cols in enumerate(stage_cols):
            c = costs[:, k]
            ok = torch.isfinite(c) & (c > 0)
            run = ok & ~cached[:, k]
            load = ok & cached[:, k]
            log_c = c[run].log()
            spread = float(log_c.std()) if run.sum() >= 2 else 0.0
            has_inputs = cols.stop > cols.start
            # A GP needs two distinct values and an input; else the cost is a constant.
            if has_inputs and spread > 1e-9:
                gp = fit_gp(X[run][:, cols], log_c.unsqueeze(-1), None if init is None else init[k])
                predictors.append(_StageCost(gp, cols))
            else:
                const = float(log_c.mean()) if run.any() else 0.0
                predictors.append(_StageCost(None, cols, const, spread if not has_inputs else 0.0))
            if load.any():
                log_load.append(math.log(float(c[load].mean())))
            elif load_eps is not None:
                log_load.append(math.log(load_eps))
            else:
                typical = float(log_c.mean()) if run.any() else 0.0
                log_load.append(typical + math.log(0.01))
        return cls(predictors, torch.tensor(log_load, dtype=X.dtype), n_samples, seed, overhead)

    def log_expected_inverse_cost(self, X: Tensor, n_cached: int | Tensor = 0) -> Tensor:
        """log I(x; δ) for ``batch x d`` (or ``batch x 1 x d``) inputs -> ``batch``.

        ``n_cached`` (δ) is an int or a ``batch`` tensor: the first δ stages cost their load
        cost ε_k instead of a sample of their compute cost.
        """
        if X.dim() >= 2 and X.shape[-2] == 1 and X.dim() > 2:
            X = X.squeeze(-2)
        samples = []
        for k, pred in enumerate(self.stages):
            mean, std = pred.mean_std(X)  # batch
            samples.append(mean.unsqueeze(-1) + std.unsqueeze(-1) * self.z[:, k])  # batch x M
        log_c = torch.stack(samples, dim=-1)  # batch x M x S
        S = len(self.stages)
        n_cached_t = torch.as_tensor(n_cached, device=X.device)
        mask = torch.arange(S, device=X.device) < n_cached_t.unsqueeze(-1)  # (batch x) S
        mask = mask.unsqueeze(-2) if mask.dim() > 1 else mask  # (batch x) 1 x S
        log_c = torch.where(mask, self.log_load.to(log_c), log_c)
        log_total = torch.logsumexp(log_c, dim=-1)  # batch x M
        if self.overhead > 0:
            log_total = torch.logaddexp(log_total, log_total.new_tensor(math.log(self.overhead)))
        return torch.logsumexp(-log_total, dim=-1) - math.log(log_total.shape[-1])
