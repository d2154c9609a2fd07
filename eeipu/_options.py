"""Method names and their typed options, without torch: all that a configuration needs to be
checked (``flows`` validates a study's ``optimizer`` section before anything imports torch).

:data:`METHOD_OPTIONS` maps each method name to the frozen dataclass of the options its
factory reads (None: any keyword). The built-in methods are declared here; their factories
(``eeipu._methods``, ``_lambo``, ``_ms_bo``) register under the same names with these
classes: the cost-aware EI family composes its parts from them, and
``tests/eeipu/test_method_options.py`` checks that ``lambo``'s and ``ms_bo``'s still match
their classes' signatures. :func:`eeipu.register_method` adds a method to both registries.

Example:
    >>> options = method_options("ms_bo", maxiter=50)
    >>> options
    CascadeBOOptions(num_restarts=8, raw_samples=256, mc_samples=64, maxiter=50, warm_start=True)
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from eeipu._errors import OptimizerError

__all__ = ["METHOD_OPTIONS", "method_options", "options_used_by", "unknown_option_hint"]


# The acquisition search that the EI methods and the cascade share: multi-start L-BFGS
# (num_restarts starts from raw_samples screened points, maxiter iterations), warm-started
# GP fits, and mc_samples quasi-MC draws, whose default each method sets, since they sample
# different things (the cost posterior; the cascade of stage outputs).
@dataclass(frozen=True, kw_only=True)
class _SearchOptions:
    num_restarts: int = 8
    raw_samples: int = 256
    mc_samples: int
    maxiter: int = 200
    warm_start: bool = True


# Each cost-aware EI method's options are those its composition reads (eeipu._methods,
# ``_ei`` ... ``_eeipu``): prefix-pool settings only where there is a prefix pool (eeipu),
# cost settings only where there is a cost model.
@dataclass(frozen=True, kw_only=True)
class EIOptions(_SearchOptions):
    mc_samples: int = 128
    incumbent: str = "observed"
    failures: str = "impute"


@dataclass(frozen=True, kw_only=True)
class _TotalCostOptions(EIOptions):
    cost_weight: float = 1.0
    tradeoff: str = "ratio"


@dataclass(frozen=True, kw_only=True)
class EIPSOptions(_TotalCostOptions):
    pass


@dataclass(frozen=True, kw_only=True)
class CArBOOptions(_TotalCostOptions):
    pass


@dataclass(frozen=True, kw_only=True)
class MSCArBOOptions(_TotalCostOptions):
    cost_inputs: str = "prefix"
    load_eps: float | None = None


# EEIPU's quality term is noisy EI (qLogNEI) unless told otherwise: measured against the
# observed incumbent on the six synthetic problems (docs/how-eeipu-works.md, "Quality term").
@dataclass(frozen=True, kw_only=True)
class EEIPUOptions(MSCArBOOptions):
    incumbent: str = "noisy"
    failures: str = "model"
    prefix_restarts: int = 2
    prefix_raw_samples: int = 64
    give_up: float | None = None
    min_saving: float | None = None
    prefix_starts: int = 16


@dataclass(frozen=True, kw_only=True)
class RandomSearchOptions:
    pass


@dataclass(frozen=True, kw_only=True)
class LaMBOOptions:
    lr: float | None = None
    depth: int | None = None
    max_depth: int = 6
    lazy: bool = True
    keep_upstream: bool = True
    num_restarts: int = 8
    raw_samples: int = 256
    maxiter: int = 200
    warm_start: bool = True


@dataclass(frozen=True, kw_only=True)
class CascadeBOOptions(_SearchOptions):
    mc_samples: int = 64


METHOD_OPTIONS: dict[str, type | None] = {
    "random": RandomSearchOptions,
    "ei": EIOptions,
    "eips": EIPSOptions,
    "carbo": CArBOOptions,
    "ms_carbo": MSCArBOOptions,
    "eeipu": EEIPUOptions,
    "lambo": LaMBOOptions,
    "ms_bo": CascadeBOOptions,
}
"""Method name -> the frozen dataclass of its options, or None where the factory takes any
keyword (torch-free: a configuration is checked against it before torch is imported)."""


def method_options(name: str, **options: Any) -> Any:
    """The typed options of method ``name`` (its :data:`METHOD_OPTIONS` dataclass), from
    ``options`` over its defaults; a dict of ``options`` as given if the method declares none.

    Raises:
        OptimizerError: An unknown method, or an option the method does not use: the message
            lists the ones it does.
    """
    if name not in METHOD_OPTIONS:
        raise OptimizerError(f"unknown method {name!r}; known methods: {sorted(METHOD_OPTIONS)}")
    kind = METHOD_OPTIONS[name]
    if kind is None:
        return dict(options)
    known = [f.name for f in fields(kind)]
    for key in options:
        if key not in known:
            raise OptimizerError(
                f"method {name!r} does not use option {key!r}" + unknown_option_hint(name, str(key))
            )
    try:
        return kind(**options)
    except TypeError as exc:  # a required option is missing
        raise OptimizerError(f"bad options for method {name!r}: {exc}") from exc


def options_used_by(method: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Those of ``options`` that ``method`` uses (all of them if it declares none): for one
    options dict shared by a comparison of methods, where :func:`make_method` refuses an
    option its method does not use.

    Example:
        >>> options_used_by("ei", {"num_restarts": 2, "prefix_starts": 4})
        {'num_restarts': 2}
    """
    kind = METHOD_OPTIONS.get(method)
    if kind is None:
        return dict(options)
    names = {f.name for f in fields(kind)}
    return {k: v for k, v in options.items() if k in names}


def unknown_option_hint(method: str, key: str) -> str:
    """What follows "method M does not use option K": the closest option of M if K looks like
    a typo of one (not when K is another method's option), then the options M uses."""
    kind = METHOD_OPTIONS.get(method)
    known = [f.name for f in fields(kind)] if kind else []
    elsewhere = {f.name for kind in METHOD_OPTIONS.values() if kind for f in fields(kind)}
    close = [] if key in elsewhere else difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return hint + (f"; its options are {sorted(known)}" if known else "; it takes no options")
