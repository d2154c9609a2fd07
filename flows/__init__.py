"""Prefect flows and the entry points (the ``eeipu`` command, ``python -m flows.tune``).

The public names are imported on first use, so ``eeipu --help`` does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["ConfigError", "PipelineConfig", "StorageConfig", "StudyConfig"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("flows._config"), name)
    raise AttributeError(f"module 'flows' has no attribute {name!r}")
