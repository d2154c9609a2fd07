"""The trial subflow: one configuration's stages, each a cached Prefect task.

Every executor runs trials through :func:`trial_flow` (in the controller's process, on its
threads, or on a Prefect worker as :func:`flows.executors.remote_trial_flow`), so a trial
does the same thing wherever it runs.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows._config import StudyConfig
from flows.records import TrialOutcome
from flows.runtime import StudyContext
from stages import run_pipeline

__all__ = ["trial_flow"]


@flow(name="eeipu-trial", log_prints=False, persist_result=False)
def trial_flow(
    config: StudyConfig,
    number: int,
    params: dict[str, Any],
    adopt_after: float | None = None,
    context: StudyContext | None = None,
) -> TrialOutcome:
    """Run one configuration; returns its outcome (objective, costs, cached stages, every
    metric the sink returned, ...; a non-finite objective is a failure of the sink).

    ``adopt_after`` is set when this trial re-runs after a crash interrupted it: what its
    first attempt stored is loaded and charged as computed (see ``run_pipeline``).
    ``number`` names the trial in the UI and logs. ``context`` is the study's, when the
    trial runs in the process that built it (its store, pipeline and credentials); else
    one is built from ``config``.
    """
    ctx = StudyContext.build(config) if context is None else context
    pipeline = ctx.pipeline
    result = run_pipeline(
        pipeline,
        params,
        ctx.prefect,
        retries=config.retries,
        retry_delay_seconds=config.retry_delay_seconds,
        adopt_after=adopt_after,
    )
    return TrialOutcome(
        objective=result.objective,
        costs=result.costs,
        cached=sorted(result.cached_stages),
        adopted=sorted(result.adopted),
        seconds=result.seconds,
        stage_keys=result.keys,
        metrics=result.metrics,
        sink=pipeline.sink.name,
    ).checked()
