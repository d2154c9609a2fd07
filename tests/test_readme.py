"""README.md's example, run as a new user would: its ``digits.py`` and search space written to
a folder outside the repository, and its ``$ eeipu ...`` commands run there in order with
the venv's ``eeipu`` (``PYTHONPATH`` unset, the session's Prefect server), so the example
cannot drift from the code."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def _block_after(text: str, lead: str, lang: str) -> str:
    """The first ``lang`` block after the line containing ``lead``."""
    start = text.index(lead)
    for match in _FENCE.finditer(text, start):
        if match.group(1) == lang:
            return match.group(2)
    raise AssertionError(f"no {lang} block after {lead!r} in README.md")


@pytest.mark.slow
def test_the_readme_example_runs_from_a_folder_of_its_own(tmp_path, api_env):
    text = README.read_text()
    (tmp_path / "digits.py").write_text(_block_after(text, "`digits.py`:", "python"))
    (tmp_path / "conf" / "pipeline").mkdir(parents=True)
    yaml = _block_after(text, "The search space, `conf/pipeline/digits.yaml`:", "yaml")
    (tmp_path / "conf" / "pipeline" / "digits.yaml").write_text(yaml)
    session = _block_after(text, "then print its best configuration:", "text")
    commands = [line[2:] for line in session.splitlines() if line.startswith("$ ")]
    assert [c.split()[:2] for c in commands] == [["eeipu", "tune"], ["eeipu", "best"]]

    bin_dir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(api_env, PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}")
    said = []
    for command in commands:
        proc = subprocess.run(
            shlex.split(command),
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # as a terminal shows them: progress goes to stderr
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, f"{command}: {proc.stdout[-3000:]}"
        said.append(proc.stdout)
    tune, best = said
    first = "study 'digits-eeipu-seed0': pipeline digits (features -> train), method eeipu"
    assert first in tune, tune[:3000]
    assert "| cached features " in tune  # a trial that loaded the PCA features
    assert re.search(r"^done: \d+ trials, spent .*/2 .*stopped: budget 2 spent", tune, re.M)
    assert re.search(r"^features:\n  n_components: \d+\ntrain:\n  C: .*\n  gamma: ", best, re.M)
    assert (tmp_path / "outputs" / "digits-eeipu-seed0" / "results.csv").is_file()
