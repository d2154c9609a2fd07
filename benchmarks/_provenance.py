"""Which code and machine made a raw benchmark run.

:func:`provenance` is computed once by the process that plans the runs and stored in every
raw run it writes, so a page can say which commit made its numbers (and whether the tree had
uncommitted changes to the optimizer's code when it ran).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import os
import platform
import subprocess
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["CODE_PATHS", "describe", "provenance"]

ROOT = Path(__file__).resolve().parents[1]
# The code a simulated run's numbers depend on: the optimizer and the simulation.
CODE_PATHS = ("eeipu", "stages/pipelines")
_PACKAGES = ("torch", "botorch", "gpytorch", "scipy", "optuna")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def provenance() -> dict[str, Any]:
    """The commit, the state of the optimizer's code, the package versions, the machine and
    the date, as a JSON-able dict.

    ``code`` identifies the optimizer's code (:data:`CODE_PATHS`) exactly: the git tree ids of
    those folders at HEAD, plus a digest of any uncommitted change to them (``code_dirty``).
    Two runs with the same ``code`` ran the same optimizer, whatever else the commits changed.
    Outside a git checkout every git field is None.
    """
    commit = _git("rev-parse", "HEAD")
    trees = [_git("rev-parse", f"HEAD:{p}") for p in CODE_PATHS] if commit else []
    diff = _git("diff", "HEAD", "--", *CODE_PATHS) if commit else None
    untracked = _git("ls-files", "--others", "--exclude-standard", "--", *CODE_PATHS)
    code = None
    if commit and all(trees):
        h = hashlib.blake2b(digest_size=8)
        h.update("\n".join(t or "" for t in trees).encode())
        if diff:
            h.update(diff.encode())
        if untracked:
            for name in untracked.splitlines():
                h.update(name.encode())
                with contextlib.suppress(OSError):
                    h.update((ROOT / name).read_bytes())
        code = h.hexdigest()
    status = _git("status", "--porcelain") if commit else None
    return {
        "commit": commit,
        "dirty": bool(status) if status is not None else None,
        "code": code,
        "code_dirty": bool(diff or untracked) if commit else None,
        "python": platform.python_version(),
        **{name: _version(name) for name in _PACKAGES},
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def describe(runs: Iterable[Mapping[str, Any]]) -> str:
    """One line for a page: which commits made ``runs``, how many commits changing the
    optimizer's code lie between each and HEAD, and how many versions of that code made them."""
    runs = list(runs)
    by_commit: dict[tuple[str, bool], int] = {}
    codes, dirty, unknown = set(), 0, 0
    for run in runs:
        made = run.get("provenance")
        if not made or not made.get("commit"):
            unknown += 1
            continue
        key = (made["commit"], bool(made.get("dirty")))
        by_commit[key] = by_commit.get(key, 0) + 1
        codes.add(made.get("code"))
        dirty += bool(made.get("code_dirty"))
    head = _git("rev-parse", "HEAD")
    parts = []
    for (commit, was_dirty), n in sorted(by_commit.items(), key=lambda kv: -kv[1]):
        label = f"`{commit[:10]}`" + (" with uncommitted changes" if was_dirty else "")
        label += f" ({n} runs"
        if head and commit != head:
            later = _git("rev-list", "--count", f"{commit}..{head}", "--", *CODE_PATHS)
            label += (
                f"; {later} later commits change the optimizer's code"
                if later is not None
                else "; not in this checkout's history"
            )
        parts.append(label + ")")
    if unknown:
        parts.append(f"not recorded ({unknown} runs, made before runs recorded their commit)")
    line = f"Code: made by commit {'; '.join(parts)}" if parts else "Code: no runs"
    where = ", ".join(CODE_PATHS)
    if len(codes) > 1:
        line += f"; {len(codes)} different versions of the optimizer's code ({where})"
    elif codes:
        line += f"; one version of the optimizer's code ({where})"
    if dirty:
        line += f", {dirty} runs with uncommitted changes to it"
    return line + "."
