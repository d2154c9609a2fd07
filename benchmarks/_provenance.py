"""Which code and machine made a raw benchmark run.

:func:`provenance` is computed once by the process that plans the runs and stored in every
raw run it writes, so a page can say which commit made its numbers (and whether the tree had
uncommitted changes to the optimizer's code when it ran).
"""

from __future__ import annotations

import ast
import datetime as _dt
import hashlib
import os
import platform
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "CODE_PATHS",
    "PIPELINE_CODE_PATHS",
    "REUSE",
    "code_id",
    "describe",
    "made_by",
    "provenance",
    "reusable",
    "reuse_note",
]

ROOT = Path(__file__).resolve().parents[1]
# The code a simulated run's numbers depend on: the optimizer, the simulation and the
# problems (eeipu/testing.py).
CODE_PATHS = ("eeipu",)
# A real pipeline's studies also run the framework (the cache, the flows, the study loop)
# and the example projects' pipelines.
PIPELINE_CODE_PATHS = ("eeipu", "stages", "flows", "examples")
_PACKAGES = ("torch", "botorch", "gpytorch", "scipy", "optuna")
# Which saved raw runs may stand for a run of today's code: only those today's code made
# (same_code), or any with matching settings (any).
REUSE = ("same_code", "any")


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


def code_id(paths: Sequence[str] = CODE_PATHS, root: Path = ROOT) -> str:
    """A digest of the code under ``paths`` (folders or files relative to the repository
    root) as it runs: each Python file's syntax tree with its docstrings dropped (comments
    and formatting never reach the tree), every other file's bytes. Two checkouts with the
    same id run the same code; a docstring or comment edit keeps the id, any change to what
    runs gives another."""
    h = hashlib.blake2b(digest_size=8)
    for path in paths:
        top = root / path
        files = sorted(top.rglob("*")) if top.is_dir() else [top]
        for f in files:
            if not f.is_file() or "__pycache__" in f.parts or f.suffix == ".pyc":
                continue
            h.update(str(f.relative_to(root)).encode() + b"\0")
            data = f.read_bytes()
            if f.suffix == ".py":
                data = ast.dump(_without_docstrings(ast.parse(data))).encode()
            h.update(data + b"\0")
    return h.hexdigest()


def _without_docstrings(tree: ast.Module) -> ast.Module:
    """``tree`` without its bare string statements (docstrings, attribute docstrings): they
    do nothing when the code runs."""
    for node in ast.walk(tree):
        for field in ("body", "orelse", "finalbody"):
            stmts = getattr(node, field, None)
            if not isinstance(stmts, list) or not stmts or not isinstance(stmts[0], ast.stmt):
                continue
            kept = [
                st
                for st in stmts
                if not (
                    isinstance(st, ast.Expr)
                    and isinstance(st.value, ast.Constant)
                    and isinstance(st.value.value, str)
                )
            ]
            setattr(node, field, kept or [ast.Pass()])
    return tree


def provenance(paths: Sequence[str] = CODE_PATHS) -> dict[str, Any]:
    """The commit, the optimizer's code (:func:`code_id` of ``paths``), the package
    versions, the machine and the date, as a JSON-able dict. ``dirty``: the checkout had
    uncommitted changes; ``code_dirty``: some of them under ``paths``. Outside a git
    checkout the git fields are None."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain") if commit else None
    under = _git("status", "--porcelain", "--", *paths) if commit else None
    return {
        "commit": commit,
        "dirty": bool(status) if status is not None else None,
        "code": code_id(paths),
        "code_paths": list(paths),
        "code_dirty": bool(under) if under is not None else None,
        "python": platform.python_version(),
        **{name: _version(name) for name in _PACKAGES},
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def describe(runs: Iterable[Mapping[str, Any]]) -> str:
    """One line for a page: which commits made ``runs``, how many later commits change the
    code each run depended on, and how many versions of that code made them."""
    runs = list(runs)
    by_commit: dict[tuple[str, bool, tuple[str, ...]], int] = {}
    codes, dirty, unknown = set(), 0, 0
    for run in runs:
        made = run.get("provenance")
        if not made or not made.get("commit"):
            unknown += 1
            continue
        key = (made["commit"], bool(made.get("dirty")), tuple(made.get("code_paths") or ()))
        by_commit[key] = by_commit.get(key, 0) + 1
        codes.add(made.get("code"))
        dirty += bool(made.get("code_dirty"))
    head = _git("rev-parse", "HEAD")
    parts = []
    for (commit, was_dirty, paths), n in sorted(by_commit.items(), key=lambda kv: -kv[1]):
        label = f"`{commit[:10]}`" + (" with uncommitted changes" if was_dirty else "")
        label += f" ({n} runs"
        if head and commit != head:
            later = _git("rev-list", "--count", f"{commit}..{head}", "--", *(paths or CODE_PATHS))
            label += (
                f"; {later} later commits touch its code"
                if later is not None
                else "; not in this checkout's history"
            )
        parts.append(label + ")")
    line = f"Code: made by commit {'; '.join(parts)}" if parts else "Code:"
    if unknown:
        line += "; " if parts else " "
        line += f"not recorded for {unknown} runs (made before runs recorded their commit)"
    if not runs:
        line = "Code: no runs"
    if len(codes) > 1:
        line += f"; {len(codes)} different versions of the code they ran"
    elif codes:
        line += "; one version of the code they ran"
    paths = sorted({p for (_, _, ps) in by_commit for p in ps})
    if paths:
        line += f" ({', '.join(paths)}, docstrings and comments aside)"
    if dirty:
        line += f"; {dirty} runs with uncommitted changes to it"
    return line + "."


def made_by(run: Mapping[str, Any], code: str | None) -> bool:
    """Whether the optimizer code ``code`` (:func:`code_id`) made the raw run ``run``."""
    return (run.get("provenance") or {}).get("code") == code


def reusable(run: Mapping[str, Any] | None, reuse: str, code: str | None) -> bool:
    """Whether a saved raw run (None: none matched the settings) may stand for a run of
    today's code ``code``: made by that very code, or any code with ``reuse == "any"``."""
    if run is None:
        return False
    return reuse == "any" or made_by(run, code)


def reuse_note(stale: int, option: str) -> str:
    """The line a benchmark prints when ``option`` (``reuse=any``, ``--reuse any``) made it
    reuse ``stale`` raw runs of other code."""
    return (
        f"{option}: reusing {stale} raw runs made by other optimizer code than today's "
        "(the page says which commits made them)"
    )
