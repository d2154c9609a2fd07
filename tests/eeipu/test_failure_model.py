"""Failed trials modelled instead of imputed (issue 12, ``failures='model'``): the objective
GP learns from complete trials only, a GP on the +1 / -1 outcome labels gives P(success),
and its log is added to the quality term. Until a trial fails nothing changes."""

from __future__ import annotations

import pytest
import torch

from eeipu import (
    GittinsIndex,
    HistoryCacheView,
    LogSuccessWeighted,
    Optimizer,
    OptimizerError,
    TrialState,
    make_method,
)
from tests.eeipu.test_acq_terms import (  # its space: three stages, x in [0, 1]
    SPACE,
    Spy,
    index_equation,
)

COSTS = {"a": 6.0, "b": 2.0, "c": 1.0}
OPTIMUM = {"a": 0.3, "b": 0.6, "c": 0.4}


def objective(params):
    return -sum((params[s]["x"] - c) ** 2 for s, c in OPTIMUM.items())


def fails_at(params, edge):
    """Stage b diverges above ``edge`` (its optimum, 0.6, lies just below 0.7)."""
    return "b" if edge is not None and params["b"]["x"] > edge else None


def study(method, n=14, n_init=6, seed=1, edge=0.7):
    """A memoizing study where stage b fails above ``edge``: a failed trial is charged the
    stages it reached, and only the stages before the failing one enter the cache."""
    opt = Optimizer(SPACE, method=method, budget=1e6, n_init=n_init, seed=seed)
    view = HistoryCacheView(SPACE.stages)
    for _ in range(n):
        t = opt.ask(cache=view)
        hits = list(t.memoized)
        failed = fails_at(t.params, edge)
        ran = SPACE.stages if failed is None else SPACE.stages[: SPACE.stages.index(failed) + 1]
        costs = {s: (0.05 if s in hits else COSTS[s]) for s in ran}
        opt.tell(
            t,
            objective=None if failed else objective(t.params),
            costs=costs,
            cached=hits,
        )
        view.add(t.params, [s for s in ran if s != failed])
    return opt


def test_the_model_learns_complete_trials_and_the_labels_and_weighs_ei_by_p_success():
    spy = Spy(failures="model")
    opt = study(spy)
    told_failed = [t for t in opt.trials if t.state is TrialState.FAILED]
    assert told_failed, "the warm-up should reach the failing region"
    checked = 0
    for obs, (winner, acq) in zip(spy.obs, spy.seen, strict=True):
        n_failed = 0 if obs.failed is None else int(obs.failed.sum())
        n_told = obs.X.shape[0] - obs.n_pending
        if n_failed == 0:
            assert not isinstance(acq.log_ei, LogSuccessWeighted)
            continue
        checked += 1
        assert obs.failed.numel() == n_told
        # The objective GP is fitted on the complete trials only (no imputed values) ...
        train_X = acq.model.train_inputs[0]
        assert train_X.shape[-2] == n_told - n_failed
        assert torch.equal(train_X, obs.X[:n_told][~obs.failed])
        # ... and P(success) separates the told outcomes.
        assert isinstance(acq.log_ei, LogSuccessWeighted)
        with torch.no_grad():
            p = acq.log_ei.log_success(obs.X[:n_told].unsqueeze(-2)).exp()
        assert float(p[obs.failed].max()) < 0.5 < float(p[~obs.failed].min())
        # The quality term is log EI + log P(success), at every candidate that ran.
        X = winner.x.view(1, 1, -1)
        delta = 0 if winner.prefix is None else winner.prefix.n_stages
        acq.n_cached = delta
        with torch.no_grad():
            log_p = float(acq.log_ei.log_success(X))
            inner = float(acq.log_ei.log_acq(X))
        assert winner.acq_terms["log_success"] == pytest.approx(log_p, abs=1e-9)
        assert winner.acq_terms["log_ei"] == pytest.approx(inner + log_p, abs=1e-6)
    assert checked >= 5


def test_the_gittins_index_of_a_box_that_may_fail_solves_p_times_ei_equals_lambda_c():
    spy = Spy(tradeoff="gittins")  # failures="model", eeipu's default
    study(spy, n=10)
    checked = 0
    X = torch.rand(6, 1, SPACE.dim, dtype=torch.double, generator=torch.Generator().manual_seed(0))
    for obs, (winner, acq) in zip(spy.obs, spy.seen, strict=True):
        assert isinstance(acq, GittinsIndex)
        if obs.failed is None:
            assert acq.success is None
            continue
        checked += 1
        n_told = obs.failed.numel()
        assert acq.model.train_inputs[0].shape[-2] == n_told - int(obs.failed.sum())
        acq.n_cached = 0
        with torch.no_grad():
            assert float(acq.log_success(X).exp().min()) < 0.99  # p matters below
        for p_ei, lam_c in index_equation(acq, X):
            assert p_ei == pytest.approx(lam_c, rel=1e-6)
        assert winner.acq_terms["log_success"] == pytest.approx(
            float(acq.log_success(winner.x.view(1, 1, -1))), abs=1e-9
        )
    assert checked >= 3


def test_nothing_changes_until_a_trial_fails():
    runs = [study(Spy(failures=mode), n=10, edge=None) for mode in ("impute", "model")]
    assert [t.params for t in runs[0].trials] == [t.params for t in runs[1].trials]


def test_eeipu_models_failures_by_default_and_the_baselines_impute_them():
    assert make_method("eeipu").failures.name == "model"
    for name in ("ms_carbo", "carbo", "eips", "ei"):
        assert make_method(name).failures.name == "impute"


def test_bad_failures_options_are_rejected_with_the_key_named():
    with pytest.raises(OptimizerError, match="`failures` must be one of 'impute', 'model'"):
        make_method("eeipu", failures="drop")
