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
    assert (method.search.maxiter, method.quality.incumbent) == (7, "noisy")
    assert method.prefixes is not None  # memoizing


# The factory whose keyword parameters each built-in's options are, and the defaults the
# method sets otherwise (eeipu/_options.py declares them without torch). The cost-aware EI
# family composes its parts from the declared options themselves (nothing to drift).
_FACTORIES = {
    "lambo": ("LaMBO", {}),
    "ms_bo": ("CascadeBO", {}),
    "random": ("RandomSearch", {}),
}


@pytest.mark.parametrize("name", sorted(_FACTORIES))
def test_declared_options_match_the_factory_signature(name):
    """The torch-free declarations (config validation reads them) follow the factories: same
    names, annotations and defaults. A parameter added to a factory must be declared there
    too."""
    import eeipu

    factory, defaults = _FACTORIES[name]
    declared = METHOD_OPTIONS[name]
    names = [f.name for f in dataclasses.fields(declared)]
    derived = eeipu.options_type(getattr(eeipu, factory), *names, **defaults)
    as_list = [(f.name, f.type, f.default) for f in dataclasses.fields(declared)]
    assert as_list == [(f.name, f.type, f.default) for f in dataclasses.fields(derived)]
    whole = eeipu.options_type(getattr(eeipu, factory))  # every keyword parameter is an option
    assert names == [f.name for f in dataclasses.fields(whole)]
    assert set(METHOD_OPTIONS) == set(METHODS)


def test_options_and_a_space_are_checked_without_torch():
    import subprocess
    import sys

    code = (
        "import sys, eeipu\n"
        "eeipu.method_options('eeipu', maxiter=3)\n"
        "eeipu.SearchSpace.from_dict({'s': {'x': {'type': 'float', 'low': 0, 'high': 1}}})\n"
        "sys.exit('torch' in sys.modules)\n"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
