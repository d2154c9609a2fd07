"""``kedro eeipu``: tune a Kedro project from Kedro's own command line.

Registered through Kedro's ``kedro.project_commands`` entry point when eeipu is installed
with the ``kedro`` extra; run inside a Kedro project:

    kedro eeipu tune [--pipeline NAME] [--env ENV] [OVERRIDES...]
        ``eeipu tune pipeline=kedro`` on this project: the study is named after the
        project's package, its direction comes from ``conf/base/eeipu.yml``, and any eeipu
        override follows (``budget=120``, ``optimizer=ei``, ``parallel=2``, ``-m ...``).
    kedro eeipu best [STUDY] [--write] [--write-env ENV]
        the study's best trial as Kedro parameters; ``--write`` writes them to
        ``conf/<ENV>/parameters_eeipu.yml`` (default ENV ``eeipu``), so that
        ``kedro run --env eeipu`` reproduces that trial.

The cache and the journals are where eeipu's defaults put them: ``.eeipu/cache`` in the
project's root (``storage.url=...`` / ``--storage`` for another, such as S3).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

__all__ = ["commands"]


@click.group(name="eeipu-plugin")
def commands() -> None:
    """Kedro's entry point: the group that holds ``kedro eeipu``."""


@commands.group(name="eeipu")
def eeipu() -> None:
    """Tune the project's parameters with eeipu (memoized stages, cost-aware BO)."""


def _study_prefix(metadata: Any, pipeline: str) -> str:
    name = str(metadata.package_name)
    return name if pipeline == "__default__" else f"{name}.{pipeline}"


@eeipu.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    help="Run or resume a study over the parameters conf/base/eeipu.yml names. Further "
    "arguments are eeipu overrides (budget=120 n_init=8 optimizer=ei storage.url=...); "
    "`eeipu tune --help` shows them all.",
)
@click.option(
    "--pipeline",
    "-p",
    default="__default__",
    show_default=True,
    help="the registered pipeline to tune",
)
@click.option("--env", "-e", default=None, help="the Kedro configuration environment")
@click.argument("overrides", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def tune(metadata: Any, pipeline: str, env: str | None, overrides: tuple[str, ...]) -> None:
    from flows.cli import main
    from stages import PipelineError
    from stages.kedro import KedroProject

    os.chdir(metadata.project_path)  # the cache and outputs go in the project's root
    try:
        spec = KedroProject(metadata.project_path, env).spec
    except PipelineError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    args = [
        "tune",
        "pipeline=kedro",
        f"pipeline.name={_study_prefix(metadata, pipeline)}",
        f"pipeline.kwargs.pipeline={pipeline}",
        f"pipeline.kwargs.env={'null' if env is None else env}",
        f"pipeline.direction={spec.direction or 'maximize'}",
        *overrides,
    ]
    sys.exit(main(args))


@eeipu.command(help="Print a study's best trial as Kedro parameters; --write writes them.")
@click.argument("study", required=False)
@click.option("--storage", default=None, help="the study's storage (default: .eeipu/cache)")
@click.option(
    "--pipeline",
    "-p",
    default="__default__",
    show_default=True,
    help="the pipeline the study tuned (names the default study)",
)
@click.option("--env", "-e", default=None, help="the configuration environment the study tuned in")
@click.option(
    "--recommended",
    is_flag=True,
    help="the recommended trial (best posterior mean, from the run's best.yaml) instead of "
    "the best observed one",
)
@click.option("--write", is_flag=True, help="write conf/<write-env>/parameters_eeipu.yml")
@click.option(
    "--write-env",
    default="eeipu",
    show_default=True,
    help="the environment to write to; then run `kedro run --env <it>`",
)
@click.pass_obj
def best(
    metadata: Any,
    study: str | None,
    storage: str | None,
    pipeline: str,
    env: str | None,
    recommended: bool,
    write: bool,
    write_env: str,
) -> None:
    import yaml

    from flows.inspection import DEFAULT_STORAGE, best_trial, recommended_trial
    from stages import PipelineError, StoreError
    from stages.kedro import KedroProject, write_parameters

    root = Path(metadata.project_path)
    study = study or f"{_study_prefix(metadata, pipeline)}-eeipu-seed0"
    url = storage or str(root / DEFAULT_STORAGE)
    try:
        record, direction = best_trial(url, study)
        which = "best"
        if recommended:
            record, source = recommended_trial(url, study, str(root / "outputs" / study))
            which = f"recommended (posterior mean {record.posterior_mean:.6g}, from {source})"
        header = (
            f"# study {study} ({direction}): {which} trial {record.number}, "
            f"objective {record.objective:.6g}\n"
        )
        if not write:
            values = {k: v for section in record.params.values() for k, v in section.items()}
            click.echo(
                header
                + yaml.safe_dump({f"params:{k}": v for k, v in values.items()}, sort_keys=False),
                nl=False,
            )
            return
        path = write_parameters(KedroProject(root, env), record.params, write_env, header)
    except (LookupError, PipelineError, StoreError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    click.echo(
        f"wrote {path.relative_to(root)}; `kedro run --env {write_env}` "
        f"reproduces trial {record.number} (objective {record.objective:.6g})"
    )
