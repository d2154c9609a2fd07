"""Serve the tuning flow on a cron schedule: ``python -m flows.serve [overrides]``.

Composes ``flows/conf/serve.yaml`` (``flows/conf/config.yaml`` plus ``cron``, ``deployment``,
``extra_budget`` and ``concurrency_limit``), checks the study configuration, registers the
controller flow ``eeipu-study`` as a deployment with that schedule on the Prefect server at
``PREFECT_API_URL``, and runs the scheduled runs in this process until stopped (Ctrl-C).

Each scheduled run continues the *same* study: it resumes the journal and gets the budget
of the previous run (or what it spent, where its last trial overshot) plus ``extra_budget``
(a new study starts with ``budget``), so nothing is recomputed and the optimizer keeps
everything it learned. Runs of the deployment never overlap (``concurrency_limit: 1``).

Example:
    PREFECT_API_URL=http://127.0.0.1:4200/api \\
    python -m flows.serve study=nightly cron="0 3 * * *" budget=200 extra_budget=100
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import hydra
from omegaconf import DictConfig, OmegaConf

__all__ = ["deployment", "main"]

_SERVE_KEYS = ("cron", "deployment", "concurrency_limit")


def deployment(cfg_dict: dict[str, Any]) -> Any:
    """The study's scheduled deployment (a ``prefect`` ``RunnerDeployment``), checked.

    Args:
        cfg_dict: A composed ``flows/conf/serve.yaml`` as a plain dict.

    Raises:
        ConfigError: A bad study configuration, cron expression or limit.
    """
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.deployments.runner import EntrypointType

    from flows._config import ConfigError, StudyConfig
    from flows.runtime import StudyContext
    from flows.study import tune_flow

    cfg_dict = dict(cfg_dict)
    cron, name, limit = (cfg_dict.pop(k, None) for k in _SERVE_KEYS)
    cfg = StudyConfig.from_mapping(cfg_dict)
    if cfg.extra_budget is None:
        raise ConfigError(
            "`extra_budget` must be set for a scheduled study (each run adds it to the budget)"
        )
    try:
        CronSchedule(cron=str(cron))
    except ValueError as exc:
        raise ConfigError(f"`cron` must be a cron expression, but got {cron!r}") from exc
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ConfigError(f"`concurrency_limit` must be a positive integer, but got {limit!r}")
    # Fail now on a bad pipeline or unreachable storage, not at 3 a.m.; the journal is not
    # opened here, so the first scheduled run starts a new study with `budget`.
    StudyContext.build(cfg).store.check()
    return tune_flow.to_deployment(
        name=name or cfg.study,
        cron=str(cron),
        parameters={"config": cfg.model_dump(mode="json")},
        concurrency_limit=limit,
        tags=[f"study:{cfg.study}"],
        description=f"eeipu study {cfg.study}: +{cfg.extra_budget:g} budget per run",
        # Import by module path: the run's process finds `flows` on sys.path as usual.
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


@hydra.main(version_base="1.3", config_path="conf", config_name="serve")
def main(cfg: DictConfig) -> None:
    from prefect import serve

    from eeipu import EEIPUError
    from stages import PipelineError, StoreError

    try:
        cfg_dict = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        dep = deployment(cfg_dict)
    except (EEIPUError, PipelineError, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    serve(dep)


if __name__ == "__main__":
    # gpytorch/linear_operator call torch.jit.script at import (deprecated in torch 2.13).
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated")
    main()
