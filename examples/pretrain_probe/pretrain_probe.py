"""Self-supervised pretraining, then few-label probing: a real pipeline whose first stage is dear.

The regime memoization is for: an expensive stage that many cheap downstream settings share.
Everything runs offline on one CPU thread: the data is scikit-learn's ``load_digits``
(1,797 grey 8x8 images of handwritten digits, 10 classes, shipped with the package).

Stages (a DAG: ``blend`` reads both earlier outputs, so its Merkle key covers both)::

    pretrain -> embedding   a denoising autoencoder trained on the unlabeled pool; the
                            encoder's hidden and latent features of every image
    probe    -> probe       a linear softmax probe on the few labeled images' features
    blend    -> metrics     label spreading over the pool's k-nearest-neighbour graph,
                            blended with the tempered probe; validation accuracy

The split (fixed from ``seed``, stratified by class): a held-out validation set (30 % of
every class; its labels are used only to score), ``labels`` labeled images of every class
from the rest, and the unlabeled pool: every image outside the validation set (the labeled
ones included, without their labels).

* ``pretrain`` (width, latent, epochs, lr, noise): an MLP autoencoder
  ``64 -> width -> width -> latent -> width -> width -> 64`` (ReLU) trained with AdamW
  (weight decay 1e-4, batch 64) to reconstruct the pool's images from copies in which
  every pixel is zeroed with probability ``noise`` (masking noise). Returns the encoder's
  features of all images: ``hidden`` (its second ``width``-wide layer) and ``latent``, with
  the labels and the split. The dear stage: its cost grows with ``epochs`` and ``width``.
* ``probe`` (features, lr, epochs, l2): standardizes the chosen features (``latent``,
  ``hidden`` or ``both``, with the pool's mean and std), then trains a linear softmax layer
  on the labeled images only (full batch, Adam, ``epochs`` steps, cross-entropy plus
  ``l2 / 2`` times its weights' squared norm). Returns the standardized features and the
  probe's logits for every image.
* ``blend`` (k, alpha, weight, temperature): label spreading (Zhou et al. 2004) on the
  pool's symmetric cosine k-nearest-neighbour graph, seeded with the labeled images'
  one-hot labels (``SPREAD_STEPS`` steps of ``F <- alpha S F + (1 - alpha) Y``); each
  validation image takes the similarity-weighted mean of its ``k`` nearest pool images'
  spread labels (the validation images are not in the graph). The prediction is
  ``(1 - weight) softmax(logits / temperature) + weight * spread``. Returns
  ``{"val_accuracy", "val_loss"}``.

Sizes (bound by :func:`pretrain_probe_pipeline`, not searched):

* ``full``: all 1,797 images: 539 validation, 1,258 in the pool, 5 labeled per class
  (50). A fresh trial takes about 0.3-4 s on one core, about 90 % of it in ``pretrain``.
* ``smoke`` (tests): a stratified 401 images: 120 validation, 281 in the pool, 5 labeled
  per class (50): a trial takes 0.1-1 s.

Objective: validation accuracy in [0, 1], maximized (``metric: val_accuracy``): what a
few-label classifier is for, and the temperature still matters to it through the blend.
``val_loss`` (the blend's negative log-likelihood) is returned beside it.

Determinism: the split, the initial weights, the shuffles and the noise masks are drawn
from generators seeded from ``seed`` (and a per-purpose tag), never from global state, so
the same hyperparameters give the same result in any process. Measured spread and costs:
``docs/pipelines/pretrain_probe.md``.

Example:
    >>> pipe = pretrain_probe_pipeline(size="smoke")
    >>> pipe.stage_names
    ['pretrain', 'probe', 'blend']
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from stages import Pipeline, Stage

__all__ = ["SPACE", "pretrain_probe_pipeline"]


# Each example carries its own copy: a copy of one example folder needs nothing else.
@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads (None: leave as is), then restore.

    The setting is process-wide, so it is held only while a stage runs. Small models on a
    busy 2-core machine train many times faster on one thread than on two spinning ones.
    """
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


SIZES = ("smoke", "full")
N_CLASSES = 10
PRETRAIN_BATCH = 64
PRETRAIN_WEIGHT_DECAY = 1e-4
SPREAD_STEPS = 40
FEATURES = ("latent", "hidden", "both")

# The search space (stage -> parameter -> spec), kept identical to
# conf/pipeline/pretrain_probe.yaml.
SPACE: dict[str, dict[str, dict[str, Any]]] = {
    "pretrain": {
        "width": {"type": "int", "low": 32, "high": 256, "log": True},
        "latent": {"type": "int", "low": 4, "high": 64, "log": True},
        "epochs": {"type": "int", "low": 10, "high": 60},
        "lr": {"type": "float", "low": 1e-4, "high": 3e-2, "log": True},
        "noise": {"type": "float", "low": 0.0, "high": 0.7},
    },
    "probe": {
        "features": {"type": "categorical", "choices": list(FEATURES)},
        "lr": {"type": "float", "low": 1e-3, "high": 1.0, "log": True},
        "epochs": {"type": "int", "low": 10, "high": 300, "log": True},
        "l2": {"type": "float", "low": 1e-5, "high": 1.0, "log": True},
    },
    "blend": {
        "k": {"type": "int", "low": 2, "high": 50, "log": True},
        "alpha": {"type": "float", "low": 0.5, "high": 0.99},
        "weight": {"type": "float", "low": 0.0, "high": 1.0},
        "temperature": {"type": "float", "low": 0.1, "high": 10.0, "log": True},
    },
}


@dataclass(frozen=True)
class _Setting:
    """Constants of one size: the data and the compute, never searched."""

    n_images: int | None  # None: all 1,797
    labels: int  # labeled images per class
    val_fraction: float = 0.3  # share of every class held out for validation
    # torch intra-op threads while a stage runs: one, as for vision_cnn (two threads on a
    # loaded 2-core machine oversubscribe it, and these models are small).
    threads: int | None = 1


_SETTINGS = {
    "smoke": _Setting(n_images=400, labels=5),
    "full": _Setting(n_images=None, labels=5),
}


def pretrain_probe_pipeline(size: str = "full", seed: int = 0) -> Pipeline:
    """The pretrain -> probe -> blend pipeline on the digits (see the module docstring).

    Args:
        size: ``"full"`` (1,797 images) or ``"smoke"`` (401 images: a trial in well
            under a second, for tests); both have 5 labeled images per class.
        seed: Seeds the split, the initial weights, the shuffles and the noise masks.

    Returns:
        The pipeline; its sink returns ``{"val_accuracy", "val_loss"}`` and its metric is
        ``val_accuracy``.

    Raises:
        ValueError: For a ``size`` or ``seed`` outside those rules, before any stage runs.

    Example:
        >>> pretrain_probe_pipeline(size="smoke").metric
        'val_accuracy'
    """
    if size not in SIZES:
        raise ValueError(f"`size` must be 'smoke' or 'full', but got {size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"`seed` must be an integer, but got {seed!r}")
    setting = _SETTINGS[size]
    _warm_up()
    # size and seed change every stage's output, so they are part of its version (and so of
    # its Merkle key): studies of other sizes or seeds never load each other's results.
    version = f"1-{size}-seed{seed}"
    return Pipeline(
        [
            Stage(
                functools.partial(pretrain, setting=setting, seed=seed),
                name="pretrain",
                version=version,
                output="embedding",
                space=SPACE["pretrain"],
            ),
            Stage(
                functools.partial(probe, setting=setting, seed=seed),
                name="probe",
                version=version,
                inputs=("embedding",),
                output="probe",
                space=SPACE["probe"],
            ),
            Stage(
                functools.partial(blend, setting=setting),
                name="blend",
                version=version,
                inputs=("embedding", "probe"),
                output="metrics",
                space=SPACE["blend"],
            ),
        ],
        metric="val_accuracy",
    )


# ---------------------------------------------------------------------- helpers
@functools.cache
def _warm_up() -> None:
    # One-time costs (torch's optimizers import torch._dynamo, ~1.5 s; sklearn's datasets,
    # ~0.5 s) are paid here, once per process, instead of inflating the measured cost of
    # the first trial's stages, which the optimizer's cost models learn from.
    from sklearn.datasets import load_digits  # noqa: F401

    with _threads(1), torch.random.fork_rng(devices=[]):
        model = _Autoencoder(8, 4)
        opt = torch.optim.AdamW(model.parameters())
        F.mse_loss(model(torch.zeros(2, 64))[0], torch.zeros(2, 64)).backward()
        opt.step()


def _generator(seed: int, purpose: str) -> torch.Generator:
    # One independent CPU stream per purpose, the same in every process (unlike hash()).
    digest = hashlib.sha256(f"pretrain_probe:{seed}:{purpose}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def _digits(setting: _Setting, seed: int) -> dict[str, torch.Tensor]:
    """The images (``n x 64`` in [0, 1]), their labels and the split's index tensors.

    Every class is split alike: the first ``val_fraction`` of a seeded permutation is
    validation, the next ``labels`` are labeled, and all but validation is the pool.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.as_tensor(bunch.data, dtype=torch.float32) / 16.0
    y = torch.as_tensor(bunch.target, dtype=torch.long)
    gen = _generator(seed, "split")
    if setting.n_images is not None:  # a stratified subsample: every class keeps its share
        share = setting.n_images / len(y)
        keep = [
            _shuffled(y, c, gen)[: round(share * int((y == c).sum()))] for c in range(N_CLASSES)
        ]
        keep = torch.cat(keep).sort().values
        x, y = x[keep], y[keep]
    val, labeled, pool = [], [], []
    for c in range(N_CLASSES):
        idx = _shuffled(y, c, gen)
        n_val = round(setting.val_fraction * len(idx))
        val.append(idx[:n_val])
        labeled.append(idx[n_val : n_val + setting.labels])
        pool.append(idx[n_val:])
    val_idx, labeled_idx, pool_idx = (torch.cat(v).sort().values for v in (val, labeled, pool))
    return {"x": x, "y": y, "val": val_idx, "labeled": labeled_idx, "pool": pool_idx}


def _shuffled(y: torch.Tensor, c: int, gen: torch.Generator) -> torch.Tensor:
    idx = torch.nonzero(y == c).flatten()
    return idx[torch.randperm(len(idx), generator=gen)]


class _Autoencoder(nn.Module):
    """``64 -> w -> w -> latent -> w -> w -> 64`` with ReLU; ``forward`` returns
    (reconstruction, hidden, latent), ``batch x 64``, ``batch x w``, ``batch x latent``."""

    def __init__(self, width: int, latent: int) -> None:
        super().__init__()
        self.hidden = nn.Sequential(
            nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU()
        )
        self.latent = nn.Linear(width, latent)
        self.decoder = nn.Sequential(
            nn.Linear(latent, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
            nn.Linear(width, 64),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.hidden(x)
        z = self.latent(h)
        return self.decoder(z), h, z


def _new_autoencoder(width: int, latent: int, seed: int) -> _Autoencoder:
    # The initial weights come from the seed without touching the caller's global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(2**62, (1,), generator=_generator(seed, "init"))))
        return _Autoencoder(width, latent)


def _spread(features: torch.Tensor, seeds: torch.Tensor, k: int, alpha: float) -> torch.Tensor:
    """Label spreading on the cosine kNN graph of ``features`` (``n x d``, L2-normalized).

    ``seeds`` (``n x classes``) holds the labeled rows' one-hot labels, zeros elsewhere.
    Returns the spread class distributions (``n x classes``, rows summing to 1).
    """
    n = len(features)
    k = min(k, n - 1)
    sim = features @ features.T  # n x n
    sim.fill_diagonal_(-2.0)  # never one's own neighbour
    top = sim.topk(k, dim=1)
    W = torch.zeros(n, n).scatter_(1, top.indices, top.values.clamp_min(0.0))
    W = (W + W.T) / 2
    d = W.sum(dim=1).clamp_min(1e-12).rsqrt()
    S = (d[:, None] * W * d[None, :]).to_sparse()  # D^-1/2 W D^-1/2
    spread = seeds.clone()
    for _ in range(SPREAD_STEPS):
        spread = alpha * torch.sparse.mm(S, spread) + (1 - alpha) * seeds
    return spread / spread.sum(dim=1, keepdim=True).clamp_min(1e-12)


# ---------------------------------------------------------------------- the stages
def pretrain(
    *,
    width: int,
    latent: int,
    epochs: int,
    lr: float,
    noise: float,
    setting: _Setting,
    seed: int,
) -> dict[str, torch.Tensor]:
    """Train a denoising autoencoder on the unlabeled pool; embed every image (stage 1).

    Args:
        width: Width of the encoder's and decoder's two hidden layers.
        latent: Width of the bottleneck.
        epochs: Passes over the pool (batch 64).
        lr: AdamW's learning rate (weight decay 1e-4).
        noise: Probability that an input pixel is zeroed (masking noise), drawn afresh for
            every batch.
        setting: The size's constants (bound by the factory).
        seed: Seeds the split, the initial weights, the shuffles and the masks.

    Returns:
        CPU tensors: ``hidden`` (``n x width``) and ``latent`` (``n x latent``) features of
        every image, ``y`` (``n``) and the split's sorted indices ``val``, ``labeled``,
        ``pool``; ``loss`` (the last epoch's mean reconstruction error, a scalar).
    """
    if not 0.0 <= noise < 1.0:
        raise ValueError(f"`noise` must lie in [0, 1), but got {noise!r}")
    with _threads(setting.threads):
        data = _digits(setting, seed)
        x_pool = data["x"][data["pool"]]
        model = _new_autoencoder(width, latent, seed)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=PRETRAIN_WEIGHT_DECAY)
        gen = _generator(seed, "pretrain")
        loss_sum = torch.zeros(())
        for _ in range(epochs):
            order = torch.randperm(len(x_pool), generator=gen)
            loss_sum = torch.zeros(())
            for start in range(0, len(order), PRETRAIN_BATCH):
                xb = x_pool[order[start : start + PRETRAIN_BATCH]]
                keep = torch.rand(xb.shape, generator=gen) >= noise
                loss = F.mse_loss(model(xb * keep)[0], xb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += loss.detach() * len(xb)
        model.eval()
        with torch.no_grad():
            _, hidden, z = model(data["x"])
        return {
            "hidden": hidden.contiguous(),
            "latent": z.contiguous(),
            "y": data["y"],
            "val": data["val"],
            "labeled": data["labeled"],
            "pool": data["pool"],
            "loss": loss_sum / len(x_pool),
        }


def probe(
    *,
    embedding: Mapping[str, torch.Tensor],
    features: str,
    lr: float,
    epochs: int,
    l2: float,
    setting: _Setting,
    seed: int,
) -> dict[str, torch.Tensor]:
    """A linear softmax probe on the labeled images' frozen features (stage 2).

    Args:
        embedding: The ``pretrain`` output.
        features: ``"latent"``, ``"hidden"`` or ``"both"`` (the two concatenated).
        lr: Adam's learning rate.
        epochs: Full-batch steps on the labeled images.
        l2: The penalty ``l2 / 2 * ||W||^2`` on the probe's weights (not its bias), added
            to the mean cross-entropy. (In the loss rather than as AdamW's decoupled decay,
            which diverges once ``lr * weight_decay`` passes 2.)
        setting: The size's constants (bound by the factory).
        seed: Seeds the probe's initial weights.

    Returns:
        CPU tensors: ``features`` (``n x d``, standardized with the pool's mean and std) and
        ``logits`` (``n x 10``) of every image.
    """
    if features not in FEATURES:
        raise ValueError(f"`features` must be 'latent', 'hidden' or 'both', but got {features!r}")
    with _threads(setting.threads):
        parts = ("latent", "hidden") if features == "both" else (features,)
        f = torch.cat([embedding[p] for p in parts], dim=1)
        pool = f[embedding["pool"]]
        f = (f - pool.mean(dim=0)) / pool.std(dim=0).clamp_min(1e-6)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(2**62, (1,), generator=_generator(seed, "probe"))))
            head = nn.Linear(f.shape[1], N_CLASSES)
        opt = torch.optim.Adam(head.parameters(), lr=lr)
        x_lab, y_lab = f[embedding["labeled"]], embedding["y"][embedding["labeled"]]
        for _ in range(epochs):
            loss = F.cross_entropy(head(x_lab), y_lab) + l2 / 2 * head.weight.square().sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            logits = head(f)
        return {"features": f.contiguous(), "logits": logits}


def blend(
    *,
    embedding: Mapping[str, torch.Tensor],
    probe: Mapping[str, torch.Tensor],
    k: int,
    alpha: float,
    weight: float,
    temperature: float,
    setting: _Setting,
) -> dict[str, float]:
    """Spread the labels over the pool, blend with the probe, score validation (stage 3).

    Args:
        embedding: The ``pretrain`` output (labels and split).
        probe: The ``probe`` output (standardized features and logits).
        k: Neighbours per node in the pool's graph, and per validation image.
        alpha: Label spreading's propagation weight (the rest pulls back to the labels).
        weight: Share of the spread labels in the blend (0: the probe alone).
        temperature: Divides the probe's logits before the softmax.
        setting: The size's constants (bound by the factory).

    Returns:
        ``{"val_accuracy": in [0, 1], "val_loss": mean negative log-likelihood}``.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"`weight` must lie in [0, 1], but got {weight!r}")
    with _threads(setting.threads):
        y, pool, val = embedding["y"], embedding["pool"], embedding["val"]
        unit = F.normalize(probe["features"], dim=1)
        seeds = torch.zeros(len(pool), N_CLASSES)
        rows = torch.searchsorted(pool, embedding["labeled"])  # labeled is a subset of pool
        seeds[rows, y[embedding["labeled"]]] = 1.0
        spread = _spread(unit[pool], seeds, k, alpha)
        near = (unit[val] @ unit[pool].T).topk(min(k, len(pool)), dim=1)  # val x k
        w = near.values.clamp_min(0.0) + 1e-12
        spread_val = (w[:, :, None] * spread[near.indices]).sum(dim=1) / w.sum(dim=1, keepdim=True)
        prob = (1 - weight) * F.softmax(probe["logits"][val] / temperature, dim=1)
        prob = prob + weight * spread_val
        accuracy = (prob.argmax(dim=1) == y[val]).float().mean()
        loss = F.nll_loss(prob.clamp_min(1e-12).log(), y[val])
        return {"val_accuracy": float(accuracy), "val_loss": float(loss)}
