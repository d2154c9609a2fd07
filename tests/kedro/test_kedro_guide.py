"""docs/kedro.md, run: every fenced block of the guide is checked or executed.

* A block after ``<!-- file: PATH -->`` must equal that file of the example project
  (tests/kedro/spaceflights.py writes it, package ``spaceflights``).
* ``bash`` blocks run in order with ``bash -e`` in the project's root, the venv's ``bin``
  first on ``PATH``, the session's Prefect server, Kedro's telemetry off.
* A ``text`` block after ``<!-- output -->`` must match the output of the block before it
  (tests/test_guide.py's rule: lines in order, numbers masked, ``...`` for anything).
* The one other block is the install line, checked against pyproject's extras.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.kedro.spaceflights import write_project
from tests.test_guide import assert_output_matches, guide_blocks

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "kedro.md"
INSTALL = "pip install 'eeipu[kedro]'\n"


def test_the_install_line_names_a_real_extra() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert any(kedro.startswith("kedro>=") for kedro in extras["kedro"])
    assert [b.body for b in guide_blocks(GUIDE) if b.lang == "text" and b.marker is None] == [
        INSTALL
    ]


@pytest.mark.slow
def test_the_kedro_guide_runs(tmp_path: Path, api_env: dict[str, str]) -> None:
    project = write_project(tmp_path / "spaceflights", "spaceflights")
    env = {
        **os.environ,
        **api_env,
        "KEDRO_DISABLE_TELEMETRY": "true",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    env.pop("PYTHONPATH", None)
    handled = 0
    last = ""
    blocks = guide_blocks(GUIDE)
    for block in blocks:
        lang, body, marker, where = block.lang, block.body, block.marker, str(block)
        if marker and marker.startswith("file:"):
            path = project / marker.removeprefix("file:").strip()
            assert path.read_text() == body, f"{where} differs from the project's {path.name}"
        elif marker == "output":
            assert_output_matches(body, last, where)
        elif lang == "bash":
            proc = subprocess.run(
                ["bash", "-c", f"set -eo pipefail\n{body}"],
                cwd=project,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            last = proc.stdout + proc.stderr
            assert proc.returncode == 0, f"{where} failed:\n{last[-6000:]}"
        else:
            assert (lang, body) == ("text", INSTALL), f"{where}: a block the test cannot check"
        handled += 1
    assert handled == len(blocks) >= 9
    # What the guide promises of the written parameters: `kedro run --env eeipu` scored the
    # best trial again (the run above wrote the metrics the study's best trial had).
    import pickle

    metrics = pickle.loads((project / "data" / "08_reporting" / "metrics.pickle").read_bytes())
    written = (project / "conf" / "eeipu" / "parameters_eeipu.yml").read_text()
    best = re.search(r"objective (\S+)$", written, re.MULTILINE)
    assert best is not None
    assert f"{metrics['r2_score']:.6g}" == best.group(1)
