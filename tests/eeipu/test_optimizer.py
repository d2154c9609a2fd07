"""The ask/tell contract, bad input, reproducibility, and conformance of every method."""

from __future__ import annotations

import json
import math

import pytest

from eeipu import (
    METHODS,
    HistoryCacheView,
    OptimizerError,
    SearchSpace,
    TellError,
    Trial,
    TrialState,
    options_used_by,
)
from eeipu import Optimizer as _Optimizer

SPEC = {
    "prep": {
        "a": {"type": "float", "low": 0.0, "high": 1.0},
        "n": {"type": "int", "low": 1, "high": 8},
    },
    "train": {
        "lr": {"type": "float", "low": 1e-3, "high": 1.0, "log": True},
        "kind": {"type": "categorical", "choices": ["x", "y"]},
    },
    "tune": {"b": {"type": "float", "low": -1.0, "high": 1.0}},
}
FAST = {
    "num_restarts": 2,
    "raw_samples": 32,
    "prefix_restarts": 1,
    "prefix_raw_samples": 16,
    "mc_samples": 128,
    "maxiter": 30,
}
GP_METHODS = sorted(m for m in METHODS if m != "random")


def Optimizer(space, method="eeipu", **kw):
    # Each method gets the fast settings it uses (it refuses options it does not use).
    if method != "random":
        kw.setdefault("method_options", options_used_by(method, FAST))
    return _Optimizer(space, method=method, **kw)


def f(params):
    """A cheap 3-stage objective with per-stage costs (stage 'prep' the most expensive)."""
    p, t, u = params["prep"], params["train"], params["tune"]
    obj = -((p["a"] - 0.3) ** 2) - 0.05 * abs(p["n"] - 4) - (math.log10(t["lr"]) + 1.5) ** 2
    obj += 0.2 * (t["kind"] == "y") - (u["b"] - 0.2) ** 2
    costs = {"prep": 5.0 + p["a"] + 0.1 * p["n"], "train": 1.0 + t["lr"], "tune": 0.3}
    return obj, costs


@pytest.fixture
def space():
    return SearchSpace.from_dict(SPEC)


def run(opt, n, fail_at=()):
    view = HistoryCacheView(opt.space.stages)
    for i in range(n):
        trial = opt.ask(cache=view)
        obj, costs = f(trial.params)
        costs = {s: (0.01 if s in trial.memoized else c) for s, c in costs.items()}
        if i in fail_at:
            opt.tell(trial, objective=None, costs={"prep": costs["prep"]})
        else:
            opt.tell(trial, objective=obj, costs=costs)
            view.add(trial.params)
    return opt.trials


# ---------------------------------------------------------------- the contract
def test_ask_tell_contract(space):
    opt = Optimizer(space, budget=50.0, n_init=3, seed=0)
    trial = opt.ask()
    assert isinstance(trial, Trial) and trial.number == 0 and trial.state is TrialState.PENDING
    assert list(trial.params) == ["prep", "train", "tune"]
    assert trial.memoized == ()
    space.validate(trial.params)
    obj, costs = f(trial.params)
    told = opt.tell(trial, objective=obj, costs=costs)
    assert told.state is TrialState.COMPLETE and told.objective == obj
    assert opt.spent == pytest.approx(sum(costs.values()))
    assert opt.budget_left == pytest.approx(50.0 - opt.spent)
    assert opt.best_trial.number == 0
    assert [t.number for t in opt.trials] == [0]


def test_warmup_is_shared_by_every_method(space):
    firsts = {}
    for method in METHODS:
        opt = Optimizer(space, method=method, n_init=4, seed=7)
        firsts[method] = [opt.ask().params for _ in range(4)]
    ref = firsts["eeipu"]
    assert all(v == ref for v in firsts.values())
    assert Optimizer(space, n_init=4, seed=8).ask().params != ref[0]


def test_budget_warmup_and_cooling(space):
    opt = Optimizer(space, budget=40.0, n_init=3, seed=0)
    assert opt.eta == 1.0 and opt.warmup_spent is None
    run(opt, 3)
    assert opt.warmup_spent == pytest.approx(opt.spent)
    assert opt.eta == pytest.approx(1.0)
    run(opt, 2)
    assert opt.eta == pytest.approx((40.0 - opt.spent) / (40.0 - opt.warmup_spent))
    while not opt.done:
        run(opt, 1)
    assert opt.spent >= 40.0 and opt.eta == 0.0


def test_history_view_marks_repeated_prefixes_memoized(space):
    opt = Optimizer(space, budget=1000.0, n_init=3, seed=1)
    trials = run(opt, 12)
    seen = []
    for t in trials:
        lead = []
        for stage in space.stages:
            if any(all(o["params"][s] == t.params[s] for s in [*lead, stage]) for o in seen):
                lead.append(stage)
            else:
                break
        assert list(t.memoized) == lead
        assert t.cached == t.memoized
        seen.append({"params": t.params})
    assert any(t.memoized for t in trials), "eeipu never reused a cached prefix"


def test_cache_view_is_asked_and_respected(space):
    class Nothing:
        calls = 0

        def is_cached(self, stage, params):
            Nothing.calls += 1
            return False

    opt = Optimizer(space, budget=1000.0, n_init=3, seed=1)
    run(opt, 3)
    view = Nothing()
    trial = opt.ask(cache=view)
    assert view.calls > 0
    assert trial.memoized == ()
    assert trial.origin == "eeipu"


def test_failed_trials_count_and_keep_the_optimizer_working(space):
    opt = Optimizer(space, budget=1000.0, n_init=3, seed=2)
    trials = run(opt, 7, fail_at={1, 4})
    failed = [t for t in trials if t.state is TrialState.FAILED]
    assert [t.number for t in failed] == [1, 4]
    assert all(t.objective is None and set(t.costs) == {"prep"} for t in failed)
    assert opt.spent == pytest.approx(sum(t.cost for t in trials))
    assert opt.best_trial.state is TrialState.COMPLETE


def test_expected_cost_fits_its_model_once_per_set_of_told_trials(space, monkeypatch):
    """A parallel study asks expected_cost for every trial it submits: calls between two
    tells share one fitted model (same answers as a fresh fit), a tell refits it."""
    import eeipu._models

    fits = []
    fit_gp = eeipu._models.fit_gp

    def counted(*args, **kwargs):
        fits.append(1)
        return fit_gp(*args, **kwargs)

    monkeypatch.setattr(eeipu._models, "fit_gp", counted)
    opt = Optimizer(space, method="random", budget=1e6, n_init=8, seed=0)
    run(opt, 6)
    a, b = opt.ask(), opt.ask()
    fits.clear()
    cost_a = opt.expected_cost(a)
    n = len(fits)
    assert n > 0
    cost_b = opt.expected_cost(b)
    assert len(fits) == n  # the same told trials: no new fit
    fresh = Optimizer(space, method="random", budget=1e6, n_init=8, seed=0)
    for t in opt.trials:
        fresh.add_trial(t.params, t.objective, t.costs, cached=t.cached)
    assert fresh.expected_cost(b) == pytest.approx(cost_b, rel=1e-9)
    assert fresh.expected_cost(a) == pytest.approx(cost_a, rel=1e-9)
    obj, costs = f(a.params)
    opt.tell(a, objective=obj, costs=costs)
    fits.clear()
    opt.expected_cost(b)
    assert len(fits) == n  # one more told trial: refitted (from the last hyperparameters)


def test_a_failed_stage_does_not_teach_its_cost_model(space):
    """A crashed stage reports the time up to the crash, a lower bound: its cost model leaves
    it out, so regions that crash early do not look cheap. Stages before it keep theirs."""
    told = Optimizer(space, method="random", budget=1e6, n_init=6, seed=0)
    run(told, 6)
    same = Optimizer(space, method="random", budget=1e6, n_init=10, seed=0)
    for t in told.trials:
        same.add_trial(t.params, t.objective, t.costs)
    with_failures = Optimizer(space, method="random", budget=1e6, n_init=10, seed=0)
    for t in told.trials:
        with_failures.add_trial(t.params, t.objective, t.costs)
    for t in told.trials[:3]:
        # crashed 1 ms into prep (whose real cost is > 5): nothing for any cost model
        params = {**t.params, "prep": {**t.params["prep"], "a": 1 - t.params["prep"]["a"]}}
        with_failures.add_trial(params, None, {"prep": 0.001})
    probe = same.ask()
    assert with_failures.expected_cost(probe) == pytest.approx(same.expected_cost(probe))
    assert same.expected_cost(probe) > 5.0
    # a trial that crashed in train: its prep cost is a complete measurement and counts
    t = told.trials[0]
    params = {**t.params, "prep": {**t.params["prep"], "a": 0.123}}
    with_failures.add_trial(params, None, {"prep": 50.0, "train": 0.001})
    assert with_failures.expected_cost(probe) != pytest.approx(same.expected_cost(probe))
    assert with_failures.spent == pytest.approx(same.spent + 0.003 + 50.001)


def test_minimize_direction(space):
    opt = Optimizer(space, method="random", budget=1000.0, n_init=3, seed=0, direction="minimize")
    trials = run(opt, 5)
    assert opt.best_trial.objective == min(t.objective for t in trials)


# ---------------------------------------------------------------- reproducibility
@pytest.mark.parametrize("method", ["eeipu", "ei", "ms_bo", "lambo", "random"])
def test_same_seed_same_trials_different_seed_differs(space, method):
    a = [t.params for t in run(Optimizer(space, method=method, budget=1e3, n_init=3, seed=3), 6)]
    b = [t.params for t in run(Optimizer(space, method=method, budget=1e3, n_init=3, seed=3), 6)]
    c = [t.params for t in run(Optimizer(space, method=method, budget=1e3, n_init=3, seed=4), 6)]
    assert a == b
    assert a[3:] != c[3:] and a[:3] != c[:3]


# ---------------------------------------------------------------- conformance
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_conforms(space, method):
    """Every registered method: valid in-bounds canonical trials, failures tolerated,
    budget respected by the loop, post-warm-up trials attributed to the method."""
    opt = Optimizer(space, method=method, budget=1000.0, n_init=3, seed=5)
    trials = run(opt, 6, fail_at={4})
    assert len(trials) == 6
    for t in trials:
        space.validate(t.params)
        assert space.decode(space.encode(t.params)) == t.params
    assert [t.origin for t in trials[:3]] == ["warmup"] * 3
    assert all(t.origin == method for t in trials[3:])
    if method != "random":
        assert all(t.acq_value is not None and math.isfinite(t.acq_value) for t in trials[3:])


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"method": "nope"},
            "unknown method 'nope'; known methods: ['carbo', 'eeipu', 'ei', 'eips', 'lambo', 'ms_bo', 'ms_carbo', 'random']",
        ),
        ({"budget": 0}, "`budget > 0` must hold, but got budget=0"),
        ({"budget": -3.0}, "`budget > 0` must hold"),
        ({"budget": float("nan")}, "`budget > 0` must hold"),
        ({"n_init": 0}, "`n_init >= 1` must hold"),
        ({"seed": -1}, "`seed` must be a non-negative integer"),
        ({"direction": "up"}, "`direction` must be one of ['maximize', 'minimize'], but got 'up'"),
        ({"method_options": {"bogus": 1}}, "method 'eeipu' does not use option 'bogus'"),
        ({"method_options": {"num_restarts": 0}}, "`num_restarts` must be a positive integer"),
    ],
)
def test_bad_optimizer_arguments(space, kwargs, message):
    with pytest.raises(OptimizerError) as info:
        _Optimizer(space, **kwargs)
    assert message in str(info.value)


def test_space_must_be_a_search_space():
    with pytest.raises(OptimizerError, match=r"use SearchSpace\.from_dict"):
        _Optimizer(SPEC)


@pytest.fixture
def asked(space):
    opt = Optimizer(space, budget=100.0, n_init=2, seed=0)
    trial = opt.ask()
    obj, costs = f(trial.params)
    return opt, trial, obj, costs


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda o, c: (float("nan"), c), "`objective` must be finite, but got nan (trial 0)"),
        (lambda o, c: (float("inf"), c), "`objective` must be finite"),
        (lambda o, c: ("0.5", c), "`objective` must be a number or None"),
        (
            lambda o, c: (o, {**c, "prep": float("nan")}),
            "cost must be a finite number >= 0, but got nan (trial 0, stage 'prep')",
        ),
        (lambda o, c: (o, {**c, "train": -1.0}), "cost must be a finite number >= 0, but got -1.0"),
        (lambda o, c: (o, {**c, "eval": 1.0}), "costs for unknown stage(s) ['eval']"),
        (
            lambda o, c: (o, {"prep": 1.0}),
            "reports the cost of every stage, but ['train', 'tune'] are missing",
        ),
    ],
)
def test_bad_tell_rejected_and_nothing_recorded(asked, mutate, message):
    opt, trial, obj, costs = asked
    bad_obj, bad_costs = mutate(obj, costs)
    with pytest.raises(TellError) as info:
        opt.tell(trial, objective=bad_obj, costs=bad_costs)
    assert message in str(info.value)
    assert opt.trials == [] and opt.spent == 0.0
    opt.tell(trial, objective=obj, costs=costs)  # still pending, can be told properly


def test_tell_never_asked_or_twice(asked):
    opt, trial, obj, costs = asked
    with pytest.raises(TellError, match="trial 5 was never asked"):
        opt.tell(5, objective=obj, costs=costs)
    opt.tell(trial, objective=obj, costs=costs)
    with pytest.raises(TellError, match="trial 0 was already told"):
        opt.tell(trial, objective=obj, costs=costs)


def test_tell_cached_must_name_known_stages(asked):
    opt, trial, obj, costs = asked
    with pytest.raises(TellError, match=r"`cached` names unknown stage\(s\) \['zz'\]"):
        opt.tell(trial, objective=obj, costs=costs, cached=["zz"])


@pytest.mark.parametrize("method", ["eeipu", "ei"])
def test_discrete_space_never_repeats_a_configuration(method):
    """Ints and categoricals make exact repeats likely (seen: 4 distinct configurations in
    20 asks before the guard); a repeat is a wasted trial, so ask() skips them."""
    space = SearchSpace.from_dict(
        {
            "a": {"k": {"type": "int", "low": 0, "high": 3}},
            "b": {
                "c": {"type": "categorical", "choices": ["x", "y", "z"]},
                "n": {"type": "int", "low": 1, "high": 2},
            },
        }
    )  # 24 configurations
    opt = Optimizer(space, method=method, budget=1e6, n_init=3, seed=0)
    asked = []
    for _ in range(20):
        t = opt.ask()
        asked.append(json.dumps(t.params, sort_keys=True))
        p = t.params
        obj = -((p["a"]["k"] - 2) ** 2) + (p["b"]["c"] == "y") + 0.1 * p["b"]["n"]
        opt.tell(t, objective=obj, costs={"a": 1.0, "b": 0.5})
    assert len(set(asked)) == 20


def test_recommend_discounts_a_lucky_draw(space):
    """Noisy objective: of six near-identical configurations (as memoized re-evaluations
    are), one is observed far above the others: the best observed trial is that lucky
    draw, the recommended one is not, and its posterior mean is below the lucky value."""
    torch = pytest.importorskip("torch")
    opt = Optimizer(space, method="random", budget=1e6, n_init=30, seed=3)
    assert opt.recommend() is None
    gen = torch.Generator().manual_seed(0)
    view = HistoryCacheView(opt.space.stages)
    for i in range(30):
        t = opt.ask(cache=view)
        obj, costs = f(t.params)
        opt.tell(t, objective=obj + 0.05 * float(torch.randn(1, generator=gen)), costs=costs)
        if i == 1:  # fewer than 3 trials: the best observed, with its value
            assert opt.recommend() == (opt.best_trial, opt.best_trial.objective)
    base = {"prep": {"a": 0.3, "n": 4}, "train": {"lr": 0.03, "kind": "y"}}
    for k in range(6):
        t = opt.enqueue({**base, "tune": {"b": 0.2 + 0.002 * k}})
        obj, costs = f(t.params)
        noise = 1.0 if k == 3 else 0.05 * float(torch.randn(1, generator=gen))
        opt.tell(t, objective=obj + noise, costs=costs)
    lucky = opt.best_trial
    assert lucky.params["tune"]["b"] == pytest.approx(0.206)
    trial, mean = opt.recommend()
    assert trial.number != lucky.number
    assert mean < lucky.objective - 0.5


def test_incumbent_option(space):
    with pytest.raises(
        OptimizerError, match="`incumbent` must be one of 'observed', 'mean', 'noisy', but got 'x'"
    ):
        Optimizer(space, method_options={**FAST, "incumbent": "x"})
    opt = Optimizer(
        space, budget=40.0, n_init=3, seed=1, method_options={**FAST, "incumbent": "mean"}
    )
    trials = run(opt, 6)
    assert [t.origin for t in trials[3:]] == ["eeipu"] * 3


def test_expected_cost_charges_the_stages_it_will_load_their_load_cost(space):
    """``loads``: stages a trial will load (e.g. ones a trial in flight is computing for it)
    cost their load cost, not their compute cost; the default is ``trial.memoized``."""
    opt = Optimizer(space, budget=1e6, n_init=5, seed=0)
    run(opt, 5)
    probe = opt.enqueue(
        opt.trials[0].params | {"tune": {"b": 0.9}}, cache=HistoryCacheView(space.stages)
    )
    assert probe.memoized == ()  # an empty view: nothing cached
    computed = opt.expected_cost(probe)
    assert opt.expected_cost(probe, loads=()) == computed
    loading = opt.expected_cost(probe, loads=["prep", "train"])
    # Computed: prep 5-6.6 + train 1-1.1 + tune 0.3. Loaded: tune 0.3 + about 1% of the rest.
    assert computed > 6.0
    assert 0.3 < loading < 0.6


def test_cost_weight_scales_the_cost_term(space):
    """``cost_weight`` c: the acquisition is ``log EI + c * eta * log E[1/C]``, so the
    recorded terms of the same ask (same seed, same history) carry c * eta."""
    with pytest.raises(OptimizerError, match="`cost_weight` must be a number >= 0, but got -1"):
        Optimizer(space, method_options={**FAST, "cost_weight": -1})
    terms = {}
    for c in (1.0, 0.5, 0.0):
        opt = Optimizer(
            space, budget=100.0, n_init=4, seed=2, method_options={**FAST, "cost_weight": c}
        )
        run(opt, 4)
        eta = opt.eta
        trial = opt.ask(cache=HistoryCacheView(space.stages, [t.params for t in opt.trials]))
        terms[c] = trial.acq_terms
        assert terms[c]["eta"] == pytest.approx(c * eta)
        assert terms[c]["cost_term"] == pytest.approx(c * eta * terms[c]["log_inv_cost"])
    assert terms[0.0]["cost_term"] == 0.0


def test_overhead_counts_in_the_budget_and_every_expected_cost_not_in_the_stage_gps(space):
    plain = Optimizer(space, method="random", budget=1e6, n_init=4, seed=0)
    charged = Optimizer(space, method="random", budget=1e6, n_init=4, seed=0)
    for _ in range(4):
        a, b = plain.ask(), charged.ask()
        obj, costs = f(a.params)
        plain.tell(a, obj, costs)
        told = charged.tell(b, obj, costs, overhead=0.5)
        assert told.overhead == 0.5 and told.cost == pytest.approx(sum(costs.values()) + 0.5)
        assert told.to_dict()["overhead"] == 0.5
    assert charged.spent == pytest.approx(plain.spent + 2.0)
    probe = plain.ask()
    # The stage cost GPs are the same; the trial is expected to pay the mean overhead too.
    assert charged.expected_cost(probe) == pytest.approx(plain.expected_cost(probe) + 0.5)
    replayed = Optimizer(space, method="random", budget=1e6, n_init=4, seed=0)
    for t in charged.trials:
        replayed.add_trial(t.params, t.objective, t.costs, overhead=t.overhead)
    assert replayed.spent == pytest.approx(charged.spent)
    for bad in (-1.0, float("nan"), True, "1"):
        with pytest.raises(TellError, match="`overhead` must be a finite number >= 0"):
            charged.tell(charged.ask(), 0.0, costs, overhead=bad)


def test_told_overhead_is_charged_to_every_candidate_in_the_acquisition(space):
    """A trial that loads nearly everything is nearly free in stage costs (E[1/C] >> 1 with
    these costs) but not once each trial pays a measured overhead: with an overhead of 1
    told, E[1/(C + 1)] <= 1 for every candidate, cached prefix or not."""
    free, charged = (
        Optimizer(space, budget=1e6, n_init=5, seed=3, method_options=FAST) for _ in range(2)
    )
    for opt, overhead in ((free, 0.0), (charged, 1.0)):
        view = HistoryCacheView(space.stages)
        for _ in range(6):
            t = opt.ask(cache=view)
            obj, costs = f(t.params)
            costs = {s: (0.01 if s in t.memoized else c) for s, c in costs.items()}
            opt.tell(t, obj, costs, overhead=overhead)
            view.add(t.params)
    terms = {}
    for name, opt in (("free", free), ("charged", charged)):
        trial = opt.ask(cache=HistoryCacheView(space.stages, [t.params for t in opt.trials]))
        # The winner's cost term, and the best fresh candidate's of the same ask.
        terms[name] = (trial.acq_terms["log_inv_cost"], trial.acq_terms["log_inv_cost_fresh"])
    assert max(terms["charged"]) <= 0.0, terms
    # Without it, a candidate reusing the dear first stage looks cheaper than 1.
    assert max(terms["free"]) > 0.0, terms


def test_every_model_fit_runs_on_num_threads(space, monkeypatch):
    """ask, expected_cost and recommend fit GPs with ``num_threads`` torch threads (spinning
    threads fight for the cores of a busy machine: 10x+ slower fits), then restore torch's."""
    import torch

    import eeipu._models
    import eeipu._parts

    seen = []
    fit_gp = eeipu._models.fit_gp

    def recording(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return fit_gp(*args, **kwargs)

    for module in (eeipu._models, eeipu._methods, eeipu._parts, eeipu._optimizer):
        monkeypatch.setattr(module, "fit_gp", recording, raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        opt = Optimizer(space, method="eeipu", budget=1e6, n_init=5, seed=0, num_threads=1)
        run(opt, 6)  # the sixth ask fits models
        opt.expected_cost(opt.ask())
        opt.recommend()
        assert len(seen) >= 3 and set(seen) == {1}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
