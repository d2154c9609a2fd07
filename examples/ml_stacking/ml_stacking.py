"""The literature's ML pipeline: a stacked ensemble on scikit-learn's digits.

Data: ``sklearn.datasets.load_digits`` (1797 8x8 images of handwritten digits, 64 features,
10 classes), bundled with scikit-learn, so nothing is downloaded. A stratified
train/validation split (70/30) is drawn from ``seed``; the objective is the validation
macro one-vs-rest AUROC (maximize, in [0, 1]).

Stages (a chain; each a cached Prefect task):

1. ``preprocess`` (``scaler``, ``n_components``): scale the features (fit on the training
   part only), then project them onto their first ``n_components`` principal components
   (at ``hard``, the training part is first subsampled and half its labels flipped).
   Milliseconds.
2. ``base_learners`` (random forest, extra trees, histogram gradient boosting: their sizes,
   depths and the boosting learning rate): out-of-fold class probabilities on the training
   part (stratified K-fold) and, from a refit on the whole training part, probabilities
   on the validation part. The expensive stage: about 1-30 s per trial at ``full``.
3. ``meta_learner`` (logistic regression ``C``, ``tol``, ``max_iter``): fit on the
   out-of-fold probabilities, score the validation probabilities. Returns
   ``{"auroc": ..., "accuracy": ...}``; the objective is ``auroc``.

Sizes: ``full`` uses all 1797 images (1257 train / 540 validation) and 5 folds, so stage 2
fits every base learner 6 times; ``smoke`` (tests) uses a stratified subsample of 360
images (252 / 108) and 2 folds: a trial takes about 0.3-3 s. Both saturate (random
configurations reach AUROC ~0.99), so ``hard`` is for comparing tuners: the split of
``full``, then a stratified 800 of the 1257 training images, half of whose labels are
flipped to another class chosen uniformly (symmetric label noise; the 540 validation labels
stay clean), and 5 folds: a trial takes about 1-6 s and random configurations score AUROC
0.81-0.97 (docs/pipelines/ml_stacking.md).

Every random choice (subsample, split, label flips, folds, the forests and the boosting) is
seeded from ``seed``, so the same hyperparameters give the same result in any process.
Every stage runs single-threaded (``threadpool_limits(1)``, ``n_jobs=1``) so its measured
cost does not depend on how busy the machine's other cores are.

``device`` is validated like the other real pipelines (``cpu``, or ``cuda`` where
``torch.cuda.is_available()``), but scikit-learn has no GPU backend: every stage runs on the
CPU whatever the device.

``size`` and ``seed`` change every stage's output for the same hyperparameters, so they are
folded into the stages' version (part of the Merkle key): studies of different sizes or
seeds may share one cache without loading each other's results.

Example:
    >>> pipe = ml_stacking_pipeline(size="smoke")
    >>> pipe.stage_names
    ['preprocess', 'base_learners', 'meta_learner']
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, NamedTuple

import numpy as np

from stages import Pipeline, Stage

__all__ = ["SPACE", "ml_stacking_pipeline"]

#: Code version of the stages; bump it when a stage's code changes meaning.
VERSION = "1"


class _Size(NamedTuple):
    n_images: int  # images used (a stratified subsample when fewer than 1797)
    n_folds: int  # K of the out-of-fold K-fold
    n_train: int | None = None  # training rows kept after the split (None: all)
    label_noise: float = 0.0  # fraction of the training labels flipped to another class


_SIZES = {
    "smoke": _Size(360, 2),
    "full": _Size(1797, 5),
    # Headroom for tuner comparisons (smoke and full saturate near AUROC 0.99): 800 of the
    # 1257 training images, half of their labels flipped; validation stays clean.
    "hard": _Size(1797, 5, n_train=800, label_noise=0.5),
}
_VAL_FRACTION = 0.3

#: The search space, stage -> parameter -> spec (the same as conf/pipeline/ml_stacking.yaml).
SPACE: dict[str, dict[str, dict[str, Any]]] = {
    "preprocess": {
        "scaler": {"type": "categorical", "choices": ["none", "standard", "minmax", "robust"]},
        "n_components": {"type": "int", "low": 2, "high": 64, "log": True},
    },
    "base_learners": {
        "rf_n_estimators": {"type": "int", "low": 10, "high": 200, "log": True},
        "rf_max_depth": {"type": "int", "low": 2, "high": 16},
        "et_n_estimators": {"type": "int", "low": 10, "high": 200, "log": True},
        "et_max_depth": {"type": "int", "low": 2, "high": 16},
        "gb_n_estimators": {"type": "int", "low": 10, "high": 200, "log": True},
        "gb_max_depth": {"type": "int", "low": 2, "high": 16},
        "gb_learning_rate": {"type": "float", "low": 1e-3, "high": 0.5, "log": True},
    },
    "meta_learner": {
        "C": {"type": "float", "low": 1e-3, "high": 1e2, "log": True},
        "tol": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
        "max_iter": {"type": "int", "low": 50, "high": 500},
    },
}


def ml_stacking_pipeline(size: str = "full", device: str = "cpu", seed: int = 0) -> Pipeline:
    """The stacked-ensemble pipeline: preprocess -> base_learners -> meta_learner.

    Args:
        size: ``"full"`` (all of digits, 5 folds), ``"smoke"`` (360 images, 2 folds) or
            ``"hard"`` (800 training images, half their labels flipped, 5 folds).
        device: ``"cpu"``, or ``"cuda"`` where available; scikit-learn always runs on the
            CPU (see the module docstring).
        seed: Seeds the subsample, the split, the label flips, the folds and every model.

    Returns:
        The pipeline; its sink returns ``{"auroc", "accuracy"}`` and ``metric="auroc"``.

    Raises:
        ValueError: On a bad ``size``, ``device`` or ``seed``, before anything runs.

    Example:
        >>> ml_stacking_pipeline(size="smoke", seed=1).sink.name
        'meta_learner'
    """
    _check_size(size)
    _check_device(device)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise ValueError(f"`seed` must be an integer, but got {seed!r}")
    seed = int(seed)
    _import_sklearn()
    _digits()  # bundled with scikit-learn: fails here, not in a stage, if it is missing
    n_images, n_folds, n_train, label_noise = _SIZES[size]
    version = f"{VERSION}-{size}-seed{seed}"
    return Pipeline(
        [
            Stage(
                functools.partial(
                    preprocess,
                    n_images=n_images,
                    seed=seed,
                    n_train=n_train,
                    label_noise=label_noise,
                ),
                name="preprocess",
                output="data",
                version=version,
                space=SPACE["preprocess"],
            ),
            Stage(
                functools.partial(base_learners, n_folds=n_folds, seed=seed),
                name="base_learners",
                inputs=("data",),
                output="level1",
                version=version,
                space=SPACE["base_learners"],
            ),
            Stage(
                functools.partial(meta_learner, seed=seed),
                name="meta_learner",
                inputs=("level1",),
                version=version,
                space=SPACE["meta_learner"],
            ),
        ],
        metric="auroc",
    )


# ---------------------------------------------------------------------- validation
def _check_size(size: Any) -> None:
    if size not in _SIZES:
        raise ValueError(f"`size` must be 'smoke', 'full' or 'hard', but got {size!r}")


def _check_device(device: Any) -> None:
    if device == "cpu":
        return
    if device != "cuda":
        raise ValueError(f"`device` must be 'cpu' or 'cuda', but got {device!r}")
    import torch  # only here: importing torch costs seconds, and cpu needs no check

    if not torch.cuda.is_available():
        raise ValueError(
            "`device` 'cuda' is not available on this machine "
            "(torch.cuda.is_available() is False); use device=cpu"
        )


def _import_sklearn() -> None:
    # The stages import scikit-learn lazily (so `import stages` stays light); importing it
    # here, before any stage runs, keeps its ~1-2 s import out of the first trial's
    # measured stage-1 cost, which the cost models would otherwise learn from.
    import sklearn.decomposition
    import sklearn.ensemble
    import sklearn.linear_model
    import sklearn.metrics
    import sklearn.model_selection
    import sklearn.preprocessing  # noqa: F401


# ---------------------------------------------------------------------- stages
@functools.cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return X.astype(np.float64), y.astype(np.int64)


def preprocess(
    *,
    scaler: str,
    n_components: int,
    n_images: int,
    seed: int,
    n_train: int | None = None,
    label_noise: float = 0.0,
) -> dict[str, Any]:
    """Stage 1: subsample, split, add label noise, scale and project onto principal components.

    Args:
        scaler: ``none``, ``standard``, ``minmax`` or ``robust`` (fit on the training part).
        n_components: Principal components kept (2-64; digits has 64 features).
        n_images: Images used (stratified subsample when fewer than 1797).
        seed: Seeds the subsample, the split and the label flips.
        n_train: Training rows kept after the split (stratified subsample); None keeps all.
        label_noise: Fraction of the training labels flipped to another class (uniformly
            drawn); the validation labels are never touched.

    Returns:
        ``{"X_train": n_train x n_components, "X_val": n_val x n_components,
        "y_train": n_train, "y_val": n_val}``.
    """
    from sklearn.decomposition import PCA
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import MinMaxScaler, RobustScaler, StandardScaler
    from threadpoolctl import threadpool_limits

    scalers = {"standard": StandardScaler, "minmax": MinMaxScaler, "robust": RobustScaler}
    if scaler != "none" and scaler not in scalers:
        raise ValueError(f"`scaler` must be one of {['none', *scalers]}, but got {scaler!r}")
    X, y = _digits()
    with threadpool_limits(1):
        if n_images < len(y):
            X, _, y, _ = train_test_split(X, y, train_size=n_images, stratify=y, random_state=seed)
        X_train, X_val, y_train, y_val = train_test_split(
            X, y, test_size=_VAL_FRACTION, stratify=y, random_state=seed
        )
        if n_train is not None and n_train < len(y_train):
            X_train, _, y_train, _ = train_test_split(
                X_train, y_train, train_size=n_train, stratify=y_train, random_state=seed
            )
        if label_noise > 0.0:
            y_train = _flip_labels(y_train, label_noise, seed)
        if scaler != "none":
            fitted = scalers[scaler]().fit(X_train)
            X_train, X_val = fitted.transform(X_train), fitted.transform(X_val)
        # svd_solver="full" is exact and deterministic (no randomized SVD).
        pca = PCA(n_components=min(n_components, X_train.shape[1]), svd_solver="full")
        X_train = pca.fit_transform(X_train)
        X_val = pca.transform(X_val)
    return {"X_train": X_train, "X_val": X_val, "y_train": y_train, "y_val": y_val}


def _flip_labels(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Symmetric label noise: ``round(fraction * len(y))`` rows, chosen at random, get a
    label drawn uniformly from the other classes."""
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    rows = rng.choice(len(y), size=round(fraction * len(y)), replace=False)
    y = y.copy()
    # An offset in 1..n_classes-1 never maps a label onto itself.
    offsets = rng.integers(1, len(classes), size=len(rows))
    index = np.searchsorted(classes, y[rows])
    y[rows] = classes[(index + offsets) % len(classes)]
    return y


def base_learners(
    *,
    data: dict[str, Any],
    rf_n_estimators: int,
    rf_max_depth: int,
    et_n_estimators: int,
    et_max_depth: int,
    gb_n_estimators: int,
    gb_max_depth: int,
    gb_learning_rate: float,
    n_folds: int,
    seed: int,
) -> dict[str, Any]:
    """Stage 2: the level-1 features of stacking, from three tree ensembles.

    Each learner gives out-of-fold class probabilities on the training part (stratified
    ``n_folds``-fold, so no training row is scored by a model that saw it) and, refit on
    the whole training part, probabilities on the validation part.

    Args:
        data: Stage 1's output.
        rf_n_estimators, rf_max_depth: Random forest size and depth.
        et_n_estimators, et_max_depth: Extra trees size and depth.
        gb_n_estimators, gb_max_depth, gb_learning_rate: Histogram gradient boosting
            iterations, depth (no leaf-count cap, so the depth is the knob) and step size.
        n_folds: K of the out-of-fold K-fold.
        seed: Seeds the folds and every model.

    Returns:
        ``{"P_train": n_train x 3·n_classes, "P_val": n_val x 3·n_classes, "y_train",
        "y_val"}``, the learners' probabilities side by side (rf, et, gb).
    """
    from sklearn.base import clone
    from sklearn.ensemble import (
        ExtraTreesClassifier,
        HistGradientBoostingClassifier,
        RandomForestClassifier,
    )
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from threadpoolctl import threadpool_limits

    learners = [
        RandomForestClassifier(
            n_estimators=rf_n_estimators, max_depth=rf_max_depth, n_jobs=1, random_state=seed
        ),
        ExtraTreesClassifier(
            n_estimators=et_n_estimators, max_depth=et_max_depth, n_jobs=1, random_state=seed
        ),
        HistGradientBoostingClassifier(
            max_iter=gb_n_estimators,
            max_depth=gb_max_depth,
            max_leaf_nodes=None,
            learning_rate=gb_learning_rate,
            early_stopping=False,
            random_state=seed,
        ),
    ]
    X_train, X_val, y_train = data["X_train"], data["X_val"], data["y_train"]
    folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    P_train, P_val = [], []
    # One thread: the gradient boosting would otherwise take every OpenMP core.
    with threadpool_limits(1):
        for learner in learners:
            P_train.append(
                cross_val_predict(
                    clone(learner), X_train, y_train, cv=folds, method="predict_proba"
                )
            )
            P_val.append(clone(learner).fit(X_train, y_train).predict_proba(X_val))
    return {
        "P_train": np.hstack(P_train),
        "P_val": np.hstack(P_val),
        "y_train": y_train,
        "y_val": data["y_val"],
    }


def meta_learner(
    *, level1: dict[str, Any], C: float, tol: float, max_iter: int, seed: int
) -> dict[str, float]:
    """Stage 3: logistic regression on the level-1 probabilities; validation AUROC.

    Args:
        level1: Stage 2's output.
        C: Inverse L2 regularization strength.
        tol: Stopping tolerance of L-BFGS.
        max_iter: Iteration cap of L-BFGS.
        seed: Seeds the model (L-BFGS itself is deterministic).

    Returns:
        ``{"auroc": macro one-vs-rest AUROC, "accuracy": ...}`` on the validation part.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, roc_auc_score
    from threadpoolctl import threadpool_limits

    y_val = level1["y_val"]
    with threadpool_limits(1), warnings.catch_warnings():
        # A small max_iter/loose tol is part of the search space; not converging is an
        # outcome the objective already scores, not something to warn about per trial.
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = LogisticRegression(C=C, tol=tol, max_iter=max_iter, random_state=seed)
        model.fit(level1["P_train"], level1["y_train"])
        proba = model.predict_proba(level1["P_val"])
    auroc = roc_auc_score(y_val, proba, multi_class="ovr", average="macro")
    accuracy = accuracy_score(y_val, model.classes_[np.argmax(proba, axis=1)])
    return {"auroc": float(auroc), "accuracy": float(accuracy)}
