"""The installed package, as a user gets it: the wheel carries the default configs, and
``eeipu tune --config-dir conf pipeline=mine`` runs a user's own pipeline from a folder that
holds only their module and YAML (no checkout of this repository in sight).

The wheel goes into a fresh venv outside the repository; its dependencies come from the
project's venv through a ``.pth`` line (``--no-deps``: nothing is downloaded but the build
backend), so the test checks our packaging, not PyPI.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

USER_MODULE = '''
"""A user's two-stage pipeline: only the public ``stages`` API."""
from stages import Pipeline, stage


@stage(space={"width": {"type": "int", "low": 1, "high": 8}})
def featurize(width):
    return [i / width for i in range(width)]


@stage(inputs=["featurize"], space={"scale": {"type": "float", "low": 0.0, "high": 2.0}})
def score(featurize, scale):
    return -((sum(featurize) * scale - 1.5) ** 2)


def make_pipeline():
    return Pipeline([featurize, score])
'''

USER_YAML = """\
name: mine
target: mypipe.make_pipeline
kwargs: {}
direction: maximize
metric: null
space:
  featurize:
    width: {type: int, low: 1, high: 8}
  score:
    scale: {type: float, low: 0.0, high: 2.0}
"""


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kwargs)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv outside the repository with the project's wheel installed; returns
    its bin folder."""
    tmp = tmp_path_factory.mktemp("wheel")
    uv = Path(sys.executable).parent / "uv"
    _run([str(uv), "build", "--wheel", "--out-dir", str(tmp / "dist"), str(ROOT)])
    (wheel,) = (tmp / "dist").glob("eeipu-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for config in ("config.yaml", "serve.yaml", "pipeline/synthetic.yaml", "storage/s3.yaml"):
        assert f"flows/conf/{config}" in names, f"the wheel lacks flows/conf/{config}"
    venv = tmp / "venv"
    _run([str(uv), "venv", "-q", "-p", sys.executable, str(venv)])
    python = venv / "bin" / "python"
    site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    # The project's dependencies, after the venv's own packages on sys.path.
    Path(site.stdout.strip(), "deps-of-the-project-venv.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n"
    )
    _run([str(uv), "pip", "install", "-q", "-p", str(python), "--no-deps", str(wheel)])
    return venv / "bin"


def _clean_env(tmp: Path, api_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PREFECT_API_URL=api_url, PREFECT_HOME=str(tmp / "prefect-home"))
    return env


@pytest.mark.slow
def test_wheel_runs_a_users_study_from_their_own_folder(installed, tmp_path, prefect_harness):
    user = tmp_path / "project"
    (user / "conf" / "pipeline").mkdir(parents=True)
    (user / "mypipe.py").write_text(USER_MODULE)
    (user / "conf" / "pipeline" / "mine.yaml").write_text(USER_YAML)
    env = _clean_env(tmp_path, prefect_harness)

    where = _run(
        [str(installed / "python"), "-c", "import flows, stages; print(flows.__file__)"],
        cwd=user,
        env=env,
    )
    assert not where.stdout.strip().startswith(str(ROOT)), where.stdout  # the installed copy

    cmd = [str(installed / "eeipu"), "tune", "--config-dir", "conf", "pipeline=mine"]
    args = ["budget=100", "n_init=2", "max_trials=4", "storage.url=cache", "study=mine-1"]
    proc = _run([*cmd, *args, "+optimizer.options.num_restarts=2"], cwd=user, env=env)
    out = proc.stdout + proc.stderr
    assert "pipeline mine (featurize -> score)" in out, out[-2000:]
    assert "done: 4 trials" in out, out[-2000:]
    assert (user / "cache" / "studies" / "mine-1" / "study.json").exists()
    assert (user / "outputs" / "mine-1" / "best.yaml").exists()
    assert sorted(p.name for p in user.iterdir()) == ["cache", "conf", "mypipe.py", "outputs"]
    listing = _run([str(installed / "eeipu"), "studies", "--storage", "cache"], cwd=user, env=env)
    assert "1 study in" in listing.stdout and "mine-1" in listing.stdout, listing.stdout


def test_installed_command_help_and_errors(installed, tmp_path):
    env = _clean_env(tmp_path, "http://127.0.0.1:9/api")  # nothing may reach Prefect
    usage = _run([str(installed / "eeipu"), "--help"], cwd=tmp_path, env=env).stdout
    for command in ("tune", "serve", "studies", "show", "best", "cache"):
        assert f"  {command} " in usage
    bad = subprocess.run(
        [str(installed / "eeipu"), "tnue"], capture_output=True, text=True, env=env
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "error: unknown command 'tnue'; commands: tune, serve, worker, studies, show, best, cache"
    ]
    # A user's pipeline name that does not exist: one line, exit code 2.
    missing = subprocess.run(
        [str(installed / "eeipu"), "tune", "pipeline=nope"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert missing.returncode == 2
    assert "error: no pipeline config named 'nope'" in missing.stderr
