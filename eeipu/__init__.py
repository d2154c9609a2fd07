"""eeipu: memoization-aware Bayesian optimization for multi-stage pipelines.

A pure library on BoTorch (no Prefect, Hydra or fsspec). See ``Optimizer`` for the ask/tell
loop and ``SearchSpace`` for the search-space schema.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from eeipu._cache import CacheView, HistoryCacheView, cached_prefix, canonical_json
from eeipu._errors import (
    CacheError,
    EEIPUError,
    EEIPUWarning,
    OptimizerError,
    SearchSpaceError,
    TellError,
)
from eeipu._options import (
    METHOD_OPTIONS,
    method_options,
    options_used_by,
    unknown_option_hint,
)
from eeipu._space import CategoricalParam, FloatParam, IntParam, SearchSpace
from eeipu._trial import Trial, TrialState

if TYPE_CHECKING:
    from eeipu._acquisition import GittinsIndex, LogEIPerCost, LogSuccessWeighted, cooling_eta
    from eeipu._lambo import LaMBO
    from eeipu._methods import (
        METHODS,
        CostAwareEI,
        Method,
        Observations,
        Proposal,
        RandomSearch,
        batched_lbfgs_available,
        impute_failed,
        make_method,
        options_type,
        register_method,
    )
    from eeipu._models import CostModel, fit_gp
    from eeipu._ms_bo import CascadeBO
    from eeipu._optimizer import Optimizer
    from eeipu._parts import (
        AcquisitionSearch,
        CostTerm,
        Gittins,
        GPFits,
        ImputeFailures,
        ModelFailures,
        PrefixSearch,
        Quality,
        Ratio,
    )
    from eeipu._prefixes import Prefix, build_prefix_pool

# The names above are torch-free: checking a configuration (method names and options, a
# search space) imports no torch. These import torch, on first use (PEP 562); the first one
# loads every method module, so that METHODS holds every built-in method (lambo and ms_bo
# register themselves when imported).
_TORCH_HOMES = {
    "CascadeBO": "eeipu._ms_bo",
    "AcquisitionSearch": "eeipu._parts",
    "CostTerm": "eeipu._parts",
    "GPFits": "eeipu._parts",
    "Gittins": "eeipu._parts",
    "ImputeFailures": "eeipu._parts",
    "ModelFailures": "eeipu._parts",
    "PrefixSearch": "eeipu._parts",
    "Quality": "eeipu._parts",
    "Ratio": "eeipu._parts",
    "CostAwareEI": "eeipu._methods",
    "CostModel": "eeipu._models",
    "GittinsIndex": "eeipu._acquisition",
    "LaMBO": "eeipu._lambo",
    "LogEIPerCost": "eeipu._acquisition",
    "LogSuccessWeighted": "eeipu._acquisition",
    "METHODS": "eeipu._methods",
    "Method": "eeipu._methods",
    "Observations": "eeipu._methods",
    "Optimizer": "eeipu._optimizer",
    "Prefix": "eeipu._prefixes",
    "Proposal": "eeipu._methods",
    "RandomSearch": "eeipu._methods",
    "batched_lbfgs_available": "eeipu._methods",
    "build_prefix_pool": "eeipu._prefixes",
    "impute_failed": "eeipu._methods",
    "cooling_eta": "eeipu._acquisition",
    "fit_gp": "eeipu._models",
    "make_method": "eeipu._methods",
    "options_type": "eeipu._methods",
    "register_method": "eeipu._methods",
}


def __getattr__(name: str) -> Any:
    home = _TORCH_HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    for module in ("eeipu._methods", "eeipu._lambo", "eeipu._ms_bo", "eeipu._optimizer"):
        importlib.import_module(module)
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "METHODS",
    "METHOD_OPTIONS",
    "AcquisitionSearch",
    "CacheError",
    "CacheView",
    "CascadeBO",
    "CategoricalParam",
    "CostAwareEI",
    "CostModel",
    "CostTerm",
    "EEIPUError",
    "EEIPUWarning",
    "FloatParam",
    "GPFits",
    "Gittins",
    "GittinsIndex",
    "HistoryCacheView",
    "ImputeFailures",
    "IntParam",
    "LaMBO",
    "LogEIPerCost",
    "LogSuccessWeighted",
    "Method",
    "ModelFailures",
    "Observations",
    "Optimizer",
    "OptimizerError",
    "Prefix",
    "PrefixSearch",
    "Proposal",
    "Quality",
    "RandomSearch",
    "Ratio",
    "SearchSpace",
    "SearchSpaceError",
    "TellError",
    "Trial",
    "TrialState",
    "batched_lbfgs_available",
    "build_prefix_pool",
    "cached_prefix",
    "canonical_json",
    "cooling_eta",
    "fit_gp",
    "impute_failed",
    "make_method",
    "method_options",
    "options_type",
    "options_used_by",
    "register_method",
    "unknown_option_hint",
]
