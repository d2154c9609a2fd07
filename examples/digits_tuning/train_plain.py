"""Train and score a digits classifier in one go: the "before" of docs/your-pipeline.md.

Three steps with hand-picked hyperparameters: features (scale, PCA, distances to k-means
centroids: the slow step), train (a classifier) and evaluate (blend in a k-nearest-neighbours
vote, accuracy on the validation set).
"""

import numpy as np
from scipy.special import softmax
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from threadpoolctl import threadpool_limits

N_COMPONENTS, N_CLUSTERS = 32, 64  # features
CLASSIFIER, C = "svm", 1.0  # train
N_NEIGHBORS, KNN_WEIGHT = 5, 0.25  # evaluate

# One thread: these models are small, and extra threads only fight over the cores.
with threadpool_limits(1):
    # features
    X, y = load_digits(return_X_y=True)
    X_train, X_val, y_train, y_val = train_test_split(
        X, y, test_size=0.3, stratify=y, random_state=0
    )
    scaler = StandardScaler().fit(X_train)
    pca = PCA(N_COMPONENTS, random_state=0).fit(scaler.transform(X_train))
    Z_train = pca.transform(scaler.transform(X_train))
    Z_val = pca.transform(scaler.transform(X_val))
    kmeans = KMeans(N_CLUSTERS, n_init=10, random_state=0).fit(Z_train)
    D_train, D_val = kmeans.transform(Z_train), kmeans.transform(Z_val)
    rescale = StandardScaler().fit(D_train)
    X_train, X_val = rescale.transform(D_train), rescale.transform(D_val)

    # train
    if CLASSIFIER == "logreg":
        model = LogisticRegression(C=C, max_iter=500).fit(X_train, y_train)
    else:
        model = SVC(C=C).fit(X_train, y_train)

    # evaluate
    knn = KNeighborsClassifier(N_NEIGHBORS).fit(X_train, y_train)
    scores = (1 - KNN_WEIGHT) * softmax(model.decision_function(X_val), axis=1)
    scores += KNN_WEIGHT * knn.predict_proba(X_val)
    accuracy = np.mean(scores.argmax(axis=1) == y_val)

print(f"validation accuracy: {accuracy:.4f}")
