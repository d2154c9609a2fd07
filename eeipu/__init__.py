"""eeipu: memoization-aware Bayesian optimization for multi-stage pipelines.

A pure library on BoTorch (no Prefect, Hydra or fsspec). See ``Optimizer`` for the ask/tell
loop and ``SearchSpace`` for the search-space schema.
"""

from eeipu._acquisition import GittinsIndex, LogEIPerCost, LogSuccessWeighted, cooling_eta
from eeipu._cache import CacheView, HistoryCacheView, cached_prefix, canonical_json
from eeipu._errors import (
    CacheError,
    EEIPUError,
    EEIPUWarning,
    OptimizerError,
    SearchSpaceError,
    TellError,
)
from eeipu._lambo import LaMBO  # registers "lambo"
from eeipu._methods import (
    METHOD_OPTIONS,
    METHODS,
    CostAwareEI,
    Method,
    Observations,
    Prefix,
    Proposal,
    RandomSearch,
    batched_lbfgs_available,
    make_method,
    method_options,
    options_type,
    options_used_by,
    register_method,
    unknown_option_hint,
)
from eeipu._models import CostModel, fit_gp
from eeipu._ms_bo import CascadeBO  # registers "ms_bo"
from eeipu._optimizer import Optimizer
from eeipu._space import CategoricalParam, FloatParam, IntParam, SearchSpace
from eeipu._trial import Trial, TrialState

__all__ = [
    "METHODS",
    "METHOD_OPTIONS",
    "CacheError",
    "CacheView",
    "CascadeBO",
    "CategoricalParam",
    "CostAwareEI",
    "CostModel",
    "EEIPUError",
    "EEIPUWarning",
    "FloatParam",
    "GittinsIndex",
    "HistoryCacheView",
    "IntParam",
    "LaMBO",
    "LogEIPerCost",
    "LogSuccessWeighted",
    "Method",
    "Observations",
    "Optimizer",
    "OptimizerError",
    "Prefix",
    "Proposal",
    "RandomSearch",
    "SearchSpace",
    "SearchSpaceError",
    "TellError",
    "Trial",
    "TrialState",
    "batched_lbfgs_available",
    "cached_prefix",
    "canonical_json",
    "cooling_eta",
    "fit_gp",
    "make_method",
    "method_options",
    "options_type",
    "options_used_by",
    "register_method",
    "unknown_option_hint",
]
