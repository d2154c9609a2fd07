"""The classifier of train_plain.py as three cached stages: features -> train -> evaluate.

Each stage is the plain function it was, wrapped with ``stages.stage``; its defaults are the
hand-picked values of train_plain.py, and conf/pipeline/digits.yaml says what to search.
"""

from __future__ import annotations

import numpy as np
from scipy.special import softmax
from sklearn.base import ClassifierMixin
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from threadpoolctl import threadpool_limits

from stages import Pipeline, stage

SEED = 0  # the split and k-means: a constant the stages read, so part of their cache keys


# One thread per stage: these models are small, extra threads only fight over the cores,
# and a stage's measured time (its cost) stays comparable between trials.
@stage()
def features(n_components: int = 32, n_clusters: int = 64) -> dict[str, np.ndarray]:
    """Split digits; distances to k-means centroids in PCA space. The slow stage."""
    with threadpool_limits(1):
        X, y = load_digits(return_X_y=True)
        X_train, X_val, y_train, y_val = train_test_split(
            X, y, test_size=0.3, stratify=y, random_state=SEED
        )
        scaler = StandardScaler().fit(X_train)
        pca = PCA(n_components, random_state=SEED).fit(scaler.transform(X_train))
        Z_train = pca.transform(scaler.transform(X_train))
        Z_val = pca.transform(scaler.transform(X_val))
        kmeans = KMeans(n_clusters, n_init=10, random_state=SEED).fit(Z_train)
        D_train, D_val = kmeans.transform(Z_train), kmeans.transform(Z_val)
        rescale = StandardScaler().fit(D_train)
    return {
        "X_train": rescale.transform(D_train),
        "X_val": rescale.transform(D_val),
        "y_train": y_train,
        "y_val": y_val,
    }


@stage(inputs=["features"], output="model")
def train(
    features: dict[str, np.ndarray], classifier: str = "svm", C: float = 1.0
) -> ClassifierMixin:
    """Fit a logistic regression or an RBF support vector machine."""
    if classifier not in ("logreg", "svm"):
        raise ValueError(f"classifier must be 'logreg' or 'svm', but got {classifier!r}")
    model = LogisticRegression(C=C, max_iter=500) if classifier == "logreg" else SVC(C=C)
    with threadpool_limits(1):
        return model.fit(features["X_train"], features["y_train"])


@stage(inputs=["features", "model"])
def evaluate(
    features: dict[str, np.ndarray],
    model: ClassifierMixin,
    n_neighbors: int = 5,
    knn_weight: float = 0.25,
) -> float:
    """Blend the model's scores with a k-nearest-neighbours vote; validation accuracy."""
    X_val = features["X_val"]
    with threadpool_limits(1):
        knn = KNeighborsClassifier(n_neighbors).fit(features["X_train"], features["y_train"])
        scores = (1 - knn_weight) * softmax(model.decision_function(X_val), axis=1)
        scores += knn_weight * knn.predict_proba(X_val)
    return float(np.mean(scores.argmax(axis=1) == features["y_val"]))


def make_pipeline() -> Pipeline:
    """The pipeline to tune: ``pipeline.target`` in conf/pipeline/digits.yaml."""
    return Pipeline([features, train, evaluate])
