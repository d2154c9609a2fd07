"""Scoped torch thread count for the example pipelines' stages (vision_cnn, t5_distill,
pretrain_probe)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["torch_threads"]


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads (None: leave as is), then restore.

    The setting is process-wide, so it is held only while a stage runs. Small models on a
    busy 2-core machine train many times faster on one thread than on two spinning ones.
    """
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
