"""The Python API (``flows.Study``): a real small study, bad input in one line, and the
docs page's examples run as written (docs/python-api.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows import ConfigError, Study, StudyResult
from stages.testing import synthetic_pipeline
from tests.helpers import OPTIMIZER_FAST, ROOT
from tests.test_guide import assert_output_matches, guide_blocks

PAGE = ROOT / "docs" / "python-api.md"
SYNTHETIC = "stages.testing:synthetic_pipeline"
FLOAT = {"type": "float", "low": 0.0, "high": 1.0}
# OPTIMIZER_FAST's options, as Study's method_options.
FAST_OPTIONS = {
    key.removeprefix("+optimizer.options."): float(value) if "." in value else int(value)
    for key, value in (o.split("=") for o in OPTIMIZER_FAST)
}


def _study(tmp_path: Path, pipeline: object = SYNTHETIC, **settings: object) -> Study:
    settings = {
        "budget": 40.0,
        "n_init": 3,
        "storage": str(tmp_path / "cache"),
        "output_dir": str(tmp_path / "out"),
        "progress": False,
        **settings,
    }
    return Study(pipeline, **settings)


def test_a_small_study_returns_a_typed_result_and_resumes(prefect_harness, tmp_path):
    study = _study(tmp_path, name="api", method="eeipu", method_options=FAST_OPTIONS)
    result = study.optimize()
    assert isinstance(result, StudyResult) and result.study == "api"
    assert result.n_trials >= 4 and result.spent >= 40.0
    assert set(result.best_params) == {"prep", "train", "finetune"}
    assert result.best_trial is not None and result.best_objective is not None
    assert all(Path(p).is_file() for p in result.outputs.values())
    # The journal makes the same study a resume: nothing left to run, the same answer.
    again = _study(tmp_path, name="api", method="eeipu", method_options=FAST_OPTIONS).optimize()
    assert (again.n_trials, again.best_objective) == (result.n_trials, result.best_objective)


def test_a_pipeline_object_runs_like_its_factory(prefect_harness, tmp_path):
    by_target = _study(tmp_path, name="t", method="random", max_trials=4).optimize()
    by_object = _study(
        tmp_path, synthetic_pipeline(), name="o", method="random", max_trials=4
    ).optimize()
    # Same seed, same draws, same stages: the same objectives (the object's run loads
    # every stage from the cache the factory's run filled, as the keys are the same).
    assert by_object.best_params == by_target.best_params
    assert by_object.best_objective == by_target.best_objective


@pytest.mark.parametrize(
    ("pipeline", "settings", "message"),
    [
        (SYNTHETIC, {"budget": -1}, "`budget` must be a positive number, but got -1"),
        (SYNTHETIC, {"budget": 3, "budgte": 2}, "unknown key `budgte`; did you mean `budget`?"),
        (SYNTHETIC, {"budget": 3, "method": "nope"}, "`optimizer.method` must be one of"),
        (3, {"budget": 3}, "`pipeline` must be a stages.Pipeline or a factory"),
        (SYNTHETIC, {"budget": 3, "space": {"nope": {"x": FLOAT}}}, None),
    ],
)
def test_bad_input_is_one_line_naming_the_key(
    prefect_harness, tmp_path, pipeline, settings, message
):
    if message is None:  # a space for a stage the pipeline lacks: said when it is built
        study = _study(tmp_path, pipeline, **settings)
        with pytest.raises(ConfigError, match=r"`pipeline.space` names unknown stage\(s\)"):
            study.optimize()
        assert not (tmp_path / "cache").exists()  # bad input leaves nothing behind
        return
    with pytest.raises(ConfigError) as info:
        _study(tmp_path, pipeline, **settings)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_pipeline_object_refuses_workers_that_must_rebuild_it(prefect_harness, tmp_path):
    study = _study(tmp_path, synthetic_pipeline(), parallel=2, executor="task_workers")
    with pytest.raises(ConfigError, match="`executor` task_workers runs trials in other"):
        study.optimize()


def test_the_docs_page_runs(api_env, tmp_path):
    """Every python block of docs/python-api.md runs as written (in a fresh folder), and
    prints what the ``<!-- output -->`` block after it shows (numbers masked)."""
    blocks = guide_blocks(PAGE)
    ran = 0
    for i, block in enumerate(blocks):
        if block.lang != "python":
            continue
        script = tmp_path / f"block{i}.py"
        script.write_text(block.body)
        done = subprocess.run(
            [sys.executable, str(script)],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env={**os.environ, **api_env, "PYTHONPATH": str(ROOT)},
            timeout=600,
        )
        assert done.returncode == 0, f"{block}:\n{done.stderr[-3000:]}"
        after = blocks[i + 1] if i + 1 < len(blocks) else None
        if after is not None and after.marker == "output":
            assert_output_matches(after.body, done.stdout, block)
        ran += 1
    assert ran == 3
