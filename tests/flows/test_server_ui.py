"""End to end in a real browser: a ``prefect server start`` server, a short study run by the
CLI against it, and headless Chromium (Debian's, installed by ``make test``) on the UI page
of the study's flow run, where the trials table artifact must show.

The screenshot goes to the test's temporary folder; ``EEIPU_UPDATE_SCREENSHOTS=1`` writes it
to ``docs/prefect_ui_trials.png`` instead (the one in ``docs/parallel.md``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import OPTIMIZER_FAST, ROOT, stop

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
STUDY = "ui-demo"
FAST = ["n_init=3", "budget=25", "max_trials=5", *OPTIMIZER_FAST]

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _server_env(home: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=home,
        PREFECT_SERVER_API_HOST="127.0.0.1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_LEVEL="WARNING",
    )
    return env


@pytest.fixture(scope="module")
def prefect_server() -> Iterator[str]:
    """``prefect server start`` on 127.0.0.1 with its own (pre-migrated) home; yields the
    server's base URL (the UI; the API is under ``/api``)."""
    home = tempfile.mkdtemp(prefix="eeipu-ui-server-")
    env = _server_env(home)
    prefect = str(Path(sys.executable).with_name("prefect"))
    subprocess.run(
        [prefect, "server", "database", "upgrade", "-y"],
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    port = _free_port()
    # The UI asks the API at this URL (default: port 4200).
    env["PREFECT_UI_API_URL"] = f"http://127.0.0.1:{port}/api"
    log = open(Path(home) / "server.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-services"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(
                    "prefect server did not start: "
                    + (Path(home) / "server.log").read_text(errors="replace")[-2000:]
                )
            time.sleep(0.5)
        yield url
    finally:
        stop(proc, log)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def study_run(prefect_server: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Run a short study with the CLI against the server; returns its flow run id."""
    work = tmp_path_factory.mktemp("ui-study")
    env = {
        **_server_env(str(work / "client-home")),
        "PREFECT_API_URL": f"{prefect_server}/api",
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.tune",
            *FAST,
            f"study={STUDY}",
            f"storage.url={work}/c",
            f"hydra.run.dir={work}/out",  # keep the repository's outputs/ untouched
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    query = json.dumps({"flow_runs": {"name": {"any_": [STUDY]}}}).encode()
    req = urllib.request.Request(
        f"{prefect_server}/api/flow_runs/filter",
        data=query,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        runs = json.loads(resp.read())
    assert len(runs) == 1, runs
    assert runs[0]["state_type"] == "COMPLETED"
    return runs[0]["id"]


def _browser(tmp: Path):
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        message = f"{CHROMIUM} / {CHROMEDRIVER} missing: `make test` installs them (make browser)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager download
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def test_ui_shows_the_study_and_its_trials_table(prefect_server, study_run, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = _browser(tmp_path)
    shots = ROOT / "docs" if os.environ.get("EEIPU_UPDATE_SCREENSHOTS") else tmp_path
    body = lambda d: d.find_element(By.TAG_NAME, "body").text  # noqa: E731
    wait = WebDriverWait(driver, 90, poll_frequency=0.5)
    try:
        driver.set_page_load_timeout(60)
        # Prefect 3's UI route for a flow run; its tabs are <li class="p-tab" id=...>.
        driver.get(f"{prefect_server}/runs/flow-run/{study_run}")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "li.p-tab#subflow-runs"))
        assert STUDY in body(driver) and "eeipu-study" in body(driver)
        # The subflows: one trial-<n> per trial.
        driver.find_element(By.CSS_SELECTOR, "li.p-tab#subflow-runs").click()
        wait.until(lambda d: "trial-0" in body(d) and "trial-3" in body(d))
        # The artifacts: progress, best configuration and the trials table.
        driver.find_element(By.CSS_SELECTOR, "li.p-tab#artifacts").click()
        wait.until(lambda d: f"{STUDY}-trials" in body(d))
        text = body(driver)
        assert f"Trials of study {STUDY}" in text and "TABLE" in text
        assert f"{STUDY}-best" in text and f"{STUDY}-progress" in text
        _screenshot(driver, shots / "prefect_ui_trials.png")
        # The table artifact itself renders one row per trial.
        driver.find_element(By.PARTIAL_LINK_TEXT, f"{STUDY}-trials").click()
        wait.until(lambda d: "/artifacts/artifact/" in d.current_url and "objective" in body(d))
        _screenshot(driver, shots / "prefect_ui_trials_table.png")
    finally:
        driver.quit()


def _screenshot(driver, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(path))
    assert path.read_bytes()[:4] == b"\x89PNG"
