"""Tuning a real Kedro project (stages.kedro, `kedro eeipu ...`).

Each test writes a spaceflights-style project (tests/kedro/spaceflights.py) and drives it
through Kedro's own command line in subprocesses, as a user would: Kedro configures
process-wide state (its settings, pipelines, logging) when it bootstraps a project, so no
project is opened in the test process. A Kedro hook in the project logs every node run.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import yaml

from stages import PipelineError
from stages.kedro import KedroSpec, _with_values
from tests.helpers import OPTIMIZER_FAST
from tests.kedro.spaceflights import EEIPU_YML, write_project

KEDRO = str(Path(sys.executable).parent / "kedro")
BIN = Path(sys.executable).parent


def _package() -> str:
    return f"sf_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A fresh project in a folder named as its package (the package is unique per test)."""
    package = _package()
    return write_project(tmp_path / package, package)


@pytest.fixture
def kedro_env(api_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """Subprocess environment: the session's Prefect server, no Kedro telemetry, a node log."""
    return {
        **api_env,
        "KEDRO_DISABLE_TELEMETRY": "true",
        "NODE_RUNS_LOG": str(tmp_path / "node_runs.log"),
    }


def _run(
    cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd,
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout + proc.stderr


def _node_runs(env: dict[str, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    log = Path(env["NODE_RUNS_LOG"])
    for line in log.read_text().split() if log.exists() else []:
        counts[line] = counts.get(line, 0) + 1
    return counts


def _records(project: Path, study: str) -> list[dict]:
    folder = project / ".eeipu" / "cache" / "studies" / study / "trials"
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def _keys(project: Path, params: dict, env: dict[str, str], pipeline: str = "__default__") -> dict:
    """The cache keys of ``params`` as a fresh process builds the project's pipeline."""
    script = textwrap.dedent(
        f"""
        import json
        from stages.kedro import kedro_pipeline
        pipe = kedro_pipeline({str(project)!r}, {pipeline!r})
        print(json.dumps(pipe.keys(json.loads({json.dumps(params)!r}))))
        """
    )
    out = _ok(_run([sys.executable, "-c", script], project, env))
    return json.loads(out.strip().splitlines()[-1])


def _error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The one ``error:`` line a refused command prints, and nothing like a traceback."""
    assert proc.returncode != 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


PARAMS = {
    "preprocess_shuttles_node": {"preprocessing.price_quantile": 0.95},
    "train_model_node": {"model_options.alpha": 1.0, "model_options.degree": 2},
}


# ---------------------------------------------------------------------- the spec
@pytest.mark.parametrize(
    ("conf", "message"),
    [
        (
            {
                "objective": "metrics",
                "space": {"params:a": {"type": "float", "low": 0, "high": 1}},
                "metirc": "r2",
            },
            "unknown key `metirc`",
        ),
        ({"space": {"params:a": {"type": "float", "low": 0, "high": 1}}}, "`objective` must name"),
        (
            {"objective": "m", "space": {"a": {"type": "float", "low": 0, "high": 1}}},
            "`space` key 'a' must be a parameter as nodes read it, `params:<name>`",
        ),
        (
            {"objective": "m", "space": {"params:a": {"type": "flaot", "low": 0, "high": 1}}},
            "`space`:",
        ),
        (
            {
                "objective": "m",
                "direction": "up",
                "space": {"params:a": {"type": "int", "low": 0, "high": 1}},
            },
            "`direction` must be 'maximize' or 'minimize'",
        ),
        ({"objective": "m", "space": {}}, "`space` must map `params:` keys"),
    ],
)
def test_spec_refuses_bad_input_in_one_line(conf: dict, message: str) -> None:
    with pytest.raises(PipelineError) as info:
        KedroSpec.from_mapping(conf, "conf/base/eeipu.yml")
    text = str(info.value)
    assert message in text and text.startswith("conf/base/eeipu.yml: ") and "\n" not in text


def test_tuned_values_go_where_the_node_reads_them() -> None:
    opts = {"alpha": 1.0, "inner": {"degree": 1, "keep": True}}
    values = {"model_options.alpha": 0.5, "model_options.inner.degree": 3, "other.x": 9}
    assert _with_values(dict(opts, inner=dict(opts["inner"])), "params:model_options", values) == {
        "alpha": 0.5,
        "inner": {"degree": 3, "keep": True},
    }
    assert _with_values(1.0, "params:model_options.alpha", values) == 0.5
    assert _with_values({"other": {"x": 1}}, "parameters", {"other.x": 9}) == {"other": {"x": 9}}


# ---------------------------------------------------------------------- a study
@pytest.mark.slow
def test_kedro_eeipu_tune_memoizes_nodes_and_best_write_reproduces(
    project: Path, kedro_env: dict[str, str]
) -> None:
    package = project.name
    out = _ok(
        _run(
            [KEDRO, "eeipu", "tune", "budget=10000", "n_init=4", "max_trials=9", *OPTIMIZER_FAST],
            project,
            kedro_env,
        )
    )
    study = f"{package}-eeipu-seed0"
    assert f"study '{study}'" in out and "stopped: max_trials=9 reached" in out
    records = _records(project, study)
    assert len(records) == 9 and all(r["state"] == "complete" for r in records)
    # A tuned parameter belongs to the node that reads it.
    assert {s for s, p in records[0]["params"].items() if p} == PARAMS.keys()

    # Each node ran once per distinct value of the tuned parameters upstream of it: the
    # rest came from the cache (the hook sees every node run, Kedro's runner ran them).
    quantiles = {
        r["params"]["preprocess_shuttles_node"]["preprocessing.price_quantile"] for r in records
    }
    full = {json.dumps(r["params"], sort_keys=True) for r in records}
    runs = _node_runs(kedro_env)
    assert runs == {
        "preprocess_companies_node": 1,
        "preprocess_shuttles_node": len(quantiles),
        "create_model_input_table_node": len(quantiles),
        "split_data_node": len(quantiles),
        "train_model_node": len(full),
        "evaluate_model_node": len(full),
    }
    assert len(quantiles) < len(records), "the optimizer never reused a prefix"

    # The best trial, written back as Kedro parameters, reproduces its objective.
    best = max(records, key=lambda r: r["objective"])
    printed = _ok(_run([KEDRO, "eeipu", "best"], project, kedro_env))
    assert f"best trial {best['number']}" in printed and "params:model_options.alpha:" in printed
    wrote = _ok(_run([KEDRO, "eeipu", "best", "--write"], project, kedro_env))
    assert "wrote conf/eeipu/parameters_eeipu.yml" in wrote
    written = (project / "conf" / "eeipu" / "parameters_eeipu.yml").read_text()
    assert "split_options" not in written  # only the mappings that hold tuned values
    _ok(_run([KEDRO, "run", "--env", "eeipu"], project, kedro_env))
    metrics = pickle.loads((project / "data" / "08_reporting" / "metrics.pickle").read_bytes())
    assert metrics["r2_score"] == pytest.approx(best["objective"], rel=1e-9)

    # The recommended trial (best posterior mean), as the study's best.yaml has it.
    shown = yaml.safe_load((project / "outputs" / study / "best.yaml").read_text())["recommended"]
    printed = _ok(_run([KEDRO, "eeipu", "best", "--recommended"], project, kedro_env))
    assert "recommended (posterior mean" in printed and f"trial {shown['trial']}," in printed
    alpha = shown["params"]["train_model_node"]["model_options.alpha"]
    line = next(x for x in printed.splitlines() if x.startswith("params:model_options.alpha:"))
    assert yaml.safe_load(line)["params:model_options.alpha"] == alpha

    # The user's own files are never overwritten.
    (project / "conf" / "eeipu" / "parameters_eeipu.yml").write_text("mine: 1\n")
    line = _error_line(_run([KEDRO, "eeipu", "best", "--write"], project, kedro_env))
    assert "exists and was not written by eeipu" in line
    assert (project / "conf" / "eeipu" / "parameters_eeipu.yml").read_text() == "mine: 1\n"


# ---------------------------------------------------------------------- cache keys
@pytest.mark.slow
def test_keys_follow_node_code_parameters_and_raw_data(
    project: Path, kedro_env: dict[str, str]
) -> None:
    before = _keys(project, PARAMS, kedro_env)
    src = next((project / "src").iterdir()) / "pipelines"
    nodes = src / "data_science" / "nodes.py"
    text = nodes.read_text()

    # A comment or a reformat changes nothing.
    nodes.write_text(text.replace('    y = data["price"]', '    y = data["price"]  # target'))
    assert _keys(project, PARAMS, kedro_env) == before

    # Editing a node recomputes it and what depends on it, nothing upstream.
    nodes.write_text(text.replace("astype(float)", "astype('float64')"))
    after = _keys(project, PARAMS, kedro_env)
    changed = {s for s in before if before[s] != after[s]}
    assert changed == {"split_data_node", "train_model_node", "evaluate_model_node"}
    nodes.write_text(text)

    # An untuned parameter joins the keys of the nodes that read it.
    params = project / "conf" / "base" / "parameters.yml"
    params.write_text(params.read_text().replace("random_state: 3", "random_state: 4"))
    after = _keys(project, PARAMS, kedro_env)
    assert {s for s in before if before[s] != after[s]} == changed

    # So does a raw dataset's content, for the nodes that load it and their descendants.
    raw = project / "data" / "01_raw" / "shuttles.csv"
    raw.write_text(raw.read_text().replace(",1,", ",2,", 1))
    again = _keys(project, PARAMS, kedro_env)
    assert again["preprocess_companies_node"] == before["preprocess_companies_node"]
    assert again["preprocess_shuttles_node"] != after["preprocess_shuttles_node"]


# ---------------------------------------------------------------------- modular pipelines
@pytest.mark.slow
def test_namespaced_pipeline_and_eeipu_tune_entry(
    project: Path, kedro_env: dict[str, str], tmp_path: Path
) -> None:
    ns = project / "conf" / "ns"
    ns.mkdir()
    (ns / "eeipu.yml").write_text(
        "objective: candidate.metrics\n"
        "space:\n"
        "  params:candidate.model_options.alpha: {type: float, low: 0.01, high: 10.0, log: true}\n"
        "  params:preprocessing.price_quantile: {type: float, low: 0.8, high: 1.0}\n"
    )
    package = project.name
    _ok(
        _run(
            [
                KEDRO,
                "eeipu",
                "tune",
                "--pipeline",
                "namespaced",
                "--env",
                "ns",
                "budget=10000",
                "n_init=3",
                "max_trials=4",
                *OPTIMIZER_FAST,
            ],
            project,
            kedro_env,
        )
    )
    records = _records(project, f"{package}.namespaced-eeipu-seed0")
    assert len(records) == 4 and all(r["state"] == "complete" for r in records)
    assert {s for s, p in records[0]["params"].items() if p} == {
        "preprocess_shuttles_node",
        "candidate.train_model_node",
    }
    runs = _node_runs(kedro_env)
    assert runs["candidate.split_data_node"] == len(
        {r["params"]["preprocess_shuttles_node"]["preprocessing.price_quantile"] for r in records}
    )

    # The same project through `eeipu tune pipeline=kedro`, from another folder, two
    # trials at a time (executor=local), then resumed for one more trial.
    study = [
        str(BIN / "eeipu"), "tune", "pipeline=kedro", f"pipeline.kwargs.project={project}",
        f"storage.url={tmp_path / 'cache'}", f"output_dir={tmp_path / 'out'}",
        "study=from-eeipu", "budget=10000", "n_init=2", *OPTIMIZER_FAST,
    ]  # fmt: skip
    out = _ok(_run([*study, "max_trials=2", "executor=local", "parallel=2"], tmp_path, kedro_env))
    assert "stopped: max_trials=2 reached" in out
    out = _ok(_run([*study, "max_trials=3"], tmp_path, kedro_env))
    assert "resum" in out and "done: 3 trials" in out
    trials = tmp_path / "cache" / "studies" / "from-eeipu" / "trials"
    assert len(list(trials.glob("*.json"))) == 3
    # ... where a direction other than the project's is refused, in one line.
    proc = _run(
        [
            str(BIN / "eeipu"),
            "tune",
            "pipeline=kedro",
            f"pipeline.kwargs.project={project}",
            "pipeline.direction=minimize",
            f"storage.url={tmp_path / 'cache2'}",
        ],
        tmp_path,
        kedro_env,
    )
    assert "says 'maximize': set pipeline.direction=maximize" in _error_line(proc)


# ---------------------------------------------------------------------- bad input
@pytest.mark.slow
def test_bad_input_is_one_line(project: Path, kedro_env: dict[str, str]) -> None:
    eeipu_yml = project / "conf" / "base" / "eeipu.yml"
    tune = [KEDRO, "eeipu", "tune", "budget=10000", "n_init=2", "max_trials=2", *OPTIMIZER_FAST]

    eeipu_yml.write_text(EEIPU_YML.replace("model_options.alpha", "model_options.alpah"))
    line = _error_line(_run(tune, project, kedro_env))
    assert "'params:model_options.alpah' is not a parameter of the project" in line
    assert "['alpha', 'degree']" in line

    eeipu_yml.write_text(EEIPU_YML.replace("objective: metrics", "objective: metrix"))
    assert "`objective` 'metrix' is not an output" in _error_line(_run(tune, project, kedro_env))

    eeipu_yml.write_text(EEIPU_YML)
    line = _error_line(_run([*tune[:3], "--pipeline", "nope", *tune[3:]], project, kedro_env))
    assert "'nope' is not a pipeline of the project" in line
    assert not (project / ".eeipu" / "cache" / "studies").exists()  # nothing half-written

    # A node output the cache cannot store: the trial fails naming the node and dataset.
    nodes = next((project / "src").iterdir()) / "pipelines" / "data_processing" / "nodes.py"
    nodes.write_text(
        nodes.read_text().replace(
            "    return table.dropna()",
            "    import threading\n\n    table = table.dropna()\n"
            "    table.attrs['lock'] = threading.Lock()\n    return table",
        )
    )
    out = _ok(_run(tune, project, kedro_env))
    failed = [line for line in out.splitlines() if "FAILED" in line]
    assert len(failed) == 2
    assert all(
        "node 'create_model_input_table_node': output 'model_input_table' cannot be pickled" in line
        for line in failed
    )
