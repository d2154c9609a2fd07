"""The vision_cnn pipeline: bad input, determinism, memoized trials through the real trial
subflow, and a tiny smoke study through flows.tune.run."""

from __future__ import annotations

import dataclasses
import io
import math

import pytest
import torch
from vision_cnn import SPACE, vision_cnn_pipeline

from flows import ConfigError, StudyConfig
from tests.examples.example_configs import example_composed
from tests.helpers import FAST, check_prefix_reuse, check_smoke_study

# Cheap corners of the space (a smoke trial well under a second).
A = {
    "preprocess": {"normalization": "standardize", "shift": 1.0, "rotation": 10.0, "noise": 0.05},
    "train": {"lr": 3e-3, "weight_decay": 1e-4, "batch_size": 64, "width": 6, "epochs": 3},
    "finetune": {"lr": 1e-3, "epochs": 1, "tta": "none"},
}
# B shares A's first two stages (only the fine-tuning differs); C shares only A's first.
B = {**A, "finetune": {"lr": 1e-4, "epochs": 2, "tta": "shift"}}
C = {**A, "train": {**A["train"], "width": 4, "lr": 1e-2}}

# A small corner of the space keeps the smoke study at a few cheap trials.
SMALL = [
    "pipeline.space.train.epochs.high=3",
    "pipeline.space.train.width.high=8",
    "pipeline.space.train.batch_size.low=64",
    "pipeline.space.finetune.epochs.high=1",
]


def _config(tmp_path, *overrides: str) -> dict:
    return example_composed(
        "vision_cnn",
        "size=smoke",
        f"storage.url={tmp_path / 'cache'}",
        *overrides,
    )


# ---------------------------------------------------------------------- bad input
def _bad_device() -> tuple[str, str]:
    # Whatever the machine, one CUDA device name is refused with its own message.
    if torch.cuda.is_available():
        return "cuda:99", "`device` 'cuda:99' does not exist"
    return (
        "cuda",
        "`device` 'cuda' is not available on this machine "
        "(torch.cuda.is_available() is False); use device=cpu",
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": "huge"}, "`size` must be 'smoke', 'full' or 'hard', but got 'huge'"),
        ({"device": "tpu"}, "`device` must be 'cpu' or 'cuda', but got 'tpu'"),
        ({"device": _bad_device()[0]}, _bad_device()[1]),
        ({"seed": "zero"}, "`seed` must be an integer, but got 'zero'"),
    ],
)
def test_bad_input_is_refused_before_anything_runs(tmp_path, kwargs, message):
    with pytest.raises(ValueError) as info:
        vision_cnn_pipeline(**kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)

    if "seed" in kwargs:  # a study's seed is checked by StudyConfig first
        return
    # Through the study's own checks: one line naming the key, and nothing written.
    from flows.study import prepare

    overrides = [f"{k}={v}" for k, v in kwargs.items()]
    with pytest.raises(ConfigError) as info:
        prepare(StudyConfig.from_mapping(_config(tmp_path, *overrides)))
    assert message in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "cache").exists()


def test_yaml_space_matches_the_stages():
    cfg = StudyConfig.from_mapping(example_composed("vision_cnn"))
    assert cfg.pipeline.space == SPACE
    assert cfg.pipeline.metric == "val_accuracy"
    assert vision_cnn_pipeline(size="smoke").space_dict() == SPACE


# ---------------------------------------------------------------------- the stages
def test_stages_are_deterministic_and_the_checkpoint_loads():
    pipe = vision_cnn_pipeline(size="smoke", seed=1)
    outs = []
    for _ in range(2):
        data = pipe["preprocess"](**A["preprocess"])
        ckpt = pipe["train"](data=data, **A["train"])
        metrics = pipe["finetune"](data=data, checkpoint=ckpt, **B["finetune"])
        outs.append((data, ckpt, metrics))
    (d1, c1, m1), (d2, c2, m2) = outs
    assert all(torch.equal(d1[k], d2[k]) for k in d1)
    assert d1["x_train"].shape[1:] == (1, 8, 8) and len(d1["x_train"]) == 2 * len(d1["x_clean"])
    assert m1 == m2 and 0.0 <= m1["val_accuracy"] <= 1.0 and math.isfinite(m1["val_loss"])
    s1 = torch.load(io.BytesIO(c1), map_location="cpu", weights_only=True)
    s2 = torch.load(io.BytesIO(c2), map_location="cpu", weights_only=True)
    assert s1["arch"] == {"width": A["train"]["width"], "n_classes": 10}
    assert all(torch.equal(s1["state_dict"][k], s2["state_dict"][k]) for k in s1["state_dict"])
    # Another seed: another split and other weights.
    other = vision_cnn_pipeline(size="smoke", seed=2)["preprocess"](**A["preprocess"])
    assert not torch.equal(other["y_val"], d1["y_val"])
    # The fine-tuning hyperparameters really change the result.
    assert pipe["finetune"](data=d1, checkpoint=c1, **A["finetune"]) != m1


# ---------------------------------------------------------------------- size=hard
def _hard_data(seed: int, **changes) -> dict[str, torch.Tensor]:
    # The preprocess stage alone, at size=hard or with some of its constants changed.
    from vision_cnn import _SETTINGS, preprocess

    setting = dataclasses.replace(_SETTINGS["hard"], **changes)
    return preprocess(**A["preprocess"], setting=setting, seed=seed)


def test_hard_flips_only_training_labels():
    from vision_cnn import _SETTINGS

    rate, copies = _SETTINGS["hard"].label_noise, _SETTINGS["hard"].copies
    hard = vision_cnn_pipeline(size="hard", seed=0)["preprocess"](**A["preprocess"])
    # The same images without the noise: the split and subsample do not depend on the flips.
    clean = _hard_data(0, label_noise=0.0)
    for k in ("x_clean", "x_train", "x_val", "y_val"):
        assert torch.equal(hard[k], clean[k]), k
    n = len(hard["y_clean"])
    assert 0 < rate < 1 and 250 <= n <= 350 and len(hard["y_val"]) > 2 * n
    assert hard["x_clean"].shape[1:] == (1, 20, 20)
    # Training: exactly round(rate * n) labels moved, each to another class; validation clean.
    flipped = hard["y_clean"] != clean["y_clean"]
    assert int(flipped.sum()) == round(rate * n)
    assert set(hard["y_clean"].tolist()) == set(range(10))
    # The augmented copies (after the clean images) carry their source's (noisy) label.
    assert len(hard["y_train"]) == (1 + copies) * n
    for c in range(1 + copies):
        assert torch.equal(hard["y_train"][c * n : (c + 1) * n], hard["y_clean"])


def test_flipped_labels_never_keep_their_class():
    from vision_cnn import _flip_labels

    y = torch.arange(1000) % 10
    flipped = _flip_labels(y, 1.0, torch.Generator().manual_seed(0))
    assert bool((flipped != y).all())
    # Each class goes to every one of the 9 others (symmetric noise).
    for c in range(10):
        assert set(flipped[y == c].tolist()) == set(range(10)) - {c}
    half = _flip_labels(y, 0.5, torch.Generator().manual_seed(0))
    assert int((half != y).sum()) == 500


def test_hard_is_deterministic_from_the_seed():
    first, again, other = _hard_data(0), _hard_data(0), _hard_data(1)
    assert all(torch.equal(first[k], again[k]) for k in first)
    # Another seed: another split, another subsample and other flips.
    assert not torch.equal(first["y_val"], other["y_val"])
    assert not torch.equal(first["x_clean"], other["x_clean"])
    flips = [
        d["y_clean"] != _hard_data(s, label_noise=0.0)["y_clean"]
        for s, d in ((0, first), (1, other))
    ]
    assert not torch.equal(flips[0], flips[1])


def test_size_and_seed_are_part_of_the_stage_versions():
    keys = {
        (size, seed): vision_cnn_pipeline(size=size, seed=seed).key("preprocess", A)
        for size in ("smoke", "full", "hard")
        for seed in (0, 1)
    }
    assert len(set(keys.values())) == 6


# ---------------------------------------------------------------------- the trial subflow
def test_trial_subflow_reuses_the_shared_prefix(prefect_harness, tmp_path):
    config = StudyConfig.from_mapping(_config(tmp_path)).model_dump(mode="json")
    stages = ["preprocess", "train", "finetune"]
    runs = [(A, []), (B, stages[:2]), (C, stages[:1]), (A, stages)]
    a, b, _, again = check_prefix_reuse(config, runs)
    assert b["keys"]["train"] == a["keys"]["train"] != b["keys"]["finetune"]
    assert again["objective"] == a["objective"]


# ---------------------------------------------------------------------- a smoke study
def test_smoke_study_end_to_end(prefect_harness, tmp_path):
    from flows.tune import run

    cfg = _config(tmp_path, *FAST, *SMALL, "n_init=2", "budget=100000", "max_trials=2", "study=vc")
    cfg["output_dir"] = str(tmp_path / "out")
    result = run(cfg)
    check_smoke_study(result, tmp_path, "vc", {"preprocess", "train", "finetune"}, n_trials=2)
