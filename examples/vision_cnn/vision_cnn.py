"""A vision pipeline: a small convolutional network on scikit-learn's digits, in torch.

The literature's vision pipeline (Essofi, Salahuddeen et al., arXiv 2411.03731) as three
memoizable stages. Everything runs offline: the data is scikit-learn's ``load_digits``
(1,797 grey 8x8 images of handwritten digits, 10 classes, shipped with the package).

Stages (a DAG: ``finetune`` reads both earlier outputs, so its Merkle key covers both)::

    preprocess -> data        split, upscale, augment, normalize (tensors, on the CPU)
    train      -> checkpoint  a small CNN trained on the augmented set; ``torch.save`` bytes
    finetune   -> metrics     a few epochs at a lower lr on the un-augmented training images,
                              then validation accuracy, optionally with test-time augmentation

* ``preprocess`` (normalization, shift, rotation, noise): a fixed stratified split from
  ``seed`` (75 % train / 25 % validation; at ``hard``, 50 / 50, then a stratified
  subsample of the training part and noise on its labels, see below); the images are
  upscaled bilinearly to ``side x side``; the training set is the clean images plus
  ``copies`` augmented copies of each, with its label (a random affine warp with rotation
  up to ``rotation`` degrees and translation up to ``shift`` pixels of the original 8x8
  grid, then Gaussian noise of std ``noise``); finally every image is normalized
  (``none``: intensities in [0, 1]; ``standardize``: the clean training set's mean and
  std; ``per_image``: each image's own mean and std).
* ``train`` (lr, weight_decay, batch_size, width, epochs): conv(w) -> conv(w) -> pool ->
  conv(2w) -> pool -> global average -> linear, with batch norm and ReLU, trained with
  AdamW and cross-entropy. Returns the checkpoint as bytes (``state_dict`` and the
  architecture), so it lives in the cache store.
* ``finetune`` (lr, epochs, tta): loads the checkpoint onto the device, fine-tunes it for
  ``epochs`` epochs (0 = none) at ``lr`` with AdamW on the clean training images (batch
  64), then scores the validation set; ``tta="shift"`` averages the softmax over the image
  and its four one-pixel shifts. Returns ``{"val_accuracy", "val_loss"}``.

Sizes (bound by :func:`vision_cnn_pipeline`, not searched):

* ``smoke``: 401 images (301 train / 100 validation), 8x8, one augmented copy (602
  training images): a trial takes 0.1-2 s (about 0.4 s in the middle of the space).
* ``full``: all 1,797 images (1,347 / 450), upscaled to 20x20, five augmented copies
  (8,082 training images): a trial takes 2-85 s on one core of a loaded 2-core machine
  (about 15 s in the middle of the space), nearly all of it in ``train``.
* ``hard`` (for comparing tuners; ``smoke`` and ``full`` saturate near 0.99): all 1,797
  images split 50 / 50 (899 / 898), then a stratified 299 of the 899 training images, 40 %
  of whose labels (120) are flipped, each to one of the 9 other classes drawn uniformly
  (symmetric label noise; the validation labels stay clean). Upscaled to 20x20, two
  augmented copies (897 training images, each copy with its source's noisy label);
  ``finetune`` trains on the 299 clean images with the same noisy labels. A trial takes
  0.6-4 s (median about 1.5 s) and 16 random configurations score 0.11-0.83, while a good
  configuration reaches about 0.86-0.88.

All three run the stages on one CPU thread (see ``_Setting.threads``). Measured timings are
in ``docs/pipelines/vision_cnn.md``.

Objective: validation accuracy in [0, 1], maximized (``metric: val_accuracy``).

Determinism: the split, the subsample, the label flips, the augmentation, the model's
initial weights and every shuffle are drawn from generators seeded from ``seed`` (and a
per-purpose tag), never from global state, so the same hyperparameters give the same result
in any process (on CUDA, up to the non-determinism of cuDNN kernels).

Example:
    >>> pipe = vision_cnn_pipeline(size="smoke")
    >>> pipe.stage_names
    ['preprocess', 'train', 'finetune']
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from stages import Pipeline, Stage

__all__ = ["vision_cnn_pipeline"]


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


SIZES = ("smoke", "full", "hard")
N_CLASSES = 10
FINETUNE_BATCH = 64

# The search space (stage -> parameter -> spec), kept identical to conf/pipeline/vision_cnn.yaml.
SPACE: dict[str, dict[str, dict[str, Any]]] = {
    "preprocess": {
        "normalization": {"type": "categorical", "choices": ["none", "standardize", "per_image"]},
        "shift": {"type": "float", "low": 0.0, "high": 2.0},
        "rotation": {"type": "float", "low": 0.0, "high": 30.0},
        "noise": {"type": "float", "low": 0.0, "high": 0.3},
    },
    "train": {
        "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
        "weight_decay": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True},
        "batch_size": {"type": "int", "low": 16, "high": 256, "log": True},
        "width": {"type": "int", "low": 4, "high": 32, "log": True},
        "epochs": {"type": "int", "low": 2, "high": 12},
    },
    "finetune": {
        "lr": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
        "epochs": {"type": "int", "low": 0, "high": 4},
        "tta": {"type": "categorical", "choices": ["none", "shift"]},
    },
}


@dataclass(frozen=True)
class _Setting:
    """Constants of one size: the data and the compute, never searched."""

    n_images: int | None  # None: all 1,797
    side: int  # images are upscaled to side x side
    copies: int  # augmented copies of each training image
    # torch intra-op threads while a stage runs. One: on a loaded 2-core machine two
    # threads ran the full training 25x slower (oversubscription), and one is plenty for
    # a model this small.
    threads: int | None  # None: leave torch's default
    val_fraction: float = 0.25  # share of every class held out for validation
    n_train: int | None = None  # training images kept after the split (None: all)
    label_noise: float = 0.0  # share of the kept training labels flipped to another class


_SETTINGS = {
    "smoke": _Setting(n_images=400, side=8, copies=1, threads=1),
    "full": _Setting(n_images=None, side=20, copies=5, threads=1),
    # Headroom for tuner comparisons (smoke and full saturate near 0.99): a 50/50 split,
    # 299 of the 899 training images kept, 40 % of their labels flipped, 898 clean
    # validation images. At 20x20 only wide, long-trained networks reach the plateau
    # (~0.85-0.87), and those cost the most: docs/pipelines/vision_cnn.md.
    "hard": _Setting(
        n_images=None,
        side=20,
        copies=2,
        threads=1,
        val_fraction=0.5,
        n_train=300,
        label_noise=0.4,
    ),
}


def vision_cnn_pipeline(size: str = "full", device: str = "cpu", seed: int = 0) -> Pipeline:
    """The digits CNN pipeline: preprocess -> train -> finetune (see the module docstring).

    Args:
        size: ``"smoke"`` (a trial in about a second, for tests), ``"full"``, or
            ``"hard"`` (299 training images, 40 % of their labels flipped, 20x20: headroom
            for comparing tuners).
        device: ``"cpu"``, or ``"cuda"`` / ``"cuda:<i>"`` where
            ``torch.cuda.is_available()``.
        seed: Seeds the split, the subsample and label flips (``hard``), the augmentation,
            the initial weights and the shuffles.

    Returns:
        The pipeline; its sink returns ``{"val_accuracy", "val_loss"}`` and its metric is
        ``val_accuracy``.

    Raises:
        ValueError: For a ``size`` or ``device`` outside those rules, before any stage runs.

    Example:
        >>> vision_cnn_pipeline(size="smoke").metric
        'val_accuracy'
    """
    if size not in SIZES:
        raise ValueError(f"`size` must be 'smoke', 'full' or 'hard', but got {size!r}")
    dev = _check_device(device)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"`seed` must be an integer, but got {seed!r}")
    setting = _SETTINGS[size]
    _warm_up(dev)
    # size and seed change every stage's output, so they are part of its version (and so of
    # its Merkle key): studies of other sizes or seeds never load each other's results.
    version = f"1-{size}-seed{seed}"
    return Pipeline(
        [
            Stage(
                functools.partial(preprocess, setting=setting, seed=seed),
                name="preprocess",
                version=version,
                output="data",
                space=SPACE["preprocess"],
            ),
            Stage(
                functools.partial(train, setting=setting, device=dev, seed=seed),
                name="train",
                version=version,
                inputs=("data",),
                output="checkpoint",
                space=SPACE["train"],
            ),
            Stage(
                functools.partial(finetune, setting=setting, device=dev, seed=seed),
                name="finetune",
                version=version,
                inputs=("data", "checkpoint"),
                output="metrics",
                space=SPACE["finetune"],
            ),
        ],
        metric="val_accuracy",
    )


def _check_device(device: str) -> str:
    if not isinstance(device, str):
        raise ValueError(f"`device` must be 'cpu' or 'cuda', but got {device!r}")
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise ValueError(f"`device` must be 'cpu' or 'cuda', but got {device!r}")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"`device` {device!r} is not available on this machine "
                "(torch.cuda.is_available() is False); use device=cpu"
            )
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(
                f"`device` {device!r} does not exist: this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
    return device


# ---------------------------------------------------------------------- helpers
@functools.cache
def _warm_up(device: str) -> None:
    # One-time costs (torch's optimizers import torch._dynamo, ~1.5 s; sklearn's datasets,
    # ~0.5 s; on CUDA the context and cuDNN set-up, seconds) are paid here, once per process
    # and device, instead of inflating the measured cost of the first trial's stages, which
    # the optimizer's cost models learn from.
    from sklearn.datasets import load_digits  # noqa: F401

    with _threads(1), torch.random.fork_rng(devices=[]):
        model = SmallCNN(4).to(device)
        opt = torch.optim.AdamW(model.parameters())
        x = torch.zeros(2, 1, 8, 8, device=device)
        F.cross_entropy(model(x), torch.zeros(2, dtype=torch.long, device=device)).backward()
        opt.step()


def _generator(seed: int, purpose: str) -> torch.Generator:
    # One independent CPU stream per purpose, the same in every process (unlike hash()).
    digest = hashlib.sha256(f"vision_cnn:{seed}:{purpose}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def _digits(setting: _Setting, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``n x 1 x side x side`` in [0, 1] and labels ``n``, subsampled by class."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.as_tensor(bunch.target, dtype=torch.long)
    if setting.n_images is not None:
        keep = _stratified(y, setting.n_images / len(y), _generator(seed, "subset"))[1]
        x, y = x[keep], y[keep]
    if setting.side != x.shape[-1]:
        x = F.interpolate(x, size=(setting.side, setting.side), mode="bilinear").clamp(0, 1)
    return x, y


def _stratified(
    y: torch.Tensor, fraction: float, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (rest, chosen), with ``fraction`` of every class chosen at random."""
    rest, chosen = [], []
    for c in range(N_CLASSES):
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        k = round(fraction * len(idx))
        chosen.append(idx[:k])
        rest.append(idx[k:])
    return torch.cat(rest).sort().values, torch.cat(chosen).sort().values


def _split(
    x: torch.Tensor, y: torch.Tensor, setting: _Setting, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_val, y_val): the stratified split, then, where ``setting`` asks,
    a stratified subsample of the training part and symmetric noise on its labels only."""
    train_idx, val_idx = _stratified(y, setting.val_fraction, _generator(seed, "split"))
    if setting.n_train is not None:
        keep = _stratified(
            y[train_idx], setting.n_train / len(train_idx), _generator(seed, "train-subset")
        )[1]
        train_idx = train_idx[keep]
    y_train = y[train_idx]
    if setting.label_noise > 0:
        y_train = _flip_labels(y_train, setting.label_noise, _generator(seed, "label-noise"))
    return x[train_idx], y_train, x[val_idx], y[val_idx]


def _flip_labels(y: torch.Tensor, fraction: float, gen: torch.Generator) -> torch.Tensor:
    """Symmetric label noise: ``round(fraction * len(y))`` labels, chosen at random, each
    moved to one of the other ``N_CLASSES - 1`` classes, drawn uniformly."""
    rows = torch.randperm(len(y), generator=gen)[: round(fraction * len(y))]
    # An offset in 1..N_CLASSES-1 never maps a label onto itself.
    offsets = torch.randint(1, N_CLASSES, (len(rows),), generator=gen)
    y = y.clone()
    y[rows] = (y[rows] + offsets) % N_CLASSES
    return y


def _warp(x: torch.Tensor, angle: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    """Rotate by ``angle`` (radians) and translate by (tx, ty) (normalized units), per image.

    ``x`` is ``n x 1 x H x W``; ``angle``, ``tx``, ``ty`` are ``n``. Outside pixels take the
    border value, so the background stays the background under any normalization.
    """
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [torch.stack([cos, -sin, tx], dim=1), torch.stack([sin, cos, ty], dim=1)], dim=1
    )  # n x 2 x 3
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _normalize(kind: str, x: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    if kind == "none":
        return x
    if kind == "standardize":
        return (x - mean) / std
    flat = x.flatten(1)  # per_image: n x (H*W)
    mu = flat.mean(dim=1).view(-1, 1, 1, 1)
    sd = flat.std(dim=1).clamp_min(1e-6).view(-1, 1, 1, 1)
    return (x - mu) / sd


class SmallCNN(nn.Module):
    """conv(w) -> conv(w) -> pool -> conv(2w) -> pool -> global average -> linear.

    Input ``batch x 1 x side x side`` (side >= 4), output logits ``batch x n_classes``.
    """

    def __init__(self, width: int, n_classes: int = N_CLASSES) -> None:
        super().__init__()

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]

        self.features = nn.Sequential(
            *block(1, width),
            *block(width, width),
            nn.MaxPool2d(2),
            *block(width, 2 * width),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(2 * width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _new_model(width: int, seed: int) -> SmallCNN:
    # The initial weights come from the seed without touching the caller's global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(2**62, (1,), generator=_generator(seed, "init"))))
        return SmallCNN(width)


def _fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    lr: float,
    weight_decay: float,
    batch_size: int,
    epochs: int,
    gen: torch.Generator,
) -> float:
    """Train in place with AdamW on ``x`` (``n x 1 x H x W``, on the model's device).

    Returns the mean training loss of the last epoch (nan when ``epochs`` is 0).
    """
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    last = math.nan
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen).to(x.device)
        total = torch.zeros((), device=x.device)
        for start in range(0, len(y), batch_size):
            idx = order[start : start + batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * len(idx)
        last = float(total.cpu()) / len(y)
    return last


@torch.no_grad()
def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, tta: str) -> dict[str, float]:
    model.eval()
    if tta == "none":
        prob = F.softmax(model(x), dim=1)
    else:  # the image and its four one-pixel shifts, softmax averaged
        n, side = len(x), x.shape[-1]
        step = 2.0 / side  # one pixel in normalized coordinates
        zero = torch.zeros(n, device=x.device)
        prob = F.softmax(model(x), dim=1)
        for dx, dy in ((step, 0.0), (-step, 0.0), (0.0, step), (0.0, -step)):
            shifted = _warp(x, zero, zero + dx, zero + dy)
            prob = prob + F.softmax(model(shifted), dim=1)
        prob = prob / 5
    loss = F.nll_loss(prob.clamp_min(1e-12).log(), y)
    accuracy = (prob.argmax(dim=1) == y).float().mean()
    return {"val_accuracy": float(accuracy.cpu()), "val_loss": float(loss.cpu())}


# ---------------------------------------------------------------------- the stages
def preprocess(
    *,
    normalization: str,
    shift: float,
    rotation: float,
    noise: float,
    setting: _Setting,
    seed: int,
) -> dict[str, torch.Tensor]:
    """Split, upscale, augment and normalize the digits (stage 1).

    Args:
        normalization: ``"none"``, ``"standardize"`` or ``"per_image"``.
        shift: Largest translation, in pixels of the original 8x8 grid.
        rotation: Largest rotation, in degrees.
        noise: Std of the Gaussian noise added to augmented copies (intensities in [0, 1]).
        setting: The size's constants (bound by the factory).
        seed: Seeds the split, the subsample, the label flips and the augmentation.

    Returns:
        CPU tensors: ``x_train`` (``(1 + copies) * n_train x 1 x side x side``, clean images
        first) and ``y_train`` (each copy with its source's label); ``x_clean``/``y_clean``
        (the un-augmented training images; at ``hard`` ``y_clean`` holds the noisy labels
        that both training stages see); ``x_val``/``y_val`` (labels always clean).
    """
    if normalization not in ("none", "standardize", "per_image"):
        raise ValueError(
            "`normalization` must be 'none', 'standardize' or 'per_image', "
            f"but got {normalization!r}"
        )
    with _threads(setting.threads):
        x, y = _digits(setting, seed)
        x_clean, y_clean, x_val, y_val = _split(x, y, setting, seed)
        gen = _generator(seed, "augment")
        copies = []
        n = len(y_clean)
        for _ in range(setting.copies):
            angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(rotation)
            # shift pixels of the 8x8 grid -> normalized coordinates (the grid spans 2)
            tx, ty = ((torch.rand(2, n, generator=gen) * 2 - 1) * shift * 2.0 / 8.0).unbind(0)
            warped = _warp(x_clean, angle, tx, ty)
            warped = warped + noise * torch.randn(warped.shape, generator=gen)
            copies.append(warped)
        mean, std = float(x_clean.mean()), float(x_clean.std())
        norm = functools.partial(_normalize, normalization, mean=mean, std=std)
        x_train = norm(torch.cat([x_clean, *copies]))
        return {
            "x_train": x_train.contiguous(),
            "y_train": y_clean.repeat(1 + setting.copies),
            "x_clean": norm(x_clean).contiguous(),
            "y_clean": y_clean,
            "x_val": norm(x_val).contiguous(),
            "y_val": y_val,
        }


def train(
    *,
    data: Mapping[str, torch.Tensor],
    lr: float,
    weight_decay: float,
    batch_size: int,
    width: int,
    epochs: int,
    setting: _Setting,
    device: str,
    seed: int,
) -> bytes:
    """Train the CNN on the augmented training set (stage 2).

    Args:
        data: The ``preprocess`` output.
        lr, weight_decay: AdamW's learning rate and decoupled weight decay.
        batch_size: Minibatch size.
        width: Channels of the first two convolutions (the third has ``2 * width``).
        epochs: Passes over the augmented training set.
        setting: The size's constants (bound by the factory).
        device: Where the model and batches live.
        seed: Seeds the initial weights and the shuffles.

    Returns:
        The checkpoint: ``torch.save`` bytes of ``{"arch": {"width", "n_classes"},
        "state_dict" (CPU tensors), "train_loss"}``.
    """
    with _threads(setting.threads):
        x = data["x_train"].to(device)
        y = data["y_train"].to(device)
        model = _new_model(width, seed).to(device)
        train_loss = _fit(
            model,
            x,
            y,
            lr=lr,
            weight_decay=weight_decay,
            batch_size=batch_size,
            epochs=epochs,
            gen=_generator(seed, "train-shuffle"),
        )
        buffer = io.BytesIO()
        torch.save(
            {
                "arch": {"width": int(width), "n_classes": N_CLASSES},
                "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                "train_loss": train_loss,
            },
            buffer,
        )
        return buffer.getvalue()


def finetune(
    *,
    data: Mapping[str, torch.Tensor],
    checkpoint: bytes,
    lr: float,
    epochs: int,
    tta: str,
    setting: _Setting,
    device: str,
    seed: int,
) -> dict[str, float]:
    """Fine-tune on the clean training images, then score the validation set (stage 3).

    Args:
        data: The ``preprocess`` output.
        checkpoint: The ``train`` output.
        lr: AdamW's learning rate for fine-tuning (no weight decay; batch 64).
        epochs: Fine-tuning epochs over the un-augmented training images (0: none).
        tta: ``"none"``, or ``"shift"`` to average over four one-pixel shifts too.
        setting: The size's constants (bound by the factory).
        device: Where the model and batches live.
        seed: Seeds the shuffles.

    Returns:
        ``{"val_accuracy": in [0, 1], "val_loss": mean cross-entropy}``.
    """
    if tta not in ("none", "shift"):
        raise ValueError(f"`tta` must be 'none' or 'shift', but got {tta!r}")
    with _threads(setting.threads):
        state = torch.load(io.BytesIO(checkpoint), map_location=device, weights_only=True)
        model = SmallCNN(**state["arch"]).to(device)
        model.load_state_dict(state["state_dict"])
        if epochs > 0:
            _fit(
                model,
                data["x_clean"].to(device),
                data["y_clean"].to(device),
                lr=lr,
                weight_decay=0.0,
                batch_size=FINETUNE_BATCH,
                epochs=epochs,
                gen=_generator(seed, "finetune-shuffle"),
            )
        return _evaluate(model, data["x_val"].to(device), data["y_val"].to(device), tta)
