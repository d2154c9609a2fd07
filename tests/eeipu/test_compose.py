"""The recipe of docs/architecture.md ("A new optimization method"), followed through the
public seams only: a toy method composed of existing parts with another trade-off, its
typed options, registered, then run with ask/tell."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from eeipu import (
    METHOD_OPTIONS,
    METHODS,
    AcquisitionSearch,
    CostAwareEI,
    CostTerm,
    Gittins,
    HistoryCacheView,
    ModelFailures,
    Optimizer,
    OptimizerError,
    PrefixSearch,
    Quality,
    SearchSpace,
    make_method,
    register_method,
)

SPACE = SearchSpace.from_dict(
    {
        "prep": {"a": {"type": "float", "low": 0.0, "high": 1.0}},
        "train": {"b": {"type": "float", "low": 0.0, "high": 1.0}},
    }
)
COSTS = {"prep": 8.0, "train": 1.0}


# 1. The method's typed options: the YAML's `options:` keys, with their defaults.
@dataclass(frozen=True, kw_only=True)
class GittinsEEIPUOptions:
    num_restarts: int = 2
    raw_samples: int = 32
    maxiter: int = 30
    mc_samples: int = 32
    prefix_raw_samples: int = 16
    incumbent: str = "observed"


# 2. The composition: EEIPU's parts, the Gittins index as the trade-off.
def gittins_eeipu(**options) -> CostAwareEI:
    o = GittinsEEIPUOptions(**options)
    return CostAwareEI(
        quality=Quality(o.incumbent),
        cost=CostTerm(per_stage=True),
        tradeoff=Gittins(),
        failures=ModelFailures(),
        search=AcquisitionSearch.of(o),
        prefixes=PrefixSearch.of(o),
    )


@pytest.fixture
def registered():
    # 3. Registration (a plain decorator at import time in a real module).
    register_method("gittins_eeipu", GittinsEEIPUOptions)(gittins_eeipu)
    yield "gittins_eeipu"
    METHODS.pop("gittins_eeipu")
    METHOD_OPTIONS.pop("gittins_eeipu")


def objective(params):
    return -((params["prep"]["a"] - 0.3) ** 2) - (params["train"]["b"] - 0.7) ** 2


def test_a_composed_method_is_registered_and_runs_ask_tell(registered):
    opt = Optimizer(SPACE, method=registered, budget=1e6, n_init=4, seed=0)
    view = HistoryCacheView(SPACE.stages)
    for _ in range(7):
        trial = opt.ask(cache=view)
        costs = {s: (0.01 if s in trial.memoized else c) for s, c in COSTS.items()}
        opt.tell(trial, objective=objective(trial.params), costs=costs)
        view.add(trial.params)
    told = opt.trials
    assert [t.origin for t in told] == ["warmup"] * 4 + [registered] * 3
    assert all("index" in t.acq_terms for t in told[4:])  # the Gittins index's terms
    assert any(t.memoized for t in told[4:]), "the prefix pool was never reused"


def test_its_options_are_typed_like_the_built_ins(registered):
    method = make_method(registered, maxiter=5)
    assert method.search.maxiter == 5 and method.prefixes is not None
    with pytest.raises(OptimizerError, match="does not use option 'tradeoff'"):
        make_method(registered, tradeoff="ratio")
