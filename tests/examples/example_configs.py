"""The shipped Hydra config with an example project's ``conf/`` on the search path, as
``eeipu tune --config-dir conf`` composes it in that example's folder."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import composed

__all__ = ["EXAMPLES", "example_composed"]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def example_composed(name: str, *overrides: str) -> dict:
    """``composed("pipeline=<name>", *overrides)`` with ``examples/<name>/conf`` searched."""
    search = f"hydra.searchpath=[file://{EXAMPLES / name / 'conf'}]"
    return composed(search, f"pipeline={name}", *overrides)
