"""The optimizer's view of the store: which stage outputs are cached."""

from __future__ import annotations

from stages._pipeline import Params, Pipeline
from stages._store import Store

__all__ = ["StoreCacheView"]


class StoreCacheView:
    """Implements ``eeipu``'s ``CacheView`` protocol from ONE listing of the store.

    Build a fresh view for every ``ask``: the listing is taken at construction, and each
    ``is_cached`` question is answered by computing the stage's Merkle key locally.

    Args:
        pipeline: The pipeline whose keys are asked about.
        store: The store to list.

    Example:
        >>> view = StoreCacheView(pipe, store)  # doctest: +SKIP
        >>> view.is_cached("train", {"prep": {"k": 3}, "train": {"lr": 0.1}})  # doctest: +SKIP
        False
    """

    def __init__(self, pipeline: Pipeline, store: Store) -> None:
        self.pipeline = pipeline
        self.store = store
        self.keys: frozenset[str] = frozenset(store.keys())

    def is_cached(self, stage: str, params: Params) -> bool:
        """True when the output of ``stage`` for these (upstream) hyperparameters is stored.

        Raises:
            KeyError: Unknown stage.
            ValueError: Hyperparameters of ``stage`` or an upstream stage are missing.
        """
        return self.pipeline.key(stage, params) in self.keys

    def __len__(self) -> int:
        return len(self.keys)
