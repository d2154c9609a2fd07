"""The pipeline layer: stages, pipelines, the memoizing store and their Prefect runtime.

Example pipelines and test problems live in :mod:`stages.pipelines`, users of this API.

Example:
    >>> from stages import Pipeline, Store, run_pipeline, stage  # doctest: +SKIP
    >>> @stage(space={"x": {"type": "float", "low": 0.0, "high": 1.0}})  # doctest: +SKIP
    ... def score(x):
    ...     return -((x - 0.3) ** 2)
    >>> result = run_pipeline(Pipeline([score]), {"score": {"x": 0.5}}, Store())  # doctest: +SKIP
"""

from stages._cache_view import StoreCacheView
from stages._errors import PipelineError, StageError, StoreError, StoreUnavailable
from stages._pipeline import Pipeline, Reported, Stage, merkle_key, stage
from stages._prefect import (
    MerkleCachePolicy,
    StageOutput,
    StoreFileSystem,
    result_storage_block,
    stage_task,
)
from stages._run import TrialResult, run_pipeline
from stages._store import DEFAULT_STORE_URL, Store

__all__ = [
    "DEFAULT_STORE_URL",
    "MerkleCachePolicy",
    "Pipeline",
    "PipelineError",
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
    "merkle_key",
    "result_storage_block",
    "run_pipeline",
    "stage",
    "stage_task",
]
