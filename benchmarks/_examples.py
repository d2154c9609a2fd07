"""The example projects (``examples/<name>/``) the pipeline benchmarks run: their folders
on ``sys.path`` (appended, as ``eeipu tune`` does a user's folder) and their ``conf/`` on
Hydra's search path, so ``pipeline=<name>`` composes as in the example's own folder."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

__all__ = ["EXAMPLES", "example_module", "example_search_path", "use_examples"]

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _folders() -> list[Path]:
    return sorted(p for p in EXAMPLES.iterdir() if (p / "conf" / "pipeline").is_dir())


def use_examples() -> None:
    """Append every example folder to ``sys.path`` (their module names are distinct)."""
    for folder in _folders():
        if str(folder) not in sys.path:
            sys.path.append(str(folder))


def example_search_path() -> str:
    """The Hydra override that adds every example's ``conf/`` to the search path."""
    return "hydra.searchpath=[" + ",".join(f"file://{p / 'conf'}" for p in _folders()) + "]"


def example_module(name: str) -> ModuleType:
    """The module of the example pipeline ``name`` (``examples/<name>/<name>.py``)."""
    use_examples()
    return importlib.import_module(name)
