"""``eeipu worker``: a warm worker for studies with ``executor=task_workers``.

A Prefect task worker (``prefect.task_worker.serve``) for the trial task
:data:`flows.executors.warm_trial_task`. It imports torch, BoTorch and the Prefect engine
once, and each pipeline on its first trial, then runs trial after trial in the same
process: a trial costs no process start (a process worker of ``executor=work_pool`` starts
one per trial). Start one per machine (or as many as you like); each runs up to ``--limit``
trials at a time, on threads. Give it a ``--limit`` of at least the trials it may have to
run at once: the server hands a trial to any subscribed worker, busy or not, and a worker
at its limit holds the trial until a slot frees (Prefect's task workers acknowledge a run
before they have a slot for it), while another worker may idle. Restart workers when eeipu changes: Prefect keys
the trial task by its code, so a worker of another version never receives the trials.

It needs the Prefect server the controller uses (``PREFECT_API_URL``), the study's storage
(credentials in the environment, as for the work pool) and Prefect's task scheduling
storage, where the controller leaves each trial's parameters: the default, a folder under
``PREFECT_HOME``, works on one machine; across machines set
``PREFECT_TASKS_SCHEDULING_DEFAULT_STORAGE_BLOCK`` (e.g. an ``s3-bucket`` block) on the
controller and every worker.

Example:
    $ export PREFECT_API_URL=http://127.0.0.1:4200/api
    $ eeipu worker --limit 2 &
    $ eeipu tune executor=task_workers parallel=2
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from flows.cli import append_user_folder

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eeipu worker",
        description=(
            "A warm worker: runs the trials of studies with executor=task_workers in this "
            "long-lived process (torch and the pipeline are imported once). Needs "
            "PREFECT_API_URL (the controller's Prefect server)."
        ),
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=1,
        metavar="N",
        help="trials this worker runs at a time, on threads (default: 1)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the trial task until interrupted; returns an exit code (2: bad arguments)."""
    parser = _parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.limit < 1:
        print(f"error: --limit must be a positive integer, but got {args.limit}", file=sys.stderr)
        return 2
    from prefect.settings import get_current_settings

    if get_current_settings().api.url is None:
        print(
            "error: PREFECT_API_URL is not set; a worker needs the controller's Prefect "
            "server, e.g. export PREFECT_API_URL=http://127.0.0.1:4200/api",
            file=sys.stderr,
        )
        return 2
    append_user_folder()  # a pipeline.target beside your configs, as for tune
    from prefect.task_worker import serve

    from flows.executors import warm_trial_task

    serve(warm_trial_task, limit=args.limit)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
