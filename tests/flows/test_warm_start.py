"""Warm-started and continued studies (``warm_start``, ``extra_budget``) and the scheduled
deployment of ``python -m flows.serve``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows import ConfigError, StudyConfig
from tests.helpers import OPTIMIZER_FAST, composed

FAST = ["n_init=3", *OPTIMIZER_FAST]


def run_study(tmp_path: Path, *overrides: str):
    from flows.tune import run

    cfg = composed(*FAST, f"storage.url={tmp_path / 'cache'}", *overrides)
    cfg["output_dir"] = str(tmp_path / "out" / cfg["study"])
    return run(cfg)


def journal(tmp_path: Path, study: str) -> tuple[dict, list[dict]]:
    folder = tmp_path / "cache" / "studies" / study
    header = json.loads((folder / "study.json").read_text())
    return header, [json.loads(p.read_text()) for p in sorted(folder.glob("trials/*.json"))]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["warm_start=old"], "`warm_start` must be a list of study names"),
        (["warm_start=[a b]"], "`warm_start` must hold study names, but got 'a b'"),
        (["study=s", "warm_start=[s]"], "`warm_start` must not name the study itself ('s')"),
        (["warm_start=[a,a]"], "`warm_start` names a study twice"),
        (["extra_budget=0"], "`extra_budget` must be a positive number, but got 0"),
        (["parallel=0"], "`parallel` must be a positive integer, but got 0"),
    ],
)
def test_config_errors(overrides, message):
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        StudyConfig.from_mapping(composed(*overrides))


@pytest.mark.slow
def test_extra_budget_continues_the_same_study(prefect_harness, tmp_path):
    first = run_study(tmp_path, "study=cont", "budget=20", "extra_budget=15")
    header, records = journal(tmp_path, "cont")
    assert header["budget"] == 20.0 and first.spent >= 20.0 and first.n_trials == len(records)
    # a scheduled run: same study, resumed from its journal, 15 more budget
    second = run_study(tmp_path, "study=cont", "budget=20", "extra_budget=15")
    header, records = journal(tmp_path, "cont")
    # the previous budget, or what was spent where the last trial overshot it, plus 15
    assert header["budget"] == pytest.approx(max(20.0, first.spent) + 15.0)
    assert second.spent >= header["budget"] and second.n_trials == len(records) > first.n_trials
    assert [r["number"] for r in records] == list(range(len(records)))


def test_extra_budget_smaller_than_the_overshoot_still_runs(prefect_harness, tmp_path):
    # One warm-up trial costs more than the whole first budget; the extra budget is less
    # than that overshoot, yet the continued run has the extra to spend.
    first = run_study(tmp_path, "study=over", "budget=0.01")
    assert first.n_trials == 1 and first.spent > 0.01 + 0.001
    second = run_study(tmp_path, "study=over", "extra_budget=0.001")
    header, records = journal(tmp_path, "over")
    assert header["budget"] == pytest.approx(first.spent + 0.001)
    assert second.n_trials == len(records) == 2


@pytest.mark.slow
def test_warm_start_feeds_priors_and_is_journaled(prefect_harness, tmp_path):
    run_study(tmp_path, "study=src", "budget=40")
    _, source = journal(tmp_path, "src")
    warm = run_study(
        tmp_path, "study=dst", "seed=1", "budget=60", "max_trials=6", "warm_start=[src]"
    )
    header, records = journal(tmp_path, "dst")
    assert header["warm_start"] == [["src", len(source)]]
    # The priors spend none of this study's budget and take no trial numbers.
    assert [r["number"] for r in records] == list(range(len(records)))
    assert warm.spent == pytest.approx(sum(sum(r["costs"].values()) for r in records))
    assert [r["origin"] for r in records[:3]] == ["warmup"] * 3
    # The source's cached prefixes are in the pool: a model-guided trial reuses one.
    assert any(r["cached"] for r in records[3:]), "no trial reused the source's cache"

    # The same study resumes with the journaled priors; another source is refused.
    from flows.study import prepare

    again = StudyConfig.from_mapping(
        composed(*FAST, f"storage.url={tmp_path / 'cache'}", "study=dst", "seed=1", "budget=60")
    )
    opt, _ = prepare(again)
    assert len(opt.priors) == len(source) and opt.spent == 0.0
    with pytest.raises(ConfigError, match="already exists with warm_start=\\['src'\\]"):
        run_study(tmp_path, "study=dst", "seed=1", "warm_start=[cont]")
    with pytest.raises(ConfigError, match="`warm_start` names study 'nope', but there is no"):
        run_study(tmp_path, "study=dst2", "warm_start=[nope]")
    with pytest.raises(ConfigError, match="different space"):
        run_study(tmp_path, "study=dst3", "pipeline.space.prep.x0.low=-4", "warm_start=[src]")


def test_serve_builds_a_cron_deployment(tmp_path):
    from flows.serve import deployment

    cfg = composed(
        f"storage.url={tmp_path / 'cache'}", "study=nightly", 'cron="*/5 * * * *"', config="serve"
    )
    dep = deployment(cfg)
    assert dep.name == "nightly" and dep.concurrency_limit == 1
    assert [s.schedule.cron for s in dep.schedules] == ["*/5 * * * *"]
    params = dep.parameters["config"]
    assert params["study"] == "nightly" and params["extra_budget"] == 50.0
    assert "cron" not in params and dep.entrypoint == "flows.study.tune_flow"
    with pytest.raises(ConfigError, match="`cron` must be a cron expression"):
        deployment({**cfg, "cron": "every day"})
    with pytest.raises(ConfigError, match="`extra_budget` must be set"):
        deployment({**cfg, "extra_budget": None})


@pytest.mark.slow
def test_served_deployment_runs_continue_the_study(prefect_harness, tmp_path):
    """``python -m flows.serve`` against the session's server; two runs of its deployment
    (what the cron schedule triggers) continue one study with extra budget each."""
    import os
    import subprocess
    import sys
    import time

    from prefect import get_client
    from prefect.deployments import run_deployment

    cache = tmp_path / "cache"
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_harness,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    args = [*FAST, f"storage.url={cache}", "study=sched", "budget=20", "extra_budget=10"]
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.serve", *args, 'cron="0 3 * * *"'],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        with get_client(sync_client=True) as client:
            deadline = time.time() + 180
            while True:
                try:
                    dep = client.read_deployment_by_name("eeipu-study/sched")
                    break
                except Exception:
                    if proc.poll() is not None or time.time() > deadline:
                        raise
                    time.sleep(1)
        assert [s.schedule.cron for s in dep.schedules] == ["0 3 * * *"]
        budgets, spent = [], []
        for _ in range(2):
            run = run_deployment("eeipu-study/sched", timeout=300, as_subflow=False)
            assert run.state.is_completed(), run.state
            header, records = journal(tmp_path, "sched")
            budgets.append(header["budget"])
            spent.append(sum(sum(r["costs"].values()) for r in records))
        # the second run: what the first spent (at least its budget) plus 10
        assert budgets == [20.0, pytest.approx(max(20.0, spent[0]) + 10.0)]
        assert spent[1] >= budgets[1] and spent[0] >= 20.0
        assert [r["number"] for r in records] == list(range(len(records)))
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()
        print((tmp_path / "serve.log").read_text(errors="replace")[-3000:])
