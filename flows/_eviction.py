"""Which cache entries to evict first when the store outgrows ``storage.max_bytes``.

Policy (lowest value goes first; among equals, the oldest):

1. ``-1``: entries of this study's *last* stage. Each belongs to one full configuration, and
   the optimizer never proposes a configuration twice, so nothing will load them again.
2. ``0``: entries this study does not know: other studies' results on a shared cache, and
   payloads of interrupted writes.
3. ``1 + rank``: the other stages of this study's trials, i.e. the prefixes the optimizer can
   reuse. ``rank`` in [0, 1] is the best objective among the trials sharing the entry,
   ranked (1 = the best trial): the prefix pool prefers the prefixes of good trials, so
   those are the most likely to be loaded again and are evicted last.

Each journal record names its trial's stage keys (``stage_keys``) and the pipeline's last stage
(``sink``), so the ranking needs no pipeline.

The optimizer's cache view lists the store at every ask, so an evicted prefix is no longer
offered as cached; a trial that needs it simply recomputes it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from flows.records import TrialRecord

__all__ = ["reuse_value"]


def reuse_value(records: Sequence[TrialRecord], direction: str) -> dict[str, float]:
    """``{key: value}`` for this study's entries (see the module docstring)."""
    sign = 1.0 if direction == "maximize" else -1.0
    scores = [
        sign * r.objective if r.complete and r.objective is not None else -math.inf for r in records
    ]
    order = sorted(range(len(records)), key=lambda i: scores[i])
    rank = {i: (pos + 1) / len(records) for pos, i in enumerate(order)}
    value: dict[str, float] = {}
    for i, record in enumerate(records):
        for stage, key in record.stage_keys.items():
            v = -1.0 if stage == record.sink else 1.0 + rank[i]
            value[key] = max(value.get(key, -math.inf), v)
    return value
