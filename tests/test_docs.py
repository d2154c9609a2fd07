"""The documentation site builds with no warning, and its API reference lists every public name.

``make docs`` runs the same strict build; the reference pages are generated at build time
by ``docs/hooks`` (see ``mkdocs.yml``), so a renamed key or command, a broken link or a
public name without a docstring fails here.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


# One xdist worker (make test runs two) builds the site once: session scope, as xdist may
# interleave other modules' tests with these.
pytestmark = pytest.mark.xdist_group("docs")


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=600,
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    assert "WARNING" not in log, log
    return out


@pytest.mark.parametrize("package", ["eeipu", "stages", "flows"])
def test_the_reference_lists_every_public_name(site: Path, package: str) -> None:
    html = (site / "reference" / "api" / package / "index.html").read_text()
    names = importlib.import_module(package).__all__
    missing = [name for name in names if f'id="{package}.{name}"' not in html]
    assert not missing, f"{package}: not in the API reference: {missing}"


def test_generated_pages_and_pages_from_outside_docs(site: Path) -> None:
    config = (site / "reference" / "configuration" / "index.html").read_text()
    for key in ("budget", "max_bytes", "warm_start", "prefix_starts", "concurrency_limit"):
        assert f"<code>{key}</code>" in config, key
    cli = (site / "reference" / "cli" / "index.html").read_text()
    assert "usage: eeipu show" in cli and "tune is powered by Hydra" in cli
    # README.md is the home page, its links to docs/ point into the site
    home = (site / "index.html").read_text()
    assert 'href="your-pipeline/"' in home
    # every benchmark page is in the site, with its plot
    for page in (ROOT / "benchmarks" / "results").glob("*.md"):
        assert (site / "benchmarks" / "results" / page.stem / "index.html").is_file(), page
        if page.with_suffix(".png").is_file():
            assert (site / "benchmarks" / "results" / f"{page.stem}.png").is_file(), page
