"""EEIPU records what a proposal's acquisition is made of, beside the best fresh candidate's
(issue 12): the quality term log EI, the cost term, and the same for the best candidate
that reuses no cached prefix."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from scipy.stats import norm

from eeipu import (
    GittinsIndex,
    HistoryCacheView,
    Method,
    Optimizer,
    Prefix,
    Proposal,
    SearchSpace,
    make_method,
)
from eeipu._methods import acquisition_terms

SPACE = SearchSpace.from_dict(
    {s: {"x": {"type": "float", "low": 0.0, "high": 1.0}} for s in ("a", "b", "c")}
)
# The first stage dominates the cost, so reusing its cached output is tempting.
COSTS = {"a": 20.0, "b": 1.0, "c": 1.0}
OPTIONS = {"num_restarts": 2, "raw_samples": 32, "prefix_raw_samples": 16, "maxiter": 30}


def objective(params):
    return -sum((params[s]["x"] - c) ** 2 for s, c in zip("abc", (0.3, 0.6, 0.4), strict=True))


class Spy(Method):
    """EEIPU (with ``options``), recording each proposal and the acquisition it was chosen by
    (``seen``), and the observations of each ask (``obs``)."""

    name = "spy"
    uses_prefixes = True

    def __init__(self, **options):
        self.inner = make_method("eeipu", warm_start=False, **OPTIONS, **options)
        self.seen = []
        self.obs = []

    def propose(self, obs):
        proposal = self.inner.propose(obs)
        self.seen.append((proposal, self.inner.acquisition(obs)))
        self.obs.append(obs)
        return proposal


def study(method, n=12, n_init=6, seed=2):
    opt = Optimizer(SPACE, method=method, budget=1e6, n_init=n_init, seed=seed)
    view = HistoryCacheView(SPACE.stages)
    for _ in range(n):
        t = opt.ask(cache=view)
        hits = list(t.memoized)
        costs = {s: (0.1 if s in hits else c) for s, c in COSTS.items()}
        opt.tell(t, objective=objective(t.params), costs=costs, cached=hits)
        view.add(t.params)
    return opt


def test_terms_split_the_acquisition_and_a_reusing_winner_beats_the_best_fresh_one():
    spy = Spy()
    study(spy)
    reused = 0
    for winner, acq in spy.seen:
        candidates = (winner, *winner.alternatives)
        fresh = next(p for p in candidates if p.prefix is None)  # best first: the best fresh
        for p in candidates:
            terms = p.acq_terms
            delta = 0 if p.prefix is None else p.prefix.n_stages
            assert terms["prefix_stages"] == delta
            assert terms["log_ei"] + terms["cost_term"] == pytest.approx(p.acq_value, abs=1e-9)
            # Each term as the acquisition computes it, at the point that runs.
            X = p.x.view(1, 1, -1)
            acq.n_cached = delta
            with torch.no_grad():
                assert terms["log_ei"] == pytest.approx(float(acq.log_ei(X)), abs=1e-6)
                lic = float(acq.log_inverse_cost(X))
            assert terms["log_inv_cost"] == pytest.approx(lic, abs=1e-6)
            assert terms["cost_term"] == pytest.approx(acq.eta * lic, abs=1e-6)
            assert terms["eta"] == acq.eta
            for key in ("log_ei", "cost_term", "log_inv_cost"):
                assert terms[f"{key}_fresh"] == fresh.acq_terms[key]
        w = winner.acq_terms
        # It won: its acquisition is at least the best fresh candidate's (its log EI need not be).
        assert w["log_ei"] + w["cost_term"] >= w["log_ei_fresh"] + w["cost_term_fresh"] - 1e-9
        if winner.prefix is not None:
            reused += 1
            # What reuse buys: a cheaper expected cost than the fresh candidate's.
            assert w["log_inv_cost"] > w["log_inv_cost_fresh"]
    assert reused >= 2, "the study should reuse a prefix, or this test checks nothing"


def test_give_up_caps_the_log_ei_a_proposal_gives_up_against_the_best_cost_blind_one():
    free = Spy()
    study(free, n=14)
    gave = [w.acq_terms["log_ei_fresh"] - w.acq_terms["log_ei"] for w, _ in free.seen]
    assert max(gave) > 0.5, "uncapped, some winner should give up more than the cap below"
    capped = Spy(give_up=0.5)
    study(capped, n=14)
    for winner, _ in capped.seen:
        w = winner.acq_terms
        assert w["log_ei"] >= w["log_ei_best"] - 0.5 - 1e-9
        # The best is the cost-blind search's, at least every scored candidate's log EI.
        scored = [p.acq_terms["log_ei"] for p in (winner, *winner.alternatives)]
        assert w["log_ei_best"] == pytest.approx(max(scored), abs=1e-9)
        # Within the cap, the acquisition still decides.
        eligible = [
            p
            for p in (winner, *winner.alternatives)
            if p.acq_terms["log_ei"] >= w["log_ei_best"] - 0.5
        ]
        assert winner.acq_value == max(p.acq_value for p in eligible)
    assert any(w.prefix is not None for w, _ in capped.seen), "the cap should not forbid reuse"


def test_min_saving_keeps_the_best_cost_blind_candidate_unless_another_saves_enough():
    spy = Spy(min_saving=3.0)
    study(spy, n=14)
    deviated = 0
    for winner, _ in spy.seen:
        w = winner.acq_terms
        best = max((winner, *winner.alternatives), key=lambda p: p.acq_terms["log_ei"])
        assert best.acq_terms["log_ei"] == pytest.approx(w["log_ei_best"], abs=1e-6)
        if winner is not best:
            deviated += 1
            assert w["log_inv_cost"] - best.acq_terms["log_inv_cost"] >= math.log(3.0) - 1e-9
    assert deviated >= 1, "a 20x dearer first stage: reusing it saves enough to deviate"
    # A saving no candidate reaches: every winner is the best cost-blind candidate.
    never = Spy(min_saving=1e9)
    study(never, n=9)
    for winner, _ in never.seen:
        assert winner.acq_terms["log_ei"] == pytest.approx(
            winner.acq_terms["log_ei_best"], abs=1e-6
        )


def test_trials_carry_the_terms_to_their_records_and_through_enqueue():
    opt = study("eeipu", n=9, n_init=6)
    trials = opt.trials
    for t in trials[:6]:
        assert t.acq_terms is None and "acq_terms" not in t.to_dict()
    for t in trials[6:]:
        assert t.origin == "eeipu"
        terms = t.to_dict()["acq_terms"]
        assert terms == t.acq_terms
        assert terms["log_ei"] + terms["cost_term"] == pytest.approx(t.acq_value, abs=1e-9)
        assert all(math.isfinite(v) for v in terms.values())
    # A journal replays an interrupted trial with what ask said of it.
    again = opt.enqueue(trials[-1].params, origin="eeipu", acq_terms=trials[-1].acq_terms)
    assert again.acq_terms == trials[-1].acq_terms
    told = opt.tell(again, objective=0.0, costs=COSTS)
    assert told.to_dict()["acq_terms"] == trials[-1].acq_terms
    # Methods without a prefix pool record nothing (every candidate is fresh).
    assert all(t.acq_terms is None for t in study("ms_carbo", n=8, n_init=6).trials)


def _fake_acq(log_inv_cost, eta):
    calls = []

    def log_inverse_cost(X):
        calls.append((X.shape, acq.n_cached.tolist()))
        return torch.tensor(log_inv_cost, dtype=torch.double)

    acq = SimpleNamespace(
        cost_model=object(), eta=eta, n_cached=0, uses_cost=eta != 0.0, success=None
    )
    acq.log_inverse_cost = log_inverse_cost
    return acq, calls


def test_acquisition_terms_by_hand():
    """Three scored proposals, best first: a 2-stage reuser, a fresh one, a 1-stage reuser."""
    pre = [Prefix(k, torch.zeros(k), {}, 0.0) for k in (1, 2)]
    ranked = [
        Proposal(torch.zeros(3), pre[1], -1.0),
        Proposal(torch.ones(3), None, -2.5),
        Proposal(torch.ones(3), pre[0], -3.0),
    ]
    acq, calls = _fake_acq([0.0, -3.0, -1.0], eta=0.5)
    out = acquisition_terms(acq, ranked)
    assert calls == [((3, 1, 3), [2, 0, 1])]  # one batched call, each at its delta
    assert [(p.x.sum(), p.prefix, p.acq_value) for p in out] == [
        (p.x.sum(), p.prefix, p.acq_value) for p in ranked
    ]
    fresh = {"log_ei_fresh": -1.0, "cost_term_fresh": -1.5, "log_inv_cost_fresh": -3.0}
    assert out[0].acq_terms == {
        "log_ei": -1.0,
        "cost_term": 0.0,
        "log_inv_cost": 0.0,
        "eta": 0.5,
        "prefix_stages": 2,
        **fresh,
    }
    assert out[1].acq_terms["log_ei"] == -1.0 and out[1].acq_terms["prefix_stages"] == 0
    assert out[2].acq_terms["log_ei"] == -2.5 and out[2].acq_terms["cost_term"] == -0.5
    assert out[2].acq_terms["log_ei_fresh"] == -1.0
    # eta = 0 (budget spent): the acquisition is plain log EI, the cost term 0.
    acq, _ = _fake_acq([0.0, -3.0, -1.0], eta=0.0)
    zero = acquisition_terms(acq, ranked)
    assert [p.acq_terms["log_ei"] for p in zero] == [-1.0, -2.5, -3.0]
    assert [p.acq_terms["log_inv_cost"] for p in zero] == [0.0, -3.0, -1.0]
    # No fresh candidate scored: no comparison to make.
    acq, _ = _fake_acq([0.0], eta=1.0)
    (only,) = acquisition_terms(acq, ranked[:1])
    assert "log_ei_fresh" not in only.acq_terms


# The Pandora's box Gittins index (tradeoff="gittins"): its terms, its equation, its λ.


def index_equation(acq, X):
    """Both sides of the Gittins index's equation at ``X`` (``batch x 1 x d``), one pair per
    point: p·E[max(f - g, 0)] for f ~ N(mu, sigma^2), in closed form with scipy, and λ·C
    (p = P(success), 1 when failures are not modelled)."""
    with torch.no_grad():
        g = acq(X)
        post = acq.model.posterior(X)
        mu = (post.mean.reshape(-1) - acq.best_f) / acq.scale
        sigma = post.variance.sqrt().reshape(-1) / acq.scale
        cost = torch.exp(-acq.log_inverse_cost(X))
        p = acq.log_success(X).exp()
    sides = []
    for m, s, gi, c, pi in zip(*(t.tolist() for t in (mu, sigma, g, cost, p)), strict=True):
        z = (m - gi) / s
        sides.append((pi * s * (norm.pdf(z) + z * norm.cdf(z)), acq.lam * c))
    return sides


def test_the_index_solves_its_equation_and_a_cached_prefix_raises_it():
    spy = Spy(tradeoff="gittins")
    study(spy, n=9, seed=1)
    reused = 0
    for winner, acq in spy.seen:
        assert isinstance(acq, GittinsIndex) and acq.lam > 0
        X = torch.rand(
            5, 1, SPACE.dim, dtype=torch.double, generator=torch.Generator().manual_seed(0)
        )
        for delta in (0, 1, 2):
            acq.n_cached = delta
            for ei, lam_c in index_equation(acq, X):
                assert ei == pytest.approx(lam_c, rel=1e-6)
        # The same point with its first stage cached is cheaper, so its index is higher.
        acq.n_cached = 0
        fresh = acq(X)
        acq.n_cached = 1
        assert bool((acq(X) > fresh).all())
        terms = winner.acq_terms
        assert terms["index"] == pytest.approx(winner.acq_value)
        assert terms["lam"] == acq.lam
        if "index_fresh" in terms:
            assert terms["index"] >= terms["index_fresh"] - 1e-9  # the winner has the top index
        if winner.prefix is not None:
            reused += 1
            assert terms["log_inv_cost"] > terms["log_inv_cost_fresh"]
    assert reused >= 1, "the study should reuse a prefix, or this test checks less"


def test_lambda_is_half_the_best_ei_per_unit_cost_so_that_point_indexes_above_the_incumbent():
    spy = Spy(tradeoff="gittins")
    study(spy, n=8, seed=1)
    raw = torch.rand(64, SPACE.dim, dtype=torch.double, generator=torch.Generator().manual_seed(3))
    acq = spy.seen[-1][1]
    cal = GittinsIndex.calibrated(acq.model, acq.best_f, acq.scale, acq.cost_model, raw)
    with torch.no_grad():
        post = cal.model.posterior(raw.unsqueeze(-2))
        mu = (post.mean.reshape(-1) - cal.best_f) / cal.scale
        sigma = post.variance.sqrt().reshape(-1) / cal.scale
        z = mu / sigma
        ei = sigma * torch.from_numpy(norm.pdf(z.numpy()) + z.numpy() * norm.cdf(z.numpy()))
        eipu = ei * torch.exp(cal.log_inverse_cost(raw.unsqueeze(-2)))
        best = int(eipu.argmax())
        assert cal.lam == pytest.approx(float(eipu.max()) / 2, rel=1e-6)
        assert float(cal(raw[best].view(1, 1, -1))) > 0.0  # above the incumbent
