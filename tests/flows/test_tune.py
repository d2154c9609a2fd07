"""End to end: Hydra configs, the controller flow on a real Prefect server, local and S3
caches, resume, multirun and bad input through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from flows import ConfigError, StudyConfig
from tests.helpers import EI, ENTRY_POINTS, FAST, ROOT, cli, composed, journal, run_study


# ---------------------------------------------------------------------- configs
def test_shipped_configs_compose_and_validate():
    for method in ("eeipu", "ei", "eips", "carbo", "ms_carbo", "ms_bo", "lambo", "random"):
        cfg = StudyConfig.from_mapping(composed(f"optimizer={method}"))
        assert cfg.optimizer.method == method
        assert cfg.study == f"synthetic-{method}-seed0"
    cfg = StudyConfig.from_mapping(composed("budget=300", "optimizer=ei", "seed=4"))
    expected = (300.0, "ei", 4, "synthetic-ei-seed4")
    assert (cfg.budget, cfg.optimizer.method, cfg.seed, cfg.study) == expected
    s3 = StudyConfig.from_mapping(composed("storage=s3", "storage.url=s3://b-1/p"))
    assert s3.storage.url == "s3://b-1/p" and s3.storage.protocol == "s3"
    assert list(cfg.pipeline.space) == ["prep", "train", "finetune"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["budget=-1"], "`budget` must be a positive number, but got -1"),
        (["n_init=0"], "`n_init` must be a positive integer"),
        (["study=a b"], "`study` must be 1-100 letters"),
        (["pipeline.direction=up"], "`pipeline.direction` must be 'maximize' or 'minimize'"),
        (["pipeline.space.prep.x0.low=20"], "`low < high` must hold, but got low=20"),
        (["pipeline.space.prep.x0.type=double"], "`type` must be one of"),
        (
            ["storage=s3", "storage.url=s3://Bad_Bucket/x"],
            "`storage.url` must look like s3://bucket/prefix",
        ),
        (["retries=-2"], "`retries` must be >= 0"),
        (["max_trials=0"], "`max_trials` must be a positive integer, but got 0"),
    ],
)
def test_config_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as info:
        StudyConfig.from_mapping(composed(*overrides))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------- studies in process
@pytest.mark.slow
def test_study_outputs_journal_and_resume(prefect_harness, tmp_path):
    result = run_study(tmp_path, "study=s1")
    records = journal(tmp_path, "s1")
    assert result.n_trials == len(records) >= 4
    assert result.spent >= 40.0
    assert [r["number"] for r in records] == list(range(len(records)))
    for r in records:
        assert set(r) >= {
            "params",
            "objective",
            "costs",
            "cached",
            "state",
            "seconds",
            "asked_at",
        }
        assert r["state"] == "complete"
    assert any(r["cached"] for r in records[3:]), "EEIPU never reused a cached prefix"
    out = tmp_path / "out" / "s1"
    assert (out / "results.csv").read_text().count("\n") == len(records) + 1
    assert "objective:" in (out / "best.yaml").read_text()
    assert (out / "best_vs_cost.png").read_bytes()[:4] == b"\x89PNG"
    n_entries = len(list((tmp_path / "cache" / "meta").glob("*.json")))

    # the same study again: resumed from the journal, nothing recomputed or re-told
    again = run_study(tmp_path, "study=s1")
    assert again.n_trials == result.n_trials and again.best_objective == result.best_objective
    assert len(journal(tmp_path, "s1")) == len(records)
    assert len(list((tmp_path / "cache" / "meta").glob("*.json"))) == n_entries

    # the Prefect side: trial-<n> subflows tagged with the study, and the three artifacts
    from prefect import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterTags,
    )

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=["study:s1"]))
        )
        assert {r.name for r in runs} >= {f"trial-{i}" for i in range(len(records))}
        keys = ["s1-progress", "s1-trials", "s1-best"]
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys))
        )
        assert {a.key for a in arts} == set(keys)
        kinds = {a.key: a.type for a in arts}
        assert kinds == {"s1-progress": "progress", "s1-trials": "table", "s1-best": "markdown"}

    # a new study with the same seed shares the cache: its warm-up loads every stage
    run_study(tmp_path, "study=s2")
    warm = journal(tmp_path, "s2")[:3]
    assert all(r["cached"] == ["prep", "train", "finetune"] for r in warm)


def test_resume_with_other_settings_is_refused_and_max_trials_caps(prefect_harness, tmp_path):
    capped = run_study(tmp_path, "study=s3", "budget=1000", "max_trials=2")
    assert capped.n_trials == 2 and capped.spent < 1000
    run_study(tmp_path, "study=s3", "budget=20")
    with pytest.raises(ConfigError, match=r"already exists .* with a different method"):
        run_study(tmp_path, "study=s3", *EI)


@pytest.mark.extended  # make test-extended: a variant of tests/stages/test_s3.py, test_parallel.py
def test_s3_study_then_new_process_hits_cache(prefect_harness, s3_bucket, tmp_path, api_env):
    from flows.tune import run

    url = f"s3://{s3_bucket}/cache"
    cfg = composed(*FAST, "storage=s3", f"storage.url={url}", "study=s3a", "budget=30")
    cfg["output_dir"] = str(tmp_path / "out")
    run(cfg)
    env = {**api_env, **{k: os.environ[k] for k in os.environ if k.startswith("AWS_")}}
    work = tmp_path / "work"
    work.mkdir()
    proc = cli(
        *FAST, "storage=s3", f"storage.url={url}", "study=s3b", "budget=30", env=env, cwd=work
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    import boto3

    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    body = s3.get_object(Bucket=s3_bucket, Key="cache/studies/s3b/trials/000000.json")["Body"]
    first = json.loads(body.read())
    assert first["cached"] == ["prep", "train", "finetune"]
    assert not (work / ".eeipu").exists(), "the S3 study wrote to the local default cache"
    assert (work / "outputs" / "s3b" / "results.csv").exists()
    for secret in ("testing-secret-key", "testing-key-id"):
        assert secret not in proc.stdout + proc.stderr
        assert secret not in json.dumps(first)


# ---------------------------------------------------------------------- the real CLI
# The `eeipu` script in make test, `python -m flows.tune` (same main) in make test-extended.
@pytest.mark.slow
@pytest.mark.parametrize(
    "entry",
    [
        pytest.param(name, marks=[pytest.mark.extended] if "python" in name else [])
        for name in ENTRY_POINTS
    ],
)
def test_cli_multirun_two_studies_share_one_cache(tmp_path, api_env, entry):
    cache = tmp_path / "cache"
    # Options both methods use: ei refuses the prefix-pool options (eeipu's alone).
    shared = [o for o in FAST if ".prefix_" not in o]
    proc = cli(
        "-m",
        *shared,
        "budget=25",
        "optimizer=eeipu,ei",
        f"storage.url={cache}",
        env=api_env,
        cwd=tmp_path,
        entry=entry,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p for p in (tmp_path / "multirun").glob("*/*") if p.is_dir())
    names = [p.name for p in runs]
    assert names == ["0-synthetic-eeipu-seed0", "1-synthetic-ei-seed0"]
    for p in runs:
        assert (p / "results.csv").exists() and (p / "best.yaml").exists()
    assert sorted(x.name for x in (cache / "studies").iterdir()) == [
        "synthetic-eeipu-seed0",
        "synthetic-ei-seed0",
    ]
    # the second job's warm-up (same seed) came from the first job's cache
    ei = sorted((cache / "studies" / "synthetic-ei-seed0" / "trials").glob("*.json"))
    assert json.loads(ei[0].read_text())["cached"] == ["prep", "train", "finetune"]


_TWO_STUDIES = """
import sys
from flows.tune import run
from tests.helpers import FAST, composed
for seed in (0, 1):
    cfg = composed(*FAST, f"seed={seed}", f"storage.url={sys.argv[1]}/cache")
    cfg["output_dir"] = f"{sys.argv[1]}/out{seed}"
    run(cfg)
"""


@pytest.mark.slow
# make test-extended: a variant of tests/flows/test_interrupt.py, whose studies start
# temporary servers of their own too.
@pytest.mark.extended
def test_two_studies_in_one_process_on_temporary_servers_exit_promptly(tmp_path):
    """No PREFECT_API_URL: each study starts and stops a temporary server of its own.
    Prefect's events worker is process-wide; unless it is drained while its server runs,
    the second study's events go to the first (stopped) server and the process exit waits
    ~7 s for each of them (over 4 minutes here before the fix): the subprocess would time
    out, and stderr says so."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-c", _TWO_STUDIES, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = sorted(p.name for p in (tmp_path / "cache" / "studies").iterdir())
    assert names == ["synthetic-eeipu-seed0", "synthetic-eeipu-seed1"]
    for said in ("Unable to connect", "failed to process item", "Still processing items"):
        assert said not in proc.stderr + proc.stdout


@pytest.mark.extended  # make test-extended: a variant of test_fast_paths.py
def test_cli_rerun_of_a_finished_study_answers_from_the_journal(tmp_path, api_env):
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    def study_runs() -> int:
        with get_client(sync_client=True) as client:
            flt = FlowRunFilter(name=FlowRunFilterName(any_=["rerun-fin"]))
            return len(client.read_flow_runs(flow_run_filter=flt))

    # Flow runs are counted by name on the session's server, which other tests' studies share:
    # a name of this test's own, and counts relative to the start.
    runs_before = study_runs()
    args = [*FAST, "study=rerun-fin", "budget=100", f"storage.url={tmp_path / 'cache'}"]
    first = cli(*args, "max_trials=2", env=api_env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    folder = tmp_path / "cache" / "studies" / "rerun-fin"
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    (tmp_path / "outputs" / "rerun-fin" / "results.csv").unlink()

    # Nothing left to run: answered without any Prefect API call (none is reachable here),
    # so no server start and no flow run; the journal is untouched, the outputs rewritten.
    down = {**api_env, "PREFECT_API_URL": "http://127.0.0.1:9/api"}
    again = cli(*args, "max_trials=2", env=down, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "study 'rerun-fin': nothing left to run (max_trials=2 reached)" in again.stderr
    done = [line for line in again.stderr.splitlines() if line.startswith("done:")]
    assert done == [line for line in first.stderr.splitlines() if line.startswith("done:")]
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    assert (tmp_path / "outputs" / "rerun-fin" / "results.csv").read_text().count("\n") == 3
    assert study_runs() - runs_before == 1

    # Something left to run (a larger max_trials): the flow runs as before.
    more = cli(*args, "max_trials=3", env=api_env, cwd=tmp_path)
    assert more.returncode == 0, more.stderr[-3000:]
    assert len(journal(tmp_path, "rerun-fin")) == 3 and study_runs() - runs_before == 2


# In process, every rule: tests/flows/test_bad_input.py. Here the real CLI: the cases that
# need torch (each a few seconds) in make test-extended.
_EXT = pytest.mark.extended


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["pipeline=nope"], "error: no pipeline config named 'nope'; the pipeline configs are "),
        (["optimizer=nope"], "error: no optimizer config named 'nope'; the optimizer configs "),
        (["storage=nope"], "error: no storage config named 'nope'; the storage configs are "),
        (
            ["pipeline.space.train.x1.high=-1"],
            "error: `pipeline.space`: `low < high` must hold, but got low=0.0, high=-1 (stage 'train', parameter 'x1')",
        ),
        pytest.param(
            ["+optimizer.options.num_restarts=0"],
            "error: `num_restarts` must be a positive integer, but got 0",
            marks=_EXT,
        ),
        (
            ["storage=s3"],
            "error: `storage.url` is required but missing; set it, e.g. storage.url=...",
        ),
        pytest.param(
            ["pipeline.target=stages.nothing_here"],
            "error: `pipeline.target` must name an importable function",
            marks=_EXT,
        ),
        pytest.param(
            ["+pipeline.kwargs.fail_stage=zz"],
            "error: `pipeline.kwargs` do not fit stages.testing.synthetic_pipeline: `fail_stage` must be one of",
            marks=_EXT,
        ),
    ],
)
def test_cli_bad_input_one_line_error(tmp_path, api_env, args, message):
    storage = (
        [] if any(a.startswith("storage=") for a in args) else [f"storage.url={tmp_path / 'cache'}"]
    )
    proc = cli(*args, *storage, env=api_env, cwd=tmp_path)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "cache").exists() and not (tmp_path / ".eeipu").exists()


def test_cli_unreachable_endpoint_and_missing_bucket(tmp_path, api_env, moto_endpoint):
    env = {
        **api_env,
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    down = cli(
        "storage=s3",
        "storage.url=s3://bucket-x/p",
        env={**env, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"},
        cwd=tmp_path,
    )
    assert down.returncode == 2
    assert (
        "error: cannot reach storage s3://bucket-x/p (endpoint http://127.0.0.1:9)" in down.stderr
    )
    missing = cli(
        "storage=s3",
        "storage.url=s3://no-such-bucket/p",
        env={**env, "AWS_ENDPOINT_URL": moto_endpoint},
        cwd=tmp_path,
    )
    assert missing.returncode == 2
    assert "bucket 'no-such-bucket' does not exist; create it first" in missing.stderr
    assert "Traceback" not in down.stderr + missing.stderr


@pytest.mark.slow
def test_cli_failing_stage_stops_with_message_and_keeps_journal(tmp_path, api_env):
    cache = tmp_path / "cache"
    proc = cli(
        *FAST,
        "study=boom",
        "continue_on_failure=false",
        "+pipeline.kwargs.fail_stage=train",
        "+pipeline.kwargs.fail_above=0.5",
        f"storage.url={cache}",
        env=api_env,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(line) == 1
    assert "stage 'train'" in line[0] and "injected failure" in line[0] and "resume" in line[0]
    records = journal(tmp_path, "boom")
    assert records and records[-1]["state"] == "failed"
    assert all(r["state"] == "complete" for r in records[:-1])
    assert records[-1]["costs"].get("prep") is not None


@pytest.mark.slow
def test_continue_on_failure_records_failed_trials_and_goes_on(prefect_harness, tmp_path):
    result = run_study(
        tmp_path,
        "study=cont",
        "budget=30",
        "+pipeline.kwargs.fail_stage=train",
        "+pipeline.kwargs.fail_above=0.5",
    )
    records = journal(tmp_path, "cont")
    failed = [r for r in records if r["state"] == "failed"]
    assert failed and all("injected failure" in r["error"] for r in failed)
    assert all(set(r["costs"]) <= {"prep", "train"} for r in failed)
    assert result.spent >= 30.0 and result.best_objective is not None
    # the optimizer moved away from the failing region (train.x0 > 0.5) after warm-up
    late = records[3:]
    assert sum(r["params"]["train"]["x0"] <= 0.5 for r in late) > len(late) / 2
