from __future__ import annotations

import math

import pytest
import torch

from eeipu import SearchSpace, SearchSpaceError

SPEC = {
    "prep": {
        "k": {"type": "int", "low": 2, "high": 64, "log": True},
        "scale": {"type": "categorical", "choices": ["std", "minmax", None]},
    },
    "train": {
        "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
        "depth": {"type": "int", "low": 1, "high": 12},
        "frac": {"type": "float", "low": -1.5, "high": 2.5},
        "model": {"type": "categorical", "choices": ["rf", "gbm", 3, True]},
    },
}


def test_order_and_dims():
    space = SearchSpace.from_dict(SPEC)
    assert space.stages == ("prep", "train")
    assert space.dim == 6
    assert [p.name for p in space.params] == ["k", "scale", "lr", "depth", "frac", "model"]
    assert space.prefix_dim(0) == 0 and space.prefix_dim(1) == 2 and space.prefix_dim(2) == 6
    assert SearchSpace.from_dict(space.to_dict()) == space


def test_decode_gives_canonical_types():
    space = SearchSpace.from_dict(SPEC)
    for u in torch.rand(
        200, space.dim, generator=torch.Generator().manual_seed(0), dtype=torch.double
    ):
        p = space.decode(u)
        assert type(p["prep"]["k"]) is int and 2 <= p["prep"]["k"] <= 64
        assert type(p["train"]["depth"]) is int
        assert p["prep"]["scale"] in ("std", "minmax", None)
        assert any(
            p["train"]["model"] is c or p["train"]["model"] == c for c in ("rf", "gbm", 3, True)
        )
        assert type(p["train"]["lr"]) is float and 1e-4 <= p["train"]["lr"] <= 1e-1


def test_round_trip_is_bit_identical_for_decoded_values():
    """decode(encode(v)) == v exactly for every canonical value, so cache keys never drift."""
    space = SearchSpace.from_dict(SPEC)
    gen = torch.Generator().manual_seed(1)
    for u in torch.rand(500, space.dim, generator=gen, dtype=torch.double):
        p = space.decode(u)
        again = space.decode(space.encode(p))
        assert again == p
        for stage in p:
            for name, v in p[stage].items():
                assert type(again[stage][name]) is type(v)
                if isinstance(v, float):
                    assert math.copysign(1, v) == math.copysign(1, again[stage][name])


@pytest.mark.parametrize(
    "value",
    [1e-4, 1e-1, 0.001, 0.0123],
)
def test_round_trip_declared_and_nice_floats(value):
    space = SearchSpace.from_dict(
        {"s": {"lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}}}
    )
    assert space.decode(space.encode({"s": {"lr": value}}))["s"]["lr"] == value


def test_bounds_are_reachable_and_encode_uses_declared_bounds():
    space = SearchSpace.from_dict({"s": {"x": {"type": "float", "low": 2.0, "high": 4.0}}})
    assert space.decode([0.0])["s"]["x"] == 2.0
    assert space.decode([1.0])["s"]["x"] == 4.0
    assert float(space.encode({"s": {"x": 3.0}})[0]) == 0.5
    ints = SearchSpace.from_dict({"s": {"n": {"type": "int", "low": 0, "high": 3}}})
    assert [ints.decode([u])["s"]["n"] for u in (0.0, 0.2, 0.5, 0.99, 1.0)] == [0, 1, 2, 3, 3]


def test_categorical_bool_and_int_are_distinct():
    space = SearchSpace.from_dict({"s": {"c": {"type": "categorical", "choices": [1, True, "1"]}}})
    for choice in (1, True, "1"):
        back = space.decode(space.encode({"s": {"c": choice}}))["s"]["c"]
        assert back == choice and type(back) is type(choice)


BAD = [
    ({"s": {"x": {"type": "double", "low": 0, "high": 1}}}, "`type` must be one of", "'x'"),
    (
        {"s": {"x": {"type": "float", "low": 5, "high": 1}}},
        "`low < high` must hold, but got low=5, high=1",
        "'x'",
    ),
    ({"s": {"x": {"type": "float", "low": 1, "high": 1}}}, "`low < high`", "'x'"),
    (
        {"s": {"x": {"type": "float", "low": 0, "high": 1, "log": True}}},
        "`low > 0` must hold when log=true",
        "'s'",
    ),
    ({"s": {"x": {"type": "int", "low": -2, "high": 8, "log": True}}}, "`low > 0`", "'x'"),
    ({"s": {"x": {"type": "int", "low": 0.5, "high": 8}}}, "must be an integer", "'x'"),
    ({"s": {"c": {"type": "categorical", "choices": []}}}, "`choices` must not be empty", "'c'"),
    ({"s": {"c": {"type": "categorical", "choices": ["a", "a"]}}}, "must be distinct", "'c'"),
    ({"s": {"c": {"type": "categorical"}}}, "needs `choices`", "'c'"),
    ({"s": {"x": {"type": "float", "low": 0}}}, "needs `high`", "'x'"),
    (
        {"s": {"x": {"type": "float", "low": 0, "high": 1, "step": 2}}},
        "unknown key(s) ['step']",
        "'x'",
    ),
    ({"s": {"x": {"type": "float", "low": 0, "high": float("inf")}}}, "finite number", "'x'"),
    (
        {"s": {"x": {"type": "float", "low": 0, "high": 1, "log": "yes"}}},
        "`log` must be true or false",
        "'x'",
    ),
    ({"s": {}}, "needs at least one parameter in some stage", "['s']"),
    ({"load": {}, "evaluate": {}}, "add one to a stage's space", "['load', 'evaluate']"),
    ({}, "non-empty mapping", ""),
    ({"s": {"x": 3}}, "must be a mapping with a `type`", "'x'"),
]


@pytest.mark.parametrize(("spec", "message", "where"), BAD)
def test_invalid_specs_raise_clear_errors(spec, message, where):
    with pytest.raises(SearchSpaceError) as info:
        SearchSpace.from_dict(spec)
    text = str(info.value)
    assert message in text
    assert where in text
    assert "\n" not in text


def test_duplicate_parameter_names_rejected():
    from eeipu import FloatParam

    with pytest.raises(SearchSpaceError, match=r"duplicate parameter name\(s\) \['x'\]"):
        SearchSpace({"s": [FloatParam("s", "x", 0, 1), FloatParam("s", "x", 0, 2)]})


def test_encode_rejects_bad_values():
    space = SearchSpace.from_dict(SPEC)
    good = space.decode(torch.full((space.dim,), 0.5, dtype=torch.double))
    bad = {**good, "train": {**good["train"], "lr": 5.0}}
    with pytest.raises(SearchSpaceError, match=r"lie in \[0.0001, 0.1\].*'lr'"):
        space.encode(bad)
    with pytest.raises(SearchSpaceError, match="unknown parameter"):
        space.encode({**good, "train": {**good["train"], "zzz": 1}})
    with pytest.raises(SearchSpaceError, match="missing parameters of stage 'train'"):
        space.encode({"prep": good["prep"]})


FLOAT = {"type": "float", "low": 0.0, "high": 1.0, "log": False}


@pytest.mark.parametrize(
    "spec",
    [
        {"load": {}, "prep": {"a": FLOAT}, "train": {"b": FLOAT}},  # first stage fixed
        {"prep": {"a": FLOAT}, "export": {}, "train": {"b": FLOAT}},  # middle
        {"prep": {"a": FLOAT}, "train": {"b": FLOAT}, "evaluate": {}},  # last
        {"load": {}, "clean": {}, "train": {"b": FLOAT}, "evaluate": {}},  # one tuned stage
    ],
    ids=["first", "middle", "last", "one_tuned"],
)
def test_stages_without_parameters(spec):
    """A stage without parameters (fixed loading, export, evaluation) is a stage: its
    columns are an empty slice and its parameters ``{}``, everywhere."""
    space = SearchSpace.from_dict(spec)
    fixed = [s for s in space.stages if not spec[s]]
    assert space.stages == tuple(spec)
    assert space.dim == sum(len(v) for v in spec.values())
    for s in fixed:
        k = space.stages.index(s)
        assert space.stage_params(s) == ()
        assert space.stage_slices[k].start == space.stage_slices[k].stop
        assert space.prefix_dim(k + 1) == space.prefix_dim(k)
    assert space.prefix_dim(len(space.stages)) == space.dim
    assert space.to_dict() == spec
    assert SearchSpace.from_dict(space.to_dict()) == space
    x = torch.rand(space.dim, dtype=torch.double, generator=torch.Generator().manual_seed(1))
    params = space.decode(x)
    assert list(params) == list(space.stages)
    assert all(params[s] == {} for s in fixed)
    space.validate(params)
    assert space.decode(space.encode(params)) == params
    assert torch.equal(space.canonicalize(space.encode(params)), space.encode(params))
    with pytest.raises(SearchSpaceError, match="missing parameters of stage"):
        space.validate({s: v for s, v in params.items() if s != fixed[0]})
    with pytest.raises(SearchSpaceError, match="unknown parameter"):
        space.validate({**params, fixed[0]: {"a": 0.5}})
