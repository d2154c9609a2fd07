"""The T5 distillation pipeline at size=smoke: bad input, determinism, the real trial
subflow with its cached prefixes, and a tiny study through ``flows.tune.run``."""

from __future__ import annotations

import io
import json
import math

import pytest
import torch
from t5_distill import T5_DISTILL_SPACE, baselines, t5_distill_pipeline

from flows import ConfigError, StudyConfig
from tests.examples.example_configs import example_composed
from tests.helpers import FAST

STAGES = ["data", "teacher", "student1", "student2", "student3"]
STUDENT = {"lr": 3e-3, "temperature": 2.0, "weight_decay": 1e-3, "alpha": 0.5}
PARAMS_A = {
    "data": {"batch_size": 16, "max_input_len": 96},
    "teacher": {"lr": 3e-3, "weight_decay": 1e-3},
    "student1": STUDENT,
    "student2": STUDENT,
    "student3": STUDENT,
}
# Shares data and teacher with A, differs from student1 on.
PARAMS_B = {
    **PARAMS_A,
    "student1": {**STUDENT, "temperature": 4.0},
    "student2": {**STUDENT, "lr": 1e-3},
}


def _state(blob: bytes) -> dict[str, torch.Tensor]:
    return torch.load(io.BytesIO(blob), weights_only=True)


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": "huge"}, "`size` must be 'smoke', 'full' or 'gpu', but got 'huge'"),
        ({"size": "gpu"}, "`size` 'gpu' needs device='cuda', but got device='cpu'"),
        ({"device": "tpu"}, "`device` must be 'cpu' or 'cuda', but got 'tpu'"),
        ({"seed": "zero"}, "`seed` must be an integer, but got 'zero'"),
        ({"threads": 0}, "`threads` must be a positive integer or None, but got 0"),
    ],
)
def test_bad_kwargs_raise_one_line_value_error(kwargs, message):
    with pytest.raises(ValueError) as info:
        t5_distill_pipeline(**kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_unavailable_cuda_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"`device` 'cuda' is not available on this machine"):
        t5_distill_pipeline(size="smoke", device="cuda")


def test_gpu_size_is_built_only_for_cuda(monkeypatch):
    from t5_distill import _all_modules

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert t5_distill_pipeline(size="gpu", device="cuda").stage_names == STAGES
    modules = _all_modules()  # the gpu size's corpus: every stdlib file but the tests
    assert list(modules) == sorted(modules) and "asyncio/base_events" in modules
    assert not any(m.startswith("test/") for m in modules)


def test_bad_size_stops_the_study_before_anything_runs(tmp_path):
    from flows.tune import run

    cfg = example_composed("t5_distill", "size=huge", f"storage.url={tmp_path / 'cache'}")
    cfg["output_dir"] = str(tmp_path / "out")
    with pytest.raises(
        ConfigError, match=r"`size` must be 'smoke', 'full' or 'gpu', but got 'huge'"
    ):
        run(cfg)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()


def test_yaml_space_matches_the_stages():
    cfg = StudyConfig.from_mapping(example_composed("t5_distill"))
    assert cfg.pipeline.space == T5_DISTILL_SPACE
    assert t5_distill_pipeline(size="smoke").space_dict() == T5_DISTILL_SPACE
    assert cfg.pipeline.metric == "rougeLsum" and cfg.pipeline.direction == "maximize"


# ---------------------------------------------------------------------- the task
def test_examples_are_docstrings_labelled_with_their_module():
    data = t5_distill_pipeline(size="smoke")["data"](**PARAMS_A["data"])
    modules = {"abc", "base64", "bisect", "calendar", "cmd", "code", "copy"}
    assert set(data["train_refs"]) | set(data["val_refs"]) <= modules
    assert len(data["train_refs"]) == data["train_x"].shape[0] == 16
    assert len(data["val_refs"]) == len(data["val_inputs"]) == data["val_x"].shape[0] == 8


def test_baselines_score_the_trivial_predictions():
    data = t5_distill_pipeline(size="smoke")["data"](**PARAMS_A["data"])
    scores = baselines(data)
    assert set(scores) == {"constant", "copy", "most_frequent"}
    assert all(0.0 <= v <= 1.0 for v in scores.values())
    # A constant name part never beats the most frequent name on exact one-word targets.
    assert scores["constant"] <= scores["most_frequent"] + 1e-12


def test_student_starts_as_the_teacher_with_every_other_block():
    from t5_distill import _SIZES, _load_model, _student_from_teacher

    pipe = t5_distill_pipeline(size="smoke")
    data = pipe["data"](**PARAMS_A["data"])
    teacher = _load_model(
        _SIZES["smoke"].teacher,
        pipe["teacher"](data=data, **PARAMS_A["teacher"]),
        torch.device("cpu"),
    )
    student = _student_from_teacher(_SIZES["smoke"], teacher)
    t, s = teacher.state_dict(), student.state_dict()
    assert len(student.encoder.block) == 1 < len(teacher.encoder.block) == 2
    assert all(torch.equal(s[k], t[k]) for k in s)  # block 0 kept, block 1 dropped


def test_alpha_weighs_the_distillation_term():
    pipe = t5_distill_pipeline(size="smoke")
    data = pipe["data"](**PARAMS_A["data"])
    teacher = pipe["teacher"](data=data, **PARAMS_A["teacher"])
    alone = {**STUDENT, "alpha": 0.0}
    a, again, c = (
        _state(pipe["student1"](data=data, teacher=teacher, **p)) for p in (alone, alone, STUDENT)
    )
    assert all(torch.equal(a[k], again[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


# ---------------------------------------------------------------------- determinism
def test_same_seed_same_data_and_teacher():
    a, b, c = (t5_distill_pipeline(size="smoke", seed=s) for s in (0, 0, 1))
    data_a = a["data"](**PARAMS_A["data"])
    data_b = b["data"](**PARAMS_A["data"])
    assert data_a["val_refs"] == data_b["val_refs"]
    assert torch.equal(data_a["train_x"], data_b["train_x"])
    assert c["data"](**PARAMS_A["data"])["val_refs"] != data_a["val_refs"]
    assert data_a["train_x"].shape[1] <= 96  # max_input_len caps the input bytes
    teacher_a = a["teacher"](data=data_a, **PARAMS_A["teacher"])
    teacher_b = b["teacher"](data=data_b, **PARAMS_A["teacher"])
    sa, sb = _state(teacher_a), _state(teacher_b)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------------- the trial subflow
def test_trial_subflow_caches_the_shared_prefix(prefect_harness, tmp_path):
    from flows.trial import trial_flow

    config = StudyConfig.from_mapping(
        example_composed("t5_distill", "size=smoke", f"storage.url={tmp_path / 'cache'}")
    ).model_dump(mode="json")
    a = trial_flow(config, 0, PARAMS_A)
    assert a.cached == []
    assert 0.0 <= a.objective <= 1.0
    assert set(a.costs) == set(STAGES)

    b = trial_flow(config, 1, PARAMS_B)
    assert b.cached == ["data", "teacher"]
    assert math.isfinite(b.objective) and 0.0 <= b.objective <= 1.0
    assert [b.stage_keys[s] == a.stage_keys[s] for s in STAGES] == [True, True, False, False, False]

    again = trial_flow(config, 2, PARAMS_A)
    assert again.cached == sorted(STAGES)
    assert again.objective == a.objective


# ---------------------------------------------------------------------- a tiny study
def test_smoke_study_end_to_end(prefect_harness, tmp_path):
    from flows.tune import run

    # Three trials whatever this machine's speed: a budget in seconds measured
    # beforehand let a slow CI machine stop after two (stage times vary run to run).
    cfg = example_composed(
        "t5_distill",
        *FAST,
        "size=smoke",
        "n_init=2",
        "budget=100000",
        "max_trials=3",
        "study=t5smoke",
        f"storage.url={tmp_path / 'cache'}",
    )
    cfg["output_dir"] = str(tmp_path / "out")
    result = run(cfg)
    trials = sorted((tmp_path / "cache" / "studies" / "t5smoke" / "trials").glob("*.json"))
    records = [json.loads(p.read_text()) for p in trials]
    assert result.n_trials == len(records) == 3
    assert all(r["state"] == "complete" for r in records)
    assert all(0.0 <= r["objective"] <= 1.0 for r in records)
    assert result.spent == pytest.approx(sum(sum(r["costs"].values()) for r in records))
    assert (tmp_path / "out" / "results.csv").read_text().count("\n") == len(records) + 1
    assert "objective:" in (tmp_path / "out" / "best.yaml").read_text()
    assert (tmp_path / "out" / "best_vs_cost.png").read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------------- the distillation sweep
def test_distill_sweep_compares_with_targets_alone(capsys):
    from t5_distill import _distill_sweep

    _distill_sweep("smoke", "cpu", 0, {"teacher": {"lr": 3e-3}}, [1e-3], [(0.5, 2.0)])
    out = capsys.readouterr().out
    assert "teacher {'lr': 0.003, 'weight_decay': 0.001}" in out
    rows = [line for line in out.splitlines() if line.startswith("| 0.001 |")]
    # alpha 0 (targets alone) is added and comes first; each row is compared with it.
    assert [row.split(" | ")[1:3] for row in rows] == [["0", "1"], ["0.5", "2"]]
    assert rows[0].split(" | ")[4] == "+0.0000"


def test_students_can_see_a_fraction_of_the_targets():
    from t5_distill import _SIZES, _load_model, _Runner

    with pytest.raises(ValueError, match=r"`student_labels` must be in \(0, 1\], but got 0"):
        t5_distill_pipeline(size="smoke", student_labels=0)
    full = t5_distill_pipeline(size="smoke")
    quarter = t5_distill_pipeline(size="smoke", student_labels=0.25)
    assert full["student1"].version != quarter["student1"].version  # other cache keys
    assert full["teacher"].version == quarter["teacher"].version
    data = quarter["data"](**PARAMS_A["data"])
    blob = quarter["teacher"](data=data, **PARAMS_A["teacher"])
    teacher = _load_model(_SIZES["smoke"].teacher, blob, torch.device("cpu"))
    run = _Runner(_SIZES["smoke"], torch.device("cpu"), 0, 1, 0.25)
    # Targets alone: the 4 labelled rows, repeated to the 16 rows' number of steps.
    alone, labelled = run._student_data(data, teacher, alpha=0.0)
    assert labelled is None and alone["train_x"].shape == data["train_x"].shape
    assert torch.equal(alone["train_x"][4:8], data["train_x"][:4])
    # Distilled: every row, the first 4 with their targets, the rest with the teacher's decodes.
    mixed, labelled = run._student_data(data, teacher, alpha=0.5)
    assert labelled.tolist() == [True] * 4 + [False] * 12
    width = data["train_y"].shape[1]
    assert torch.equal(mixed["train_y"][:4, :width], data["train_y"][:4])
    assert torch.equal(mixed["train_x"], data["train_x"])
    for alpha in (0.0, 0.5):  # both paths train and score
        student = {**STUDENT, "alpha": alpha}
        s1 = quarter["student1"](data=data, teacher=blob, **student)
        s2 = quarter["student2"](data=data, teacher=blob, student1=s1, **student)
        out = quarter["student3"](data=data, teacher=blob, student2=s2, **student)
        assert 0.0 <= out["rougeLsum"] <= 1.0


def test_label_noise_replaces_a_fraction_of_the_training_targets_only():
    with pytest.raises(ValueError, match=r"`label_noise` must be in \[0, 1\), but got 1"):
        t5_distill_pipeline(size="smoke", label_noise=1)
    clean = t5_distill_pipeline(size="smoke", seed=3)
    noisy = t5_distill_pipeline(size="smoke", seed=3, label_noise=0.5)
    assert clean["data"].version != noisy["data"].version  # other targets: other cache keys
    a = clean["data"](**PARAMS_A["data"])
    b = noisy["data"](**PARAMS_A["data"])
    assert torch.equal(a["train_x"], b["train_x"])  # the same docstrings, the same split
    assert a["val_refs"] == b["val_refs"] and torch.equal(a["val_x"], b["val_x"])
    pairs = zip(a["train_refs"], b["train_refs"], strict=True)
    changed = [i for i, (x, y) in enumerate(pairs) if x != y]
    # Exactly half of the 16 targets moved, each to another training target's name.
    assert len(changed) == round(0.5 * len(a["train_refs"]))
    assert all(b["train_refs"][i] in set(a["train_refs"]) for i in changed)
    assert not torch.equal(a["train_y"], b["train_y"])  # what the models train on
    again = noisy["data"](**PARAMS_A["data"])  # deterministic
    assert again["train_refs"] == b["train_refs"] and torch.equal(again["train_y"], b["train_y"])
