"""Prefect flows and the entry points (the ``eeipu`` command, ``python -m flows.tune``).

The public names are imported on first use, so ``eeipu --help`` does not load torch.
Modules: :mod:`flows.study` (the study loop), :mod:`flows.executors`, :mod:`flows.trial`,
:mod:`flows.runtime`, :mod:`flows.api` (:class:`Study`); see docs/architecture.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# For type checkers and the API reference (griffe reads them); `X as X` marks a re-export.
if TYPE_CHECKING:
    from flows._config import ConfigError as ConfigError
    from flows._config import OptimizerConfig as OptimizerConfig
    from flows._config import PipelineConfig as PipelineConfig
    from flows._config import StorageConfig as StorageConfig
    from flows._config import StudyConfig as StudyConfig
    from flows._eviction import reuse_value as reuse_value
    from flows._finished import StudyResult as StudyResult
    from flows._journal import StudyJournal as StudyJournal
    from flows._outputs import write_outputs as write_outputs
    from flows.api import Study as Study
    from flows.runtime import StudyContext as StudyContext

# name -> the module that defines it
_HOMES = {
    "ConfigError": "flows._config",
    "OptimizerConfig": "flows._config",
    "PipelineConfig": "flows._config",
    "StorageConfig": "flows._config",
    "Study": "flows.api",
    "StudyConfig": "flows._config",
    "StudyContext": "flows.runtime",
    "StudyResult": "flows._finished",
    "StudyJournal": "flows._journal",
    "reuse_value": "flows._eviction",
    "write_outputs": "flows._outputs",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'flows' has no attribute {name!r}")
