"""ask() on both of BoTorch's L-BFGS-B paths.

BoTorch runs multi-start L-BFGS-B as a batch of separate problems only where it has tested
the installed scipy (BoTorch 0.18: scipy in [1.13, 1.18)); elsewhere (scipy 1.18, which pip
picks on Python >= 3.12) it sums the starts into one scipy problem, and per-start tensor
``fixed_features`` raise there. These tests force the serial path on any installation by
making ``get_reasons_against_fast_path`` (which ``gen_candidates_scipy`` consults) give a
reason, and run full studies on it.
"""

from __future__ import annotations

import math

import pytest
import torch
from botorch.generation import gen as botorch_gen

from eeipu import Observations, Optimizer, Prefix, SearchSpace, batched_lbfgs_available, make_method
from eeipu.testing import SyntheticProblem, simulate

GP_METHODS = ["eeipu", "ms_carbo", "carbo", "eips", "ei", "ms_bo", "lambo"]
FAST_OPTIONS = {"num_restarts": 2, "raw_samples": 32, "mc_samples": 128, "maxiter": 30}


@pytest.fixture
def serial_lbfgs(monkeypatch):
    """Force BoTorch's serial (scipy.optimize.minimize) path; count its scipy runs."""
    monkeypatch.setattr(
        botorch_gen, "get_reasons_against_fast_path", lambda **_: ["forced by the test"]
    )
    runs = []
    minimize = botorch_gen.minimize_with_timeout

    def counting(*args, **kwargs):
        runs.append(1)
        return minimize(*args, **kwargs)

    monkeypatch.setattr(botorch_gen, "minimize_with_timeout", counting)
    return runs


def _study(method: str, seed: int = 0, n_trials: int = 7):
    problem = SyntheticProblem(dims=(2, 2, 2), seed=seed)
    options = {} if method in ("ms_bo", "lambo", "random") else dict(FAST_OPTIONS)
    if method == "eeipu":
        options.update(prefix_restarts=1, prefix_raw_samples=16)
    opt = Optimizer(
        SearchSpace.from_dict(problem.space_dict()),
        method=method,
        budget=1e6,
        n_init=4,
        seed=seed,
        method_options=options,
    )
    return simulate(opt, problem, max_trials=n_trials)


@pytest.mark.parametrize("method", GP_METHODS)
def test_full_study_on_the_serial_lbfgs_path(serial_lbfgs, method):
    assert not batched_lbfgs_available()
    trials = _study(method)
    assert len(trials) == 7, f"{method} stopped after {len(trials)} trials"
    assert serial_lbfgs, "BoTorch did not take its serial path"
    assert all(math.isfinite(t.objective) for t in trials)


def test_eeipu_reuses_cached_prefixes_on_the_serial_path(serial_lbfgs):
    trials = _study("eeipu", n_trials=10)
    assert any(t.memoized for t in trials[4:]), "no BO trial reused a cached prefix"


def _observations(seed: int = 0) -> Observations:
    """12 told trials of a 3-stage space and a pool of two cached prefixes (by hand)."""
    space = SearchSpace.from_dict(SyntheticProblem(dims=(2, 2, 2)).space_dict())
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(12, space.dim, generator=g, dtype=torch.double)
    Y = -((X - 0.3) ** 2).sum(-1, keepdim=True)
    costs = 1.0 + X[:, ::2] * torch.tensor([3.0, 1.0, 0.5], dtype=torch.double)
    best = int(Y.argmax())
    prefixes = [
        Prefix(n, X[best, : space.prefix_dim(n)].clone(), {}, float(Y[best])) for n in (2, 1)
    ]
    return Observations(
        space=space,
        X=X,
        Y=Y,
        costs=costs,
        cached=torch.zeros(12, 3, dtype=torch.bool),
        eta=0.7,
        prefixes=prefixes,
        seed=seed,
        rng=torch.Generator().manual_seed(seed),
    )


def test_both_paths_find_equally_good_points(monkeypatch):
    """Same observations, same starts: the batched run and the summed serial run reach
    proposals of (nearly) the same acquisition value, each keeping its prefix's columns."""
    if not batched_lbfgs_available():
        pytest.skip("this BoTorch/scipy has no batched L-BFGS-B path to compare with")
    proposals = {}
    for path in ("batched", "serial"):
        if path == "serial":
            monkeypatch.setattr(
                botorch_gen, "get_reasons_against_fast_path", lambda **_: ["forced"]
            )
        method = make_method("eeipu", **FAST_OPTIONS, prefix_restarts=2, prefix_raw_samples=32)
        proposals[path] = method.propose(_observations())
    batched, serial = proposals["batched"], proposals["serial"]
    assert serial.acq_value == pytest.approx(batched.acq_value, abs=0.05)
    obs = _observations()
    for p in (batched, *batched.alternatives, serial, *serial.alternatives):
        if p.prefix is not None:
            n = obs.space.prefix_dim(p.prefix.n_stages)
            assert torch.equal(p.x[:n], p.prefix.x)
    used = {None if p.prefix is None else p.prefix.n_stages for p in batched.alternatives}
    assert used == {None, 1, 2}, "every prefix of the pool must be optimized"
