"""The installed package, as a user gets it: the wheel carries the framework and its default
configs only (no example project, no example library imported), and ``eeipu tune
--config-dir conf pipeline=mine`` runs a user's own pipeline from a folder that holds only
their module and YAML (no checkout of this repository in sight), where a folder of theirs
named like one of our packages does not shadow it.

The wheel goes into a fresh venv outside the repository; its dependencies come from the
project's venv through a ``.pth`` line (``--no-deps``: nothing is downloaded but the build
backend), so the test checks our packaging, not PyPI.
"""

from __future__ import annotations

import ast
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


#: The example projects' libraries (the ``examples`` extra): no module of the wheel imports them.
EXAMPLE_LIBRARIES = {"sklearn", "threadpoolctl", "transformers", "rouge_score"}
UV = Path(sys.executable).parent / "uv"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The project's wheel, built from this checkout."""
    tmp = tmp_path_factory.mktemp("wheel")
    _run([str(UV), "build", "--wheel", "--out-dir", str(tmp / "dist"), str(ROOT)])
    (built,) = (tmp / "dist").glob("eeipu-*.whl")
    return built


def _imports(source: str) -> set[str]:
    """The top-level names of the modules a Python file imports (absolute imports only)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_the_wheel_holds_the_framework_only(wheel):
    archive = zipfile.ZipFile(wheel)
    names = archive.namelist()
    for config in ("config.yaml", "serve.yaml", "pipeline/synthetic.yaml", "storage/s3.yaml"):
        assert f"flows/conf/{config}" in names, f"the wheel lacks flows/conf/{config}"
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"eeipu", "stages", "flows"}, tops
    assert {"eeipu/testing.py", "stages/testing.py"} <= set(names)
    assert not [n for n in names if n.startswith("stages/pipelines/")]
    example_configs = {"ml_stacking", "vision_cnn", "t5_distill", "pretrain_probe"}
    assert not [n for n in names if Path(n).stem in example_configs], names
    for name in (n for n in names if n.endswith(".py")):
        used = _imports(archive.read(name).decode()) & EXAMPLE_LIBRARIES
        assert not used, f"{name} imports {sorted(used)}, a library of the examples extra"


def test_the_users_folder_goes_after_the_installed_packages(tmp_path, monkeypatch):
    from flows.cli import append_user_folder

    monkeypatch.setattr(sys, "path", ["/elsewhere", str(tmp_path)])
    append_user_folder(str(tmp_path))  # already there: left where it is
    assert sys.path == ["/elsewhere", str(tmp_path)]
    monkeypatch.chdir(tmp_path / "..")
    append_user_folder()
    assert sys.path == ["/elsewhere", str(tmp_path), os.getcwd()]


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh venv outside the repository with the project's wheel installed; returns
    its bin folder."""
    tmp = tmp_path_factory.mktemp("venv")
    venv = tmp / "venv"
    _run([str(UV), "venv", "-q", "-p", sys.executable, str(venv)])
    python = venv / "bin" / "python"
    site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    # The project's dependencies, after the venv's own packages on sys.path.
    Path(site.stdout.strip(), "deps-of-the-project-venv.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n"
    )
    _run([str(UV), "pip", "install", "-q", "-p", str(python), "--no-deps", str(wheel)])
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


def test_a_users_stages_or_flows_folder_does_not_shadow_ours(installed, tmp_path):
    """``eeipu tune`` in a folder with its own ``stages`` and ``flows`` packages imports the
    installed framework (and still finds the user's own module there)."""
    for package in ("stages", "flows"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("raise ImportError('shadowed')\n")
    (tmp_path / "conf" / "pipeline").mkdir(parents=True)
    (tmp_path / "mypipe.py").write_text(USER_MODULE)
    (tmp_path / "conf" / "pipeline" / "mine.yaml").write_text(USER_YAML)
    env = _clean_env(tmp_path, "http://127.0.0.1:9/api")  # nothing may reach Prefect
    cmd = [str(installed / "eeipu"), "tune", "--config-dir", "conf", "pipeline=mine", "--cfg"]
    proc = _run([*cmd, "job", "--resolve"], cwd=tmp_path, env=env)
    assert "target: mypipe.make_pipeline" in proc.stdout, proc.stdout[-2000:]
    # The study code (which `--cfg` does not reach) imports stages after the folder is on
    # sys.path, and the target from the folder: as the task function does, in one process.
    check = [str(installed / "python"), "-P", "-c", CHECK_IMPORTS]
    out = _run(check, cwd=tmp_path, env=env).stdout.split()
    assert out[2] == str(tmp_path / "mypipe.py") and str(tmp_path) not in out[0] + out[1], out


# What `eeipu tune` does before it imports the study code: the user's folder on sys.path.
CHECK_IMPORTS = """
import flows.cli
flows.cli.append_user_folder()
import flows.tune, stages, mypipe
print(flows.tune.__file__, stages.__file__, mypipe.__file__)
"""


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
