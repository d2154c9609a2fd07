"""docs/your-pipeline.md, run: every fenced block of the guide is checked or executed.

* A block after ``<!-- file: PATH -->`` must equal that file of the repository, so the
  example code the guide shows cannot drift from ``examples/digits_tuning``.
* Other ``python`` blocks run with the venv's ``python``, in a copy of the example project.
* ``bash`` blocks run in order with ``bash -e`` in that copy, as in one terminal: what a block
  exports is set for the blocks after it. The venv's ``bin`` comes first on ``PATH`` (so
  ``eeipu`` and ``prefect`` are the venv's), ``PYTHONPATH`` is unset (the example is a project
  outside the repository), ``PREFECT_HOME`` is a temporary folder, ``PREFECT_API_URL`` starts
  as the session's test server (the guide's commands would each start a temporary server
  otherwise) and the ``AWS_*`` variables point at the session's moto S3 server, where the
  guide's bucket ``my-bucket`` is created first.
* A ``bash`` block after ``<!-- runs until stopped -->`` starts in the background; the test
  waits until it is up (the Prefect server answers its health check; ``eeipu serve`` says it
  is serving and its deployment exists), checks it, and stops it when the guide no longer
  needs it. The guide's port 4200 is replaced by a free port (4200 may be taken here).
* A ``text`` block after ``<!-- output -->`` must match the output of the bash or python
  block before it: its lines, in order, with every number masked (they vary), ``...`` inside a line
  matching anything and a line ``...`` standing for lines left out.

Any other block fails the test, and the test asserts that it handled as many blocks as the
guide has.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "your-pipeline.md"
EXAMPLE = ROOT / "examples" / "digits_tuning"
VENV_BIN = Path(sys.executable).parent
BUCKET = "my-bucket"
GUIDE_PORT = "4200"
FIRST_RUN = "eeipu tune --config-dir conf pipeline=digits budget=3 n_init=4"

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
_MARKER = re.compile(r"<!--\s*(.*?)\s*-->\s*$")


@dataclass
class Block:
    """One fenced block: its language, body, the marker comment just above it, its line."""

    lang: str
    body: str
    marker: str | None
    line: int
    page: str = "docs/your-pipeline.md"

    def __str__(self) -> str:
        return f"the {self.lang or 'plain'} block at {self.page}:{self.line}"


def guide_blocks(guide: Path = GUIDE) -> list[Block]:
    """Every fenced block of ``guide`` (a page under docs/), in order."""
    text = guide.read_text()
    blocks = []
    for match in _FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = _MARKER.match(before.strip())
        blocks.append(
            Block(
                lang=match.group(1),
                body=match.group(2),
                marker=marker.group(1) if marker else None,
                line=text.count("\n", 0, match.start()) + 1,
                page=str(guide.relative_to(ROOT)),
            )
        )
    return blocks


def file_of(block: Block) -> Path | None:
    if block.marker and block.marker.startswith("file:"):
        return ROOT / block.marker.removeprefix("file:").strip()
    return None


def kind_of(block: Block) -> str:
    """How the test handles a block: file, python, bash, background or output."""
    if file_of(block) is not None:
        return "file"
    if block.lang == "python" and block.marker is None:
        return "python"
    if block.lang == "bash" and block.marker is None:
        return "bash"
    if block.lang == "bash" and block.marker == "runs until stopped":
        return "background"
    if block.lang == "text" and block.marker == "output":
        return "output"
    raise AssertionError(
        f"{block} (marker {block.marker!r}) is neither checked nor run: give it a "
        "`<!-- file: PATH -->` marker, make it python/bash, or mark its output `<!-- output -->`"
    )


# ---------------------------------------------------------------------- fast, static checks
def test_every_block_is_checked_or_run_and_example_files_match():
    blocks = guide_blocks()
    kinds = [kind_of(b) for b in blocks]  # raises on a block the test would not handle
    shown = set()
    for block in blocks:
        path = file_of(block)
        if path is not None:
            assert path.is_file(), f"{block} names {path}, which does not exist"
            assert block.body == path.read_text(), f"{block} differs from {path}"
            shown.add(path.relative_to(EXAMPLE).as_posix())
    assert shown == {"train_plain.py", "digits_tuning/pipeline.py", "conf/pipeline/digits.yaml"}
    for i, kind in enumerate(kinds):
        if kind == "output":
            assert i > 0 and kinds[i - 1] in ("bash", "python"), f"{blocks[i]} follows no command"
    assert kinds.count("bash") >= 8 and kinds.count("background") == 2


def test_the_example_uses_only_the_public_stages_api():
    for path in EXAMPLE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                parts = name.split(".")
                private = any(p.startswith("_") and p != "__future__" for p in parts[1:])
                assert not (parts[0] in ("stages", "flows", "eeipu") and private), (
                    f"{path.relative_to(ROOT)} imports the private {name}; use the public API"
                )
                assert parts[0] not in ("flows", "eeipu"), (
                    f"{path.relative_to(ROOT)} imports {name}: a pipeline needs only `stages`"
                )


def test_readmes_point_at_the_guide():
    assert "[Tune your own pipeline](docs/your-pipeline.md)" in (ROOT / "README.md").read_text()
    assert any(b.body.strip() == FIRST_RUN for b in guide_blocks())
    assert f"`{FIRST_RUN}`" in (EXAMPLE / "README.md").read_text()


# ---------------------------------------------------------------------- running the guide
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _mask(text: str) -> str:
    return re.sub(r"\d+(?:\.\d+)?(?:e[-+]?\d+)?", "#", text)


def assert_output_matches(shown: str, real: str, where: Block) -> None:
    """Each shown line (numbers masked, spaces collapsed) appears in the real output, in
    order; ``...`` in a line matches anything, a line ``...`` stands for omitted lines."""
    lines = [" ".join(_mask(x).split()) for x in real.splitlines()]
    pos = 0
    for want in shown.splitlines():
        if want.strip() == "...":
            continue
        parts = [re.escape(p) for p in " ".join(_mask(want).split()).split("...")]
        pattern = re.compile("^" + ".*".join(parts) + "$")
        for i in range(pos, len(lines)):
            if pattern.match(lines[i]):
                pos = i + 1
                break
        else:
            raise AssertionError(
                f"{where}: the line\n  {want}\nis not in the real output (after line {pos}):\n"
                + real[-4000:]
            )


@dataclass
class Terminal:
    """The guide's shell: a working folder, an environment that exports carry over to, and
    the background processes it started."""

    cwd: Path
    env: dict[str, str]
    port: str
    last_output: str = ""
    background: list[subprocess.Popen] = field(default_factory=list)

    def text(self, body: str) -> str:
        return body.replace(f":{GUIDE_PORT}", f":{self.port}")

    def bash(self, block: Block, timeout: float = 400) -> str:
        dump = self.cwd.parent / "env.dump"
        script = f"set -eo pipefail\n{self.text(block.body)}\nenv -0 > {dump}\n"
        t0 = time.monotonic()
        out = subprocess.run(
            ["bash", "-c", script],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        output = out.stdout + out.stderr
        assert out.returncode == 0, f"{block} failed ({out.returncode}):\n{output[-6000:]}"
        env = dict(line.split("=", 1) for line in dump.read_text().split("\0") if "=" in line)
        for name in ("_", "SHLVL", "PWD", "OLDPWD"):
            env.pop(name, None)
        self.env = env
        self.last_output = output
        print(f"{block}: {time.monotonic() - t0:.1f} s\n{output}")
        return output

    def python(self, block: Block) -> str:
        out = subprocess.run(
            ["python", "-"],
            input=block.body,
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, f"{block} failed:\n{(out.stdout + out.stderr)[-6000:]}"
        self.last_output = out.stdout
        return out.stdout

    def start(self, block: Block, log: Path, extra_env: dict[str, str]) -> subprocess.Popen:
        proc = subprocess.Popen(
            ["bash", "-c", f"exec {self.text(block.body).strip()}"],
            cwd=self.cwd,
            env={**self.env, **extra_env},
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped with what it started
        )
        self.background.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=20)


def wait_for(check: Callable[[], bool], what: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if check():
            return
        assert proc.poll() is None, f"{what}: exited with {proc.returncode}:\n{log.read_text()}"
        time.sleep(1)
    raise AssertionError(f"{what}: not up after 180 s:\n{log.read_text()[-4000:]}")


def _api(terminal: Terminal) -> str:
    return terminal.env["PREFECT_API_URL"].rstrip("/")


def _post(terminal: Terminal, path: str, body: dict) -> list[dict]:
    import httpx

    response = httpx.post(f"{_api(terminal)}/{path}", json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def _s3(env: dict[str, str]):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name=env["AWS_DEFAULT_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )


@pytest.fixture
def terminal(tmp_path, prefect_harness, moto_endpoint) -> Iterator[Terminal]:
    cwd = tmp_path / "digits_tuning"
    # Without what running the example in the repository may have left there.
    leftovers = shutil.ignore_patterns("__pycache__", ".eeipu", "outputs", "multirun")
    shutil.copytree(EXAMPLE, cwd, ignore=leftovers)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_API_URL=prefect_harness,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        AWS_ACCESS_KEY_ID="testing-key-id",
        AWS_SECRET_ACCESS_KEY="testing-secret-key",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=moto_endpoint,
    )
    s3 = _s3(env)
    s3.create_bucket(Bucket=BUCKET)
    term = Terminal(cwd=cwd, env=env, port=str(_free_port()))
    try:
        yield term
    finally:
        for proc in reversed(term.background):
            term.stop(proc)
        for obj in s3.list_objects_v2(Bucket=BUCKET).get("Contents", []):
            s3.delete_object(Bucket=BUCKET, Key=obj["Key"])
        s3.delete_bucket(Bucket=BUCKET)


def _run_background(terminal: Terminal, block: Block, n: int) -> None:
    log = terminal.cwd.parent / f"background-{n}.log"
    if block.body.strip() == "prefect server start":
        proc = terminal.start(block, log, {"PREFECT_SERVER_API_PORT": terminal.port})
        url = f"http://127.0.0.1:{terminal.port}/api/health"

        def healthy() -> bool:
            import httpx

            try:
                return httpx.get(url, timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, "prefect server start", proc, log)
        # The server stays up for the blocks after it; the fixture stops it.
    elif block.body.startswith("eeipu serve"):
        name = re.search(r"study=(\S+)", block.body).group(1)
        proc = terminal.start(block, log, {})
        wait_for(lambda: "being served" in log.read_text(), "eeipu serve", proc, log)
        deployments = _post(terminal, "deployments/filter", {"deployments": {}})
        (dep,) = [d for d in deployments if d["name"] == name]
        assert [s["schedule"]["cron"] for s in dep["schedules"]] == ["0 3 * * *"]
        terminal.stop(proc)
    else:
        raise AssertionError(f"{block}: the test has no check for this long-running command")


#: Checks after particular bash blocks: each runs after the first bash block that contains its
#: key, and each must run, so none is silently dropped when the guide changes.
def _after_first_run(terminal: Terminal) -> None:
    out = terminal.cwd / "outputs" / "digits-eeipu-seed0"
    assert {p.name for p in out.iterdir()} >= {"results.csv", "best.yaml", "best_vs_cost.png"}
    assert re.search(r"cached features", terminal.last_output), "no trial reused a stage"


def _after_s3(terminal: Terminal) -> None:
    s3 = _s3(terminal.env)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert any(k.startswith("digits/studies/digits-eeipu-seed0/") for k in keys), keys
    assert any(k.startswith("digits/data/") for k in keys), keys
    assert "digits-eeipu-seed0" in terminal.last_output  # eeipu studies --storage s3://...


def _after_ui_run(terminal: Terminal) -> None:
    assert terminal.port in _api(terminal), "the study did not talk to the guide's server"
    runs = _post(terminal, "flow_runs/filter", {"flow_runs": {"name": {"any_": ["digits-ui"]}}})
    assert [r["state_type"] for r in runs] == ["COMPLETED"], runs


def _after_limit(terminal: Terminal) -> None:
    (limit,) = [c for c in _post(terminal, "concurrency_limits/filter", {}) if c["tag"] == "gpu"]
    assert limit["concurrency_limit"] == 1


AFTER: dict[str, Callable[[Terminal], None]] = {
    FIRST_RUN: _after_first_run,
    "storage=s3": _after_s3,
    "study=digits-ui": _after_ui_run,
    "concurrency-limit create gpu": _after_limit,
}


# make test-extended: the guide's walk-through end to end. Each of its steps is checked on its
# own in make test: test_readme.py (the example from a folder of its own), tests/stages/
# test_s3.py, test_stage_tags.py (concurrency limits), test_warm_start.py (eeipu serve);
# the test above checks every block of the guide is run here or matches its file.
@pytest.mark.slow
@pytest.mark.extended
def test_the_guide_runs(terminal: Terminal):
    blocks = guide_blocks()
    handled: list[str] = []
    checked: list[str] = []
    for n, block in enumerate(blocks):
        kind = kind_of(block)
        if kind == "file":
            assert block.body == file_of(block).read_text(), f"{block} differs from its file"
        elif kind == "python":
            terminal.python(block)
        elif kind == "bash":
            terminal.bash(block)
            for key, check in AFTER.items():
                if key in block.body and key not in checked:
                    check(terminal)
                    checked.append(key)
        elif kind == "background":
            _run_background(terminal, block, n)
        elif kind == "output":
            assert_output_matches(block.body, terminal.last_output, block)
        handled.append(kind)
    assert len(handled) == len(blocks)
    assert sorted(checked) == sorted(AFTER), (
        f"checks that ran after no block: {set(AFTER) - set(checked)}"
    )
