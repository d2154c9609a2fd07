"""``ask`` with trials pending (parallel studies) and ``add_prior`` (warm start)."""

from __future__ import annotations

import pytest
import torch

import eeipu._methods
import eeipu._models
import eeipu._optimizer
import eeipu._parts
from eeipu import Optimizer, SearchSpace, TellError
from eeipu.testing import SyntheticProblem, simulate

FAST = {
    "num_restarts": 2,
    "raw_samples": 32,
    "prefix_raw_samples": 16,
    "prefix_restarts": 1,
    "mc_samples": 128,
    "maxiter": 30,
}


@pytest.fixture
def lbfgs_calls(monkeypatch) -> list[int]:
    """One entry per hyperparameter fit (L-BFGS on a GP's marginal likelihood) from here on."""
    calls: list[int] = []
    lbfgs = eeipu._models.fit_gpytorch_mll

    def counted(*args, **kwargs):
        calls.append(1)
        return lbfgs(*args, **kwargs)

    monkeypatch.setattr(eeipu._models, "fit_gpytorch_mll", counted)
    return calls


def _space(problem: SyntheticProblem) -> SearchSpace:
    return SearchSpace.from_dict(problem.space_dict())


def _told(seed: int = 0, budget: float = 40.0) -> Optimizer:
    problem = SyntheticProblem()
    opt = Optimizer(_space(problem), budget=budget, n_init=3, seed=seed, method_options=FAST)
    simulate(opt, problem, max_trials=8)
    return opt


def test_priors_train_the_models_but_are_not_this_studys_trials():
    old = _told()
    new = Optimizer(old.space, budget=30.0, n_init=2, seed=1, method_options=FAST)
    for t in old.trials:
        new.add_prior(t.params, t.objective, t.costs, t.cached)
    assert len(new.priors) == len(old.trials) and new.trials == []
    assert new.spent == 0.0 and new.warmup_spent is None and new.best_trial is None
    first = new.ask()
    assert first.number == 0 and first.origin == "warmup"  # the warm-up still runs
    new.tell(first, objective=1.0, costs={s: 1.0 for s in new.space.stages})
    new.tell(new.ask(), objective=2.0, costs={s: 1.0 for s in new.space.stages})
    assert new.warmup_spent == pytest.approx(6.0)  # only this study's two trials
    guided = new.ask()
    assert guided.origin == "eeipu"
    # The priors' cached prefixes are in the pool (the history view knows their stages).
    pool = new._observations(new._history_view, guided.number + 1).prefixes
    prior_prefixes = {str(p.params) for p in pool}
    assert any(str({"prep": t.params["prep"]}) in prior_prefixes for t in old.trials)
    with pytest.raises(TellError, match="cost must be a finite number"):
        new.add_prior(old.trials[0].params, 1.0, {s: -1.0 for s in new.space.stages})
    assert len(new.priors) == len(old.trials)


def test_ask_with_pending_trials_fantasizes_them_and_leaves_their_prefixes_out():
    opt = _told(budget=1000.0)
    a = opt.ask()
    b = opt.ask()  # `a` is pending: believed at the GP mean, not proposed again
    assert a.params != b.params and {t.number for t in opt.pending} == {a.number, b.number}
    # A configuration of its own, also running (a user's enqueued trial).
    c = opt.enqueue(opt.space.decode(torch.full((opt.space.dim,), 0.123, dtype=torch.double)))
    obs = opt._observations(opt._history_view, c.number + 1)
    assert obs.X.shape[0] == len(opt.trials) + 3  # three fantasy rows
    pooled = [p.params for p in obs.prefixes]
    assert pooled  # the told trials' cached prefixes
    # A trial still running gives no prefix (a continuation would wait for it to finish).
    stages = opt.space.stages
    for t in (a, b, c):
        assert stages[0] in t.memoized or {stages[0]: t.params[stages[0]]} not in pooled
    assert stages[0] not in c.memoized


def test_no_pending_no_priors_is_the_sequential_optimizer():
    # Same seed, same tells: identical proposals (the parallel code paths stay idle).
    x, y = _told(seed=3), _told(seed=3)
    assert x.ask().params == y.ask().params


def test_enqueue_asks_a_given_configuration_as_the_next_trial():
    problem = SyntheticProblem()
    opt = Optimizer(_space(problem), budget=40.0, n_init=2, seed=0, method_options=FAST)
    first = opt.ask()
    opt.tell(first, objective=1.0, costs={s: 1.0 for s in opt.space.stages})
    # What a crashed study had asked, with what the optimizer said of it then.
    again = opt.enqueue(first.params, origin="eeipu", acq_value=-0.5, memoized=["prep"])
    assert (again.number, again.origin, again.acq_value) == (1, "eeipu", -0.5)
    assert again.memoized == ("prep",) and again.params == first.params
    assert [t.number for t in opt.pending] == [1]
    # By default `memoized` is what the told trials cached: all of `first`'s stages.
    own = opt.enqueue(first.params)
    assert own.origin == "enqueued" and own.memoized == ("prep", "train", "finetune")
    # It counts towards the warm-up (n_init=2): the next ask is a Bayesian proposal.
    opt.tell(again, objective=2.0, costs={s: 1.0 for s in opt.space.stages})
    opt.tell(own, objective=0.5, costs={s: 1.0 for s in opt.space.stages})
    assert opt.ask().origin == "eeipu"
    with pytest.raises(Exception, match="train"):
        opt.enqueue({"prep": first.params["prep"]})


def test_pending_trials_are_fantasized_without_an_extra_gp_fit(monkeypatch):
    x, y = _told(seed=5, budget=1000.0), _told(seed=5, budget=1000.0)
    fits = []
    fit_gp = eeipu._models.fit_gp

    def counted(*args, **kwargs):
        fits.append(1)
        return fit_gp(*args, **kwargs)

    # Every module that fitted a GP during an ask, the optimizer's old believer included.
    for module in (eeipu._models, eeipu._methods, eeipu._parts, eeipu._optimizer):
        monkeypatch.setattr(module, "fit_gp", counted, raising=False)

    def fits_of_an_ask(opt: Optimizer):
        fits.clear()
        trial = opt.ask()
        return len(fits), trial

    n0, a = fits_of_an_ask(x)  # nothing pending
    n1, b = fits_of_an_ask(x)  # `a` pending
    n2, _ = fits_of_an_ask(x)  # `a`, `b` pending
    assert n0 > 0 and n1 == n0 and n2 == n0
    assert a.params != b.params
    # Same seed and history (and method state): the same proposals, pending or not.
    assert y.ask().params == a.params and y.ask().params == b.params
    # Without carried hyperparameters (warm_start off) the believer fits its own GP.
    x.method.warm_start = False
    assert fits_of_an_ask(x)[0] == n0 + 1


def test_noisy_incumbent_integrates_pending_trials_instead_of_believing_them(monkeypatch):
    """``incumbent: noisy``: qLogNEI over the told trials, pending ones passed as
    ``X_pending`` (integrated over), the objective GP not conditioned on fantasies."""
    problem = SyntheticProblem()
    opt = Optimizer(
        _space(problem),
        budget=1000.0,
        n_init=3,
        seed=0,
        method_options={**FAST, "incumbent": "noisy"},
    )
    simulate(opt, problem, max_trials=6)
    built = []
    real = eeipu._parts.qLogNoisyExpectedImprovement

    def recorded(*, model, X_baseline, X_pending, **kwargs):
        built.append((model.train_inputs[0].shape[0], X_baseline.shape[0], X_pending))
        return real(model=model, X_baseline=X_baseline, X_pending=X_pending, **kwargs)

    monkeypatch.setattr(eeipu._parts, "qLogNoisyExpectedImprovement", recorded)
    n = len(opt.trials)
    a = opt.ask()
    b = opt.ask()  # `a` is pending
    assert a.origin == b.origin == "eeipu" and a.params != b.params
    (fit_a, base_a, pend_a), (fit_b, base_b, pend_b) = built
    assert (fit_a, base_a, pend_a) == (n, n, None)
    assert (fit_b, base_b) == (n, n)  # a GP of the told trials only: no fantasy row
    assert pend_b is not None and torch.equal(pend_b, opt.space.encode(a.params).unsqueeze(0))


def test_asks_with_no_trial_told_in_between_reuse_the_fitted_hyperparameters(lbfgs_calls):
    """A parallel study asks once per freed slot: asks with the same told trials (only the
    pending ones differ) condition GPs with the hyperparameters the first one fitted, no
    L-BFGS; a tell refits; a resumed optimizer (state restored) does as an uninterrupted
    one, so its proposal is the same."""
    problem = SyntheticProblem()
    x = _told(seed=3, budget=1000.0)
    a = x.ask()
    assert lbfgs_calls  # new told trials: the objective and cost GPs are fitted
    state = x.state_dict()
    lbfgs_calls.clear()
    b = x.ask()  # `a` pending, the same told trials
    assert lbfgs_calls == [] and b.params != a.params
    # A resumed optimizer: the told trials, `a` re-enqueued, the state after asking `a`.
    resumed = Optimizer(x.space, budget=1000.0, n_init=3, seed=3, method_options=FAST)
    for t in x.trials:
        resumed.add_trial(t.params, t.objective, t.costs, cached=t.cached)
    resumed.load_state_dict(state)
    resumed.enqueue(a.params)
    assert resumed.ask().params == b.params and lbfgs_calls == []
    # One more told trial: new data, new fits (from the last hyperparameters).
    obj, costs = problem.evaluate(a.params)
    x.tell(a, objective=obj, costs=costs)
    x.ask()
    assert lbfgs_calls


def test_expected_cost_after_an_ask_reuses_the_methods_cost_gps(lbfgs_calls):
    """A parallel study asks, then prices the trial (``expected_cost``) for its budget rule:
    the method's per-stage cost GPs of that ask were fitted on the same told trials, so
    the price fits nothing and equals (to the fit's tolerance) the one a separate fit gives;
    a method without such GPs leaves ``expected_cost`` fitting its own."""
    x = _told(seed=3, budget=1000.0)
    a = x.ask()
    lbfgs_calls.clear()
    price = x.expected_cost(a)
    assert lbfgs_calls == [] and price > 0
    own = Optimizer(x.space, method="random", budget=1000.0, n_init=3, seed=3)
    for t in x.trials:
        own.add_trial(t.params, t.objective, t.costs, cached=t.cached)
    assert own.method.cost_hyperparameters() is None
    assert own.expected_cost(a) == pytest.approx(price, rel=1e-3)
    assert lbfgs_calls  # fitted from scratch


def test_fit_gp_reuses_hyperparameters_only_for_the_data_they_were_fitted_on(lbfgs_calls):
    X = torch.rand(12, 3, generator=torch.Generator().manual_seed(0), dtype=torch.double)
    Y = (X * torch.tensor([1.0, -2.0, 0.5], dtype=torch.double)).sum(-1, keepdim=True).sin()
    fitted = eeipu._models.fit_gp(X, Y)
    init = eeipu._models.gp_hyperparameters(fitted)
    lbfgs_calls.clear()
    again = eeipu._models.fit_gp(X.clone(), Y.clone(), init)
    assert lbfgs_calls == []
    with torch.no_grad():
        assert torch.equal(again.posterior(X).mean, fitted.posterior(X).mean)
    # Any other data (one value moved by 1e-12, one point more) is fitted.
    eeipu._models.fit_gp(X, Y + torch.eye(12, 1, dtype=torch.double) * 1e-12, init)
    assert len(lbfgs_calls) == 1
    eeipu._models.fit_gp(torch.cat([X, X[:1] / 2]), torch.cat([Y, Y[:1]]), init)
    assert len(lbfgs_calls) == 2


def test_model_ready_once_two_told_trials_differ_and_asks_before_that_are_random():
    problem = SyntheticProblem()
    opt = Optimizer(_space(problem), budget=100.0, n_init=2, seed=0, method_options=FAST)
    first, second = opt.ask(), opt.ask()
    third = opt.ask()  # past the warm-up, nothing told: random
    assert not opt.model_ready and third.origin == "random"
    stages = opt.space.stages
    opt.tell(first, objective=1.0, costs={s: 1.0 for s in stages})
    assert not opt.model_ready and opt.ask().origin == "random"  # one told, others pending
    opt.tell(second, objective=1.0, costs={s: 1.0 for s in stages})
    assert not opt.model_ready  # two told, one value: nothing to model
    opt.tell(third, objective=2.0, costs={s: 1.0 for s in stages})
    assert opt.model_ready and opt.ask().origin == "eeipu"
    # Priors (a warm start) count: a new study models past its warm-up at once.
    warm = Optimizer(opt.space, budget=100.0, n_init=1, seed=1, method_options=FAST)
    for t in opt.trials:
        warm.add_prior(t.params, t.objective, t.costs, t.cached)
    assert warm.model_ready and warm.ask().origin == "warmup" and warm.ask().origin == "eeipu"
