"""The Pandora's box Gittins index as EEIPU's cost trade-off (issue 12, ``tradeoff='gittins'``):
the stable log h and its inverse it is built on, and its option checks. Its equation, λ and
memoization-awareness in a study: tests/eeipu/test_acq_terms.py."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import norm

from eeipu import CostAwareEI, Gittins, GittinsIndex, OptimizerError, make_method
from eeipu._acquisition import log_h, log_h_inverse


def test_log_h_matches_the_closed_form_and_stays_finite_far_in_the_tail():
    u = torch.tensor([-6.0, -3.0, -1.5, -1.0, -0.3, 0.0, 0.7, 3.0, 40.0], dtype=torch.double)
    want = [math.log(norm.pdf(x) + x * norm.cdf(x)) for x in u.tolist()]
    assert log_h(u).tolist() == pytest.approx(want, rel=1e-10)
    # Where φ(u) + u·Φ(u) underflows or cancels, log h(u) ≈ log φ(u) - 2 log|u| (Mills).
    far = torch.tensor([-20.0, -39.0], dtype=torch.double)
    approx = -0.5 * far**2 - 0.5 * math.log(2 * math.pi) - 2 * far.abs().log()
    assert torch.allclose(log_h(far), approx, atol=0.01)
    assert bool((log_h(far) > -800).all())


def test_log_h_inverse_round_trips_with_the_implicit_gradient():
    u = torch.tensor([-30.0, -8.0, -2.0, -1.0, 0.0, 1.5, 25.0], dtype=torch.double)
    t = log_h(u).detach().requires_grad_(True)
    back = log_h_inverse(t)
    assert torch.allclose(back, u, atol=1e-9)
    back.sum().backward()
    # du/dt = 1 / (d log h / du) = h(u) / Φ(u)
    want = torch.exp(log_h(u) - torch.special.log_ndtr(u))
    assert torch.allclose(t.grad, want, rtol=1e-6)


def test_bad_tradeoff_options_are_rejected_with_the_key_named():
    with pytest.raises(OptimizerError, match="`tradeoff` must be one of 'ratio', 'gittins'"):
        make_method("eeipu", tradeoff="gittin")
    with pytest.raises(OptimizerError, match="`tradeoff='gittins'` needs a cost model"):
        CostAwareEI(cost=None, tradeoff=Gittins())
    with pytest.raises(OptimizerError, match="method 'ei' does not use option 'tradeoff'"):
        make_method("ei", tradeoff="gittins")
    with pytest.raises(ValueError, match="positive, finite `lam`"):
        GittinsIndex(None, 0.0, 1.0, None, lam=0.0)  # type: ignore[arg-type]
