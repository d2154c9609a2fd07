"""The ml_stacking pipeline: bad input, memoized trials through the real trial subflow,
and a tiny smoke study through flows.tune.run."""

from __future__ import annotations

import numpy as np
import pytest
from ml_stacking import SPACE, ml_stacking_pipeline, preprocess

from flows import ConfigError, StudyConfig
from tests.examples.example_configs import example_composed
from tests.helpers import FAST, check_prefix_reuse, check_smoke_study

A = {
    "preprocess": {"scaler": "standard", "n_components": 12},
    "base_learners": {
        "rf_n_estimators": 12,
        "rf_max_depth": 5,
        "et_n_estimators": 12,
        "et_max_depth": 5,
        "gb_n_estimators": 10,
        "gb_max_depth": 3,
        "gb_learning_rate": 0.1,
    },
    "meta_learner": {"C": 1.0, "tol": 1e-4, "max_iter": 100},
}
# B shares A's first two stages; C shares only A's first.
B = {**A, "meta_learner": {"C": 0.01, "tol": 1e-3, "max_iter": 60}}
C = {**A, "base_learners": {**A["base_learners"], "rf_max_depth": 3, "gb_learning_rate": 0.3}}

# A small corner of the space keeps the smoke study at a few cheap trials.
SMALL = [
    f"pipeline.space.base_learners.{p}.high={high}"
    for p, high in [
        ("rf_n_estimators", 16),
        ("et_n_estimators", 16),
        ("gb_n_estimators", 16),
        ("rf_max_depth", 6),
        ("et_max_depth", 6),
        ("gb_max_depth", 4),
    ]
]


def _config(tmp_path, *overrides: str) -> dict:
    return example_composed(
        "ml_stacking",
        "size=smoke",
        f"storage.url={tmp_path / 'cache'}",
        *overrides,
    )


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": "huge"}, "`size` must be 'smoke', 'full' or 'hard', but got 'huge'"),
        ({"device": "tpu"}, "`device` must be 'cpu' or 'cuda', but got 'tpu'"),
        ({"seed": "zero"}, "`seed` must be an integer, but got 'zero'"),
    ],
)
def test_bad_kwargs_raise_one_line_value_error(kwargs, message):
    with pytest.raises(ValueError) as info:
        ml_stacking_pipeline(**kwargs)
    assert str(info.value) == message


def test_cuda_without_a_gpu_is_refused(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError) as info:
        ml_stacking_pipeline(size="smoke", device="cuda")
    assert str(info.value) == (
        "`device` 'cuda' is not available on this machine "
        "(torch.cuda.is_available() is False); use device=cpu"
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("size=huge", "`size` must be 'smoke', 'full' or 'hard', but got 'huge'"),
        ("device=tpu", "`device` must be 'cpu' or 'cuda', but got 'tpu'"),
    ],
)
def test_bad_input_fails_before_anything_runs(tmp_path, override, message):
    from flows.tune import run

    cfg = _config(tmp_path, override)
    cfg["output_dir"] = str(tmp_path / "out")
    with pytest.raises(ConfigError) as info:
        run(cfg)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()


def test_yaml_space_is_the_stages_space(tmp_path):
    from flows.runtime import build_pipeline

    pipe = build_pipeline(StudyConfig.from_mapping(_config(tmp_path)))
    assert pipe.space_dict() == SPACE
    assert pipe.stage_names == ["preprocess", "base_learners", "meta_learner"]
    assert pipe.metric == "auroc"


def test_size_and_seed_are_part_of_the_cache_keys():
    keys = {
        (size, seed): ml_stacking_pipeline(size=size, seed=seed).key("preprocess", A)
        for size in ("smoke", "full", "hard")
        for seed in (0, 1)
    }
    assert len(set(keys.values())) == 6


# ---------------------------------------------------------------------- size=hard
RAW = {"scaler": "none", "n_components": 64}  # no scaling, all components: X is digits rotated


def test_hard_flips_only_training_labels():
    hard = ml_stacking_pipeline(size="hard", seed=0)["preprocess"](**RAW)
    # The same rows without the noise: the subsample does not depend on the flips.
    clean = preprocess(**RAW, n_images=1797, seed=0, n_train=800, label_noise=0.0)
    full = ml_stacking_pipeline(size="full", seed=0)["preprocess"](**RAW)
    assert hard["X_train"].shape == (800, 64)
    np.testing.assert_array_equal(hard["X_train"], clean["X_train"])
    np.testing.assert_array_equal(hard["X_val"], clean["X_val"])
    # Validation: clean, and the very labels of size=full (same split of all 1797 images).
    np.testing.assert_array_equal(hard["y_val"], clean["y_val"])
    np.testing.assert_array_equal(hard["y_val"], full["y_val"])
    # Training: exactly half of the labels moved, each to another valid class.
    flipped = hard["y_train"] != clean["y_train"]
    assert flipped.sum() == 400
    assert set(np.unique(hard["y_train"])) == set(range(10))


def test_hard_is_deterministic_from_the_seed():
    tiny = {
        "rf_n_estimators": 10,
        "rf_max_depth": 2,
        "et_n_estimators": 10,
        "et_max_depth": 2,
        "gb_n_estimators": 10,
        "gb_max_depth": 2,
        "gb_learning_rate": 0.1,
    }

    def trial(seed):
        pipe = ml_stacking_pipeline(size="hard", seed=seed)
        data = pipe["preprocess"](**RAW)
        level1 = pipe["base_learners"](data=data, **tiny)
        return data, pipe["meta_learner"](level1=level1, **A["meta_learner"])

    (data0, out0), (again, out_again), (data1, _) = trial(0), trial(0), trial(1)
    assert out0 == out_again
    for k in data0:
        np.testing.assert_array_equal(data0[k], again[k])
    assert not np.array_equal(data0["y_train"], data1["y_train"])


# ---------------------------------------------------------------------- the trial subflow
def test_trials_reuse_the_shared_prefix(prefect_harness, tmp_path):
    config = StudyConfig.from_mapping(_config(tmp_path)).model_dump(mode="json")
    stages = ["preprocess", "base_learners", "meta_learner"]
    runs = [(A, []), (B, stages[:2]), (C, stages[:1]), (A, stages)]
    a, _, _, again = check_prefix_reuse(config, runs)
    assert a["objective"] > 0.5
    assert again["objective"] == a["objective"]
    assert again["keys"] == a["keys"]

    # The stored result is what the plain functions compute from scratch (seeded).
    pipe = ml_stacking_pipeline(size="smoke")
    data = pipe["preprocess"](**A["preprocess"])
    level1 = pipe["base_learners"](data=data, **A["base_learners"])
    assert pipe["meta_learner"](level1=level1, **A["meta_learner"])["auroc"] == a["objective"]


# ---------------------------------------------------------------------- a smoke study
def test_smoke_study_end_to_end(prefect_harness, tmp_path):
    from flows.tune import run

    fast = [o for o in FAST if not o.startswith(("budget=", "n_init="))]
    cfg = _config(tmp_path, *fast, *SMALL, "n_init=2", "budget=100000", "max_trials=2", "study=mls")
    cfg["output_dir"] = str(tmp_path / "out")
    result = run(cfg)
    stages = {"preprocess", "base_learners", "meta_learner"}
    check_smoke_study(result, tmp_path, "mls", stages, n_trials=2)
    assert result.best_objective > 0.5
