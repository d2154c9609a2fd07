"""The pipeline layer: stages, pipelines, the memoizing store and their Prefect runtime.

Test pipelines for the framework itself live in :mod:`stages.testing`; example pipelines
live in the repository's `examples/` folder, users of this API like any other.

Example:
    >>> from stages import Pipeline, Store, run_pipeline, stage  # doctest: +SKIP
    >>> @stage(space={"x": {"type": "float", "low": 0.0, "high": 1.0}})  # doctest: +SKIP
    ... def score(x):
    ...     return -((x - 0.3) ** 2)
    >>> result = run_pipeline(Pipeline([score]), {"score": {"x": 0.5}}, Store())  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stages._cache_view import StoreCacheView
    from stages._errors import (
        CacheLoadError,
        PipelineError,
        StageError,
        StoreError,
        StoreUnavailable,
    )
    from stages._fingerprint import code_fingerprint
    from stages._pipeline import Pipeline, Reported, Stage, merkle_key, stage
    from stages._prefect import (
        MerkleCachePolicy,
        PrefectStorage,
        StageOutput,
        StoreFileSystem,
        stage_task,
    )
    from stages._run import TrialResult, run_pipeline
    from stages._store import DEFAULT_STORE_URL, Store

# name -> the module that defines it. Imported on first use (PEP 562): reading a store or a
# journal (`eeipu studies`, `show`, `cache`) then loads neither Prefect nor torch.
_HOMES = {
    "CacheLoadError": "stages._errors",
    "DEFAULT_STORE_URL": "stages._store",
    "MerkleCachePolicy": "stages._prefect",
    "Pipeline": "stages._pipeline",
    "PipelineError": "stages._errors",
    "PrefectStorage": "stages._prefect",
    "Reported": "stages._pipeline",
    "Stage": "stages._pipeline",
    "StageError": "stages._errors",
    "StageOutput": "stages._prefect",
    "Store": "stages._store",
    "StoreCacheView": "stages._cache_view",
    "StoreError": "stages._errors",
    "StoreFileSystem": "stages._prefect",
    "StoreUnavailable": "stages._errors",
    "TrialResult": "stages._run",
    "code_fingerprint": "stages._fingerprint",
    "merkle_key": "stages._pipeline",
    "run_pipeline": "stages._run",
    "stage": "stages._pipeline",
    "stage_task": "stages._prefect",
}

__all__ = [
    "DEFAULT_STORE_URL",
    "CacheLoadError",
    "MerkleCachePolicy",
    "Pipeline",
    "PipelineError",
    "PrefectStorage",
    "Reported",
    "Stage",
    "StageError",
    "StageOutput",
    "Store",
    "StoreCacheView",
    "StoreError",
    "StoreFileSystem",
    "StoreUnavailable",
    "TrialResult",
    "code_fingerprint",
    "merkle_key",
    "run_pipeline",
    "stage",
    "stage_task",
]


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        value = getattr(importlib.import_module(_HOMES[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'stages' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
