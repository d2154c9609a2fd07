"""Prefect flows and the entry points (the ``eeipu`` command, ``python -m flows.tune``).

The public names are imported on first use, so ``eeipu --help`` does not load torch.
Modules: :mod:`flows.study` (the study loop), :mod:`flows.executors`, :mod:`flows.trial`,
:mod:`flows.runtime`; see docs/architecture.md.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> the module that defines it
_HOMES = {
    "ConfigError": "flows._config",
    "OptimizerConfig": "flows._config",
    "PipelineConfig": "flows._config",
    "StorageConfig": "flows._config",
    "StudyConfig": "flows._config",
    "StudyJournal": "flows._journal",
    "reuse_value": "flows._eviction",
    "write_outputs": "flows._outputs",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'flows' has no attribute {name!r}")
