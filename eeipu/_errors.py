"""The exception and warning family of eeipu."""

from __future__ import annotations

__all__ = [
    "CacheError",
    "EEIPUError",
    "EEIPUWarning",
    "OptimizerError",
    "SearchSpaceError",
    "TellError",
]


class EEIPUError(Exception):
    """Base class of every error raised by eeipu."""


class SearchSpaceError(EEIPUError, ValueError):
    """A search-space specification breaks a rule (bounds, types, names)."""


class OptimizerError(EEIPUError, ValueError):
    """The optimizer was configured or called in a way it cannot honour."""


class TellError(OptimizerError):
    """A ``tell`` call does not match an asked trial or carries invalid results."""


class CacheError(EEIPUError):
    """A cache view could not answer (the store is unreachable, say)."""


class EEIPUWarning(UserWarning):
    """Warnings emitted by eeipu (tests turn them into errors)."""
