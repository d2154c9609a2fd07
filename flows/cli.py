"""The ``eeipu`` command: run, serve and inspect studies.

==========  ==========================================================================
command     what it does
==========  ==========================================================================
tune        run or resume a study: Hydra overrides, ``-m`` for multirun, ``--config-dir``
            for your own configs (= ``python -m flows.tune``)
serve       serve the study flow on a cron schedule (= ``python -m flows.serve``)
worker      a warm worker running the trials of ``executor=task_workers`` studies
            (= ``python -m flows.worker``)
studies     list the studies on a storage: trials, spent/budget, best, last update
show        one study's trials and its best and recommended configurations (prints only;
            ``--write DIR`` writes results.csv, best.yaml and the best-vs-cost plot)
best        a study's best (``--recommended``: recommended) configuration as YAML, with the
            ``pipeline.fixed`` override that pins it
cache       the stage cache's size per stage, and what ``--max-bytes`` would evict
==========  ==========================================================================

``tune``, ``serve`` and ``worker`` put the current folder on ``sys.path``
(:func:`append_user_folder`), so a ``pipeline.target`` in a module beside your configs
imports without installing it. It goes last: a folder of yours named ``stages`` or
``flows`` never shadows the installed framework.

Example:
    $ eeipu tune --config-dir conf pipeline=mine budget=100
    $ eeipu studies
    $ eeipu show mine-eeipu-seed0
    $ eeipu best mine-eeipu-seed0 > best.yaml
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Sequence

__all__ = ["COMMANDS", "append_user_folder", "main"]


def append_user_folder(folder: str | None = None) -> None:
    """Put ``folder`` (default: the current folder) on ``sys.path``, after everything there.

    Your pipeline modules in it import by name; the installed packages come first, so a
    module or package of yours that shares a name with one of ours (``stages``, ``flows``)
    does not replace it. ``python -m flows.tune`` differs: Python itself puts the current
    folder first.
    """
    folder = os.getcwd() if folder is None else folder
    if folder not in sys.path:
        sys.path.append(folder)


def _hydra(module: str) -> Callable[[list[str]], int]:
    def run(argv: list[str]) -> int:
        import importlib

        append_user_folder()
        entry = importlib.import_module(module)
        # Hydra parses sys.argv itself (overrides, -m, --config-dir, --help, ...).
        saved = sys.argv
        sys.argv = [f"eeipu {module.rsplit('.', 1)[1]}", *argv]
        try:
            entry.main()
        finally:
            sys.argv = saved
        return 0

    return run


def _worker(argv: list[str]) -> int:
    from flows import worker

    return worker.main(argv)


def _inspect(name: str) -> Callable[[list[str]], int]:
    def run(argv: list[str]) -> int:
        from flows import inspection

        return getattr(inspection, f"{name}_main")(argv)

    return run


#: Subcommand -> (one-line help, function of the remaining arguments returning an exit code).
COMMANDS: dict[str, tuple[str, Callable[[list[str]], int]]] = {
    "tune": ("run or resume a study (Hydra overrides; -m for multirun)", _hydra("flows.tune")),
    "serve": ("serve the study flow on a cron schedule", _hydra("flows.serve")),
    "worker": ("a warm worker for executor=task_workers studies", _worker),
    "studies": ("list the studies on a storage", _inspect("studies")),
    "show": ("a study's trials, best and recommended configurations", _inspect("show")),
    "best": ("a study's best configuration as YAML to feed back", _inspect("best")),
    "cache": ("cache size per stage; what --max-bytes would evict", _inspect("cache")),
}


def _usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = [
        "usage: eeipu COMMAND [ARGS...]",
        "",
        "Memoization-aware hyperparameter tuning of multi-stage training pipelines.",
        "",
        "commands:",
        *(f"  {c:<{width}}  {help_}" for c, (help_, _) in COMMANDS.items()),
        "",
        "`eeipu COMMAND --help` describes each command; `eeipu tune --help` shows the config.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``eeipu COMMAND [ARGS...]``; returns (and, as a script, exits with) the
    command's exit code. Unknown commands give one ``error:`` line and exit code 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if args else 2
    if args[0] == "--version":
        from importlib.metadata import version

        print(f"eeipu {version('eeipu')}")
        return 0
    command, rest = args[0], args[1:]
    # gpytorch/linear_operator call torch.jit.script at import; torch >= 2.13 warns about it
    # on every run, and a user can do nothing about it.
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated")
    if command not in COMMANDS:
        print(
            f"error: unknown command {command!r}; commands: {', '.join(COMMANDS)}",
            file=sys.stderr,
        )
        return 2
    return COMMANDS[command][1](rest)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
