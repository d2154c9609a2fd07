"""The pretrain_probe pipeline: bad input, the split, determinism, what each stage's
hyperparameters do, memoized trials through the real trial subflow, and a tiny smoke study
through flows.tune.run."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pretrain_probe import SPACE, pretrain_probe_pipeline

from flows import ConfigError, StudyConfig
from tests.examples.example_configs import example_composed
from tests.helpers import FAST, check_prefix_reuse, check_smoke_study

# Cheap corners of the space (a smoke trial well under a second).
A = {
    "pretrain": {"width": 64, "latent": 16, "epochs": 10, "lr": 3e-3, "noise": 0.3},
    "probe": {"features": "hidden", "lr": 1e-2, "epochs": 50, "l2": 1e-3},
    "blend": {"k": 5, "alpha": 0.9, "weight": 0.5, "temperature": 1.0},
}
# B shares A's first two stages (only the blend differs); C shares only A's first.
B = {**A, "blend": {"k": 3, "alpha": 0.8, "weight": 0.8, "temperature": 3.0}}
C = {**A, "probe": {**A["probe"], "features": "latent"}}

# A small corner of the space keeps the smoke study at a few cheap trials.
SMALL = [
    "pipeline.space.pretrain.epochs.high=12",
    "pipeline.space.pretrain.width.high=64",
    "pipeline.space.probe.epochs.high=30",
]


def _config(tmp_path, *overrides: str) -> dict:
    return example_composed(
        "pretrain_probe",
        "size=smoke",
        f"storage.url={tmp_path / 'cache'}",
        *overrides,
    )


@pytest.fixture(scope="module")
def smoke():
    """The smoke pipeline (seed 1) and A's stage outputs."""
    pipe = pretrain_probe_pipeline(size="smoke", seed=1)
    emb = pipe["pretrain"](**A["pretrain"])
    return pipe, emb, pipe["probe"](embedding=emb, **A["probe"])


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": "hard"}, "`size` must be 'smoke' or 'full', but got 'hard'"),
        ({"seed": "zero"}, "`seed` must be an integer, but got 'zero'"),
        ({"seed": True}, "`seed` must be an integer, but got True"),
    ],
)
def test_bad_input_is_refused_before_anything_runs(tmp_path, kwargs, message):
    with pytest.raises(ValueError) as info:
        pretrain_probe_pipeline(**kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)

    if "seed" in kwargs:  # a study's seed is checked by StudyConfig first
        return
    # Through the study's own checks: one line naming the rule, and nothing written.
    from flows.study import prepare

    overrides = [f"{k}={v}" for k, v in kwargs.items()]
    with pytest.raises(ConfigError) as info:
        prepare(StudyConfig.from_mapping(_config(tmp_path, *overrides)))
    assert message in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    ("stage", "change", "message"),
    [
        ("pretrain", {"noise": 1.0}, "`noise` must lie in [0, 1), but got 1.0"),
        ("probe", {"features": "pixels"}, "`features` must be 'latent', 'hidden' or 'both'"),
        ("blend", {"weight": 1.5}, "`weight` must lie in [0, 1], but got 1.5"),
    ],
)
def test_bad_hyperparameters_name_the_rule(smoke, stage, change, message):
    pipe, emb, probe = smoke
    inputs = {
        "pretrain": {},
        "probe": {"embedding": emb},
        "blend": {"embedding": emb, "probe": probe},
    }
    with pytest.raises(ValueError) as info:
        pipe[stage](**inputs[stage], **{**A[stage], **change})
    assert message in str(info.value)


def test_yaml_space_matches_the_stages():
    cfg = StudyConfig.from_mapping(example_composed("pretrain_probe"))
    assert cfg.pipeline.space == SPACE
    assert cfg.pipeline.metric == "val_accuracy"
    assert cfg.pipeline.direction == "maximize"
    assert pretrain_probe_pipeline(size="smoke").space_dict() == SPACE


# ---------------------------------------------------------------------- the split
@pytest.mark.parametrize(("size", "n", "n_val"), [("smoke", 401, 120), ("full", 1797, 539)])
def test_split_holds_out_validation_and_few_labels(size, n, n_val):
    from pretrain_probe import _SETTINGS, _digits

    d = _digits(_SETTINGS[size], 0)
    val, labeled, pool = (set(d[k].tolist()) for k in ("val", "labeled", "pool"))
    assert len(d["y"]) == n and len(val) == n_val
    # Validation is apart from everything that trains; the labeled images are in the pool.
    assert not val & pool and val | pool == set(range(n)) and labeled <= pool
    # Exactly 5 labeled images of every class, and every class in validation.
    assert torch.bincount(d["y"][d["labeled"]], minlength=10).tolist() == [5] * 10
    assert set(d["y"][d["val"]].tolist()) == set(range(10))
    assert d["x"].shape == (n, 64) and 0.0 <= float(d["x"].min()) < float(d["x"].max()) <= 1.0
    # Another seed: another split.
    assert not torch.equal(_digits(_SETTINGS[size], 1)["labeled"], d["labeled"])


# ---------------------------------------------------------------------- the stages
def test_stages_are_deterministic(smoke):
    pipe, emb, probe = smoke
    again = pipe["pretrain"](**A["pretrain"])
    assert all(torch.equal(emb[k], again[k]) for k in emb)
    assert emb["hidden"].shape == (401, 64) and emb["latent"].shape == (401, 16)
    assert math.isfinite(float(emb["loss"])) and float(emb["loss"]) > 0
    probe_again = pipe["probe"](embedding=again, **A["probe"])
    assert all(torch.equal(probe[k], probe_again[k]) for k in probe)
    m1 = pipe["blend"](embedding=emb, probe=probe, **A["blend"])
    assert m1 == pipe["blend"](embedding=again, probe=probe_again, **A["blend"])
    assert 0.0 <= m1["val_accuracy"] <= 1.0 and math.isfinite(m1["val_loss"])
    # Another seed: other weights, so other features.
    other = pretrain_probe_pipeline(size="smoke", seed=2)["pretrain"](**A["pretrain"])
    assert not torch.equal(other["hidden"], emb["hidden"])


def test_pretraining_learns_a_useful_representation(smoke):
    pipe, _, _ = smoke
    # More epochs reconstruct better, and their bottleneck features classify better (at
    # smoke over seeds 0-3: 0.73-0.77 after 60 epochs, 0.39-0.64 after one).
    short = pipe["pretrain"](**{**A["pretrain"], "epochs": 1})
    long = pipe["pretrain"](**{**A["pretrain"], "epochs": 60})
    assert float(long["loss"]) < 0.5 * float(short["loss"])
    acc = {}
    for name, emb in (("short", short), ("long", long)):
        probe = pipe["probe"](embedding=emb, **{**A["probe"], "features": "latent"})
        acc[name] = pipe["blend"](embedding=emb, probe=probe, **A["blend"])["val_accuracy"]
    assert acc["long"] > acc["short"] + 0.05 and acc["long"] > 0.65


def test_probe_features_and_standardization(smoke):
    pipe, emb, probe = smoke
    assert probe["features"].shape == (401, 64) and probe["logits"].shape == (401, 10)
    pool = probe["features"][emb["pool"]]
    assert torch.allclose(pool.mean(dim=0), torch.zeros(64), atol=1e-4)
    both = pipe["probe"](embedding=emb, **{**A["probe"], "features": "both"})
    assert both["features"].shape == (401, 16 + 64)
    # Trained long, the probe fits its 50 labels; the penalty pulls its logits toward zero.
    labeled = emb["labeled"]
    long = {**A["probe"], "lr": 0.1, "epochs": 300}
    fitted = pipe["probe"](embedding=emb, **{**long, "l2": 1e-5})["logits"]
    assert bool((fitted[labeled].argmax(dim=1) == emb["y"][labeled]).all())
    decayed = pipe["probe"](embedding=emb, **{**long, "l2": 1.0})["logits"]
    assert decayed.abs().mean() < 0.5 * fitted.abs().mean()


def test_blend_weight_and_temperature(smoke):
    pipe, emb, probe = smoke
    y, val = emb["y"], emb["val"]

    def run(**change):
        return pipe["blend"](embedding=emb, probe=probe, **{**A["blend"], **change})

    # weight 0: the probe alone, whose argmax the temperature cannot change (its loss, yes).
    alone = float((probe["logits"][val].argmax(dim=1) == y[val]).float().mean())
    cold, hot = run(weight=0.0, temperature=0.2), run(weight=0.0, temperature=5.0)
    assert cold["val_accuracy"] == pytest.approx(alone) == hot["val_accuracy"]
    expected = F.cross_entropy(probe["logits"][val] / 5.0, y[val])
    assert hot["val_loss"] == pytest.approx(float(expected), rel=1e-4)
    # weight 1: the spread labels alone, which the temperature does not touch.
    assert run(weight=1.0, temperature=0.2) == run(weight=1.0, temperature=5.0)
    # The blend's own hyperparameters change the objective.
    scores = {run(weight=w, k=k)["val_accuracy"] for w in (0.0, 0.5, 1.0) for k in (2, 20)}
    assert len(scores) > 2


def test_label_spreading_matches_its_closed_form():
    from pretrain_probe import SPREAD_STEPS, _spread

    # k = n - 1 on points in the positive quadrant: the graph is every pair, weighted by
    # cosine similarity, so its normalized matrix S can be written down by hand.
    gen = torch.Generator().manual_seed(0)
    unit = F.normalize(torch.rand(12, 3, generator=gen) + 0.05, dim=1)
    W = unit @ unit.T
    W.fill_diagonal_(0.0)
    d = W.sum(dim=1).rsqrt()
    S = d[:, None] * W * d[None, :]
    seeds = torch.zeros(12, 3)
    seeds[0, 0] = seeds[1, 1] = seeds[2, 2] = 1.0
    alpha = 0.5  # 0.5**SPREAD_STEPS: the iteration has converged
    assert alpha**SPREAD_STEPS < 1e-9
    # Zhou et al. 2004: F* = (1 - alpha) (I - alpha S)^-1 Y, rows normalized.
    closed = (1 - alpha) * torch.linalg.solve(torch.eye(12) - alpha * S, seeds)
    closed = closed / closed.sum(dim=1, keepdim=True)
    assert torch.allclose(_spread(unit, seeds, k=11, alpha=alpha), closed, atol=1e-5)


def test_label_spreading_follows_the_graph():
    from pretrain_probe import _spread

    # Two tight clusters on the unit circle, one labeled point in each.
    angles = torch.tensor([0.0, 0.05, 0.1, 0.15, 1.6, 1.65, 1.7, 1.75])
    unit = torch.stack([angles.cos(), angles.sin()], dim=1)
    seeds = torch.zeros(8, 2)
    seeds[0, 0] = seeds[7, 1] = 1.0
    spread = _spread(unit, seeds, k=2, alpha=0.9)
    assert torch.allclose(spread.sum(dim=1), torch.ones(8))
    assert spread[:4].argmax(dim=1).tolist() == [0] * 4
    assert spread[4:].argmax(dim=1).tolist() == [1] * 4


def test_pretraining_never_sees_the_validation_images(monkeypatch):
    import pretrain_probe as module

    real = module._digits

    def scrambled(setting, seed):  # the real data with noise for validation pixels
        data = real(setting, seed)
        x = data["x"].clone()
        x[data["val"]] = torch.rand(x[data["val"]].shape, generator=torch.Generator())
        return {**data, "x": x}

    pipe = pretrain_probe_pipeline(size="smoke", seed=1)
    clean = pipe["pretrain"](**A["pretrain"])
    monkeypatch.setattr(module, "_digits", scrambled)
    noisy = pipe["pretrain"](**A["pretrain"])
    pool, val = clean["pool"], clean["val"]
    # The same encoder (trained on the pool alone) embeds the changed validation images.
    assert torch.equal(clean["hidden"][pool], noisy["hidden"][pool])
    assert not torch.allclose(clean["hidden"][val], noisy["hidden"][val])


def test_size_and_seed_are_part_of_the_stage_versions():
    keys = {
        (size, seed): pretrain_probe_pipeline(size=size, seed=seed).key("pretrain", A)
        for size in ("smoke", "full")
        for seed in (0, 1)
    }
    assert len(set(keys.values())) == 4


# ---------------------------------------------------------------------- the trial subflow
def test_trial_subflow_reuses_the_shared_prefix(prefect_harness, tmp_path):
    config = StudyConfig.from_mapping(_config(tmp_path)).model_dump(mode="json")
    stages = ["pretrain", "probe", "blend"]
    runs = [(A, []), (B, stages[:2]), (C, stages[:1]), (A, stages)]
    a, b, _, again = check_prefix_reuse(config, runs)
    assert b["keys"]["probe"] == a["keys"]["probe"] != b["keys"]["blend"]
    assert again["objective"] == a["objective"]


# ---------------------------------------------------------------------- a smoke study
def test_smoke_study_end_to_end(prefect_harness, tmp_path):
    from flows.tune import run

    cfg = _config(tmp_path, *FAST, *SMALL, "n_init=2", "budget=100000", "max_trials=3", "study=pp")
    cfg["output_dir"] = str(tmp_path / "out")
    result = run(cfg)
    check_smoke_study(result, tmp_path, "pp", {"pretrain", "probe", "blend"}, n_trials=3)
