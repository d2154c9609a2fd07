"""MkDocs hook (mkdocs.yml): the repository's Markdown outside ``docs/`` joins the site.

``README.md`` is the home page (``index.md``) and the benchmark pages
(``benchmarks/results/*.md`` with their plots) are ``benchmarks/results/...``, read where
they lie, so the site never holds a stale copy. Links keep the form that works on GitHub,
relative to the file (``docs/your-pipeline.md`` in the README,
``../benchmarks/results/noisy.md`` in ``docs/benchmarks.md``); :func:`on_page_markdown`
points those that leave ``docs/`` at the page that the site holds for their target.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.plugins import get_plugin_logger
from mkdocs.structure.files import File, Files

REPO = Path(__file__).resolve().parents[2]
RESULTS = "benchmarks/results"
# The nav entry that stands for the result pages: one page for each, after their index.
RESULTS_INDEX = f"{RESULTS}/index.md"

log = get_plugin_logger(__name__)

# site page (src_uri) -> the repository file it is read from
_SOURCES: dict[str, str] = {}
# [text](target) and ![alt](target "title"); a target with a space is code, not a link
_LINK = re.compile(r"(!?\[[^\]\n]*\])\(([^()\s]+)((?:\s+\"[^\"]*\")?)\)")


def _result_pages() -> list[Path]:
    return sorted((REPO / RESULTS).glob("*.md"))


def _title(path: Path) -> str:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    return first.lstrip("# ").removeprefix("Benchmark: ") if first.startswith("#") else path.stem


def on_config(config: Any) -> Any:
    """Expand the nav's ``benchmarks/results/index.md`` into a section of every page."""

    def expand(items: list[Any]) -> list[Any]:
        out = []
        for item in items:
            title, value = next(iter(item.items())) if isinstance(item, dict) else (None, item)
            if isinstance(value, list):
                value = expand(value)
            elif value == RESULTS_INDEX:
                value = [
                    RESULTS_INDEX,
                    *({_title(p): f"{RESULTS}/{p.name}"} for p in _result_pages()),
                ]
            out.append({title: value} if title is not None else value)
        return out

    config.nav = expand(config.nav or [])
    return config


def _results_index() -> str:
    rows = "\n".join(f"| [{_title(p)}]({p.name}) | `{RESULTS}/{p.name}` |" for p in _result_pages())
    return (
        "# Benchmark pages\n\n"
        "One page per problem, written by the benchmark scripts (`benchmarks/suite.py`, "
        "`benchmarks/family.py`); each says how it was made and the command that regenerates "
        "it. [Benchmarks](../../docs/benchmarks.md) describes the problems and the methods.\n\n"
        f"| page | file |\n|---|---|\n{rows}\n"
    )


def on_files(files: Files, config: Any) -> Files:
    def add(src_uri: str, repo_path: str) -> None:
        files.append(File.generated(config, src_uri, abs_src_path=str(REPO / repo_path)))
        _SOURCES[src_uri] = repo_path

    add("index.md", "README.md")
    for path in sorted((REPO / RESULTS).iterdir()):
        if path.is_file() and path.suffix in (".md", ".png"):
            add(f"{RESULTS}/{path.name}", f"{RESULTS}/{path.name}")
    files.append(File.generated(config, RESULTS_INDEX, content=_results_index()))
    _SOURCES[RESULTS_INDEX] = RESULTS_INDEX
    return files


def _site_path(repo_path: str) -> str | None:
    """The site page of a repository path, or None if the site holds none."""
    if repo_path.startswith("docs/"):
        return repo_path.removeprefix("docs/")
    if repo_path == "README.md":
        return "index.md"
    if repo_path == RESULTS:
        return RESULTS_INDEX
    if repo_path.startswith(f"{RESULTS}/") and (REPO / repo_path).is_file():
        return repo_path
    return None


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    """Point the links of a page that leave ``docs/`` (as read on GitHub) at the site's page."""
    src_uri = page.file.src_uri
    source = _SOURCES.get(src_uri, f"docs/{src_uri}")
    here = posixpath.dirname(source)

    def relink(match: re.Match[str]) -> str:
        label, target, title = match.groups()
        if re.match(r"^[a-z][a-z0-9+.-]*:|^#|^/", target):
            return match.group(0)  # a URL, an anchor on this page, or site-absolute
        path, hash_, anchor = target.partition("#")
        repo_path = posixpath.normpath(posixpath.join(here, path))
        if repo_path.startswith("docs/") and source.startswith("docs/"):
            return match.group(0)  # within docs/: MkDocs checks it as it is
        site = _site_path(repo_path)
        if site is None:
            log.warning(
                "%s links to %r, which is not in the site; link a page under docs/ or write "
                "the path as code (`%s`)",
                source,
                target,
                repo_path,
            )
            return match.group(0)
        rel = posixpath.relpath(site, posixpath.dirname(src_uri) or ".")
        return f"{label}({rel}{hash_}{anchor}{title})"

    # Outside fenced code blocks only: `f(**p["x"])` in a code block is no link.
    parts = re.split(
        r"(^[ \t]*(?:```|~~~).*?^[ \t]*(?:```|~~~)[^\n]*$)", markdown, flags=re.M | re.S
    )
    return "".join(p if i % 2 else _LINK.sub(relink, p) for i, p in enumerate(parts))
