"""Each method has its own typed options: an option it does not use is an error that lists
the ones it does (issue 29), where baselines used to accept options they ignored."""

from __future__ import annotations

import dataclasses

import pytest

from eeipu import METHOD_OPTIONS, METHODS, OptimizerError, make_method, method_options


@pytest.mark.parametrize(
    ("method", "option", "message"),
    [
        (
            "ei",
            "prefix_starts",
            "method 'ei' does not use option 'prefix_starts'; its options are ['failures', "
            "'incumbent', 'maxiter', 'mc_samples', 'num_restarts', 'raw_samples', 'warm_start']",
        ),
        ("carbo", "cost_inputs", "method 'carbo' does not use option 'cost_inputs'; its"),
        ("ms_carbo", "prefix_restarts", "method 'ms_carbo' does not use option 'prefix_restarts'"),
        ("lambo", "mc_samples", "method 'lambo' does not use option 'mc_samples'; its options"),
        ("lambo", "prefix_starts", "method 'lambo' does not use option 'prefix_starts'"),
        ("ms_bo", "prefix_restarts", "method 'ms_bo' does not use option 'prefix_restarts'"),
        ("random", "num_restarts", "method 'random' does not use option 'num_restarts'; it takes"),
        ("eeipu", "num_restart", "(did you mean 'num_restarts'?); its options are ['cost_inputs'"),
    ],
)
def test_an_option_the_method_does_not_use_is_refused(method, option, message):
    with pytest.raises(OptimizerError) as info:
        make_method(method, **{option: 1})
    assert message in str(info.value)


def test_every_method_has_typed_options_its_factory_takes():
    for name in METHODS:
        kind = METHOD_OPTIONS[name]
        assert dataclasses.is_dataclass(kind), name
        method = make_method(
            name, **{f.name: getattr(kind(), f.name) for f in dataclasses.fields(kind)}
        )
        assert method.name == name


def test_typed_options_hold_the_method_defaults():
    eeipu = method_options("eeipu", num_restarts=2)
    assert (eeipu.num_restarts, eeipu.incumbent, eeipu.failures) == (2, "noisy", "model")
    ei = method_options("ei")
    assert (ei.incumbent, ei.failures) == ("observed", "impute")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ei.maxiter = 3
    method = make_method("eeipu", maxiter=7)
    assert (method.maxiter, method.incumbent, method.memoize) == (7, "noisy", True)
