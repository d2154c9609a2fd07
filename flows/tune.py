"""The Hydra entry point: ``python -m flows.tune [overrides]``.

Composes ``flows/conf/config.yaml``, validates it into a :class:`flows.StudyConfig`, and runs the
controller flow on Prefect (the embedded server unless ``PREFECT_API_URL`` is set); a study
with nothing left to run is answered from its journal, without Prefect. Bad input exits
non-zero with a one-line ``error:`` message.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

# Prefect reads these at import: keep its telemetry off (these machines are offline) and
# give its embedded server time for a first start (database migration).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

if TYPE_CHECKING:
    from flows._finished import StudyResult

__all__ = ["main", "run"]


def run(cfg_dict: dict) -> StudyResult:
    """Validate a plain config dict and run its study: :meth:`flows.Study.optimize` of
    :meth:`flows.Study.from_config` (the Python API's one path).

    A study with nothing left to run (budget spent, ``max_trials`` reached) is answered from
    its journal: outputs and summary, but no flow run and no Prefect server start; and when
    its outputs are up to date, without torch or Prefect at all (``flows._finished``).
    """
    from flows._config import StudyConfig
    from flows.api import Study

    return Study.from_config(StudyConfig.from_mapping(cfg_dict)).optimize()


def main() -> float | None:
    """Hydra's main (:func:`_study`), with the errors Hydra meets composing the config (an
    unknown config name, key or override) said in one ``error:`` line, exit code 2.

    ``HYDRA_FULL_ERROR=1`` (set by the user) keeps Hydra's own report."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        return _study()
    # Hydra raises what it would otherwise print as a block (or a traceback) and exit 1.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        return _study()
    except Exception as exc:
        from flows._config import hydra_error

        line = hydra_error(exc, sys.argv[1:])
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        sys.exit(2)
    finally:
        os.environ.pop("HYDRA_FULL_ERROR", None)


def _study_failed() -> tuple[type[Exception], ...]:
    """``flows.study.StudyFailed`` once that module is imported: a config error is answered
    without it (it imports Prefect), and no study can have failed before it was imported."""
    study = sys.modules.get("flows.study")
    return (study.StudyFailed,) if study is not None else ()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def _study(cfg: DictConfig) -> float | None:
    # Hydra's logging setup routes Prefect's HTTP client chatter to the console.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from eeipu import EEIPUError
    from flows import _interrupt
    from stages import PipelineError, StageError, StoreError

    try:
        cfg_dict = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        # The study runs in a thread; this one stops it on SIGINT / SIGTERM (_interrupt).
        grace = _interrupt.SEQUENTIAL_GRACE
        if cfg_dict.get("parallel", 1) != 1:
            grace = _interrupt.PARALLEL_GRACE
        result = _interrupt.run_watched(run, cfg_dict, grace=grace)
    except _interrupt.StudyInterrupted as exc:
        _interrupt.exit_interrupted(exc)  # one line, exit code 130 / 143
    except (EEIPUError, PipelineError, StageError, StoreError, *_study_failed()) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except MissingMandatoryValue as exc:
        key = exc.full_key
        print(f"error: `{key}` is required but missing; set it, e.g. {key}=...", file=sys.stderr)
        sys.exit(2)
    except OmegaConfBaseException as exc:
        msg = str(exc).splitlines()[0]
        key = getattr(exc, "full_key", None)
        print(f"error: configuration: {msg}" + (f" (key `{key}`)" if key else ""), file=sys.stderr)
        sys.exit(2)
    return result.best_objective


if __name__ == "__main__":
    # gpytorch/linear_operator call torch.jit.script at import (deprecated in torch 2.13).
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated")
    main()
