"""Clustering protocol: ``fit_predict(X, n_clusters) -> labels``."""

from __future__ import annotations

import numpy as np

from harness.core.method import Method


def kmeans_labels(Z: np.ndarray, n_clusters: int, n_init: int, seed: int) -> np.ndarray:
    """scikit-learn k-means of the rows of ``Z`` (``n_init`` restarts, seeded): int64 labels ``[n_samples]``."""
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=n_clusters, n_init=n_init, random_state=seed).fit_predict(Z).astype(np.int64)


class ClusteringMethod(Method):
    """A method that clusters rows of a feature matrix.

    Subclasses implement :meth:`fit_predict`.  ``self.seed`` and
    ``self.device`` are set by the runner before the call.
    """

    family = "clustering"

    def fit_predict(self, X: np.ndarray, n_clusters: int) -> np.ndarray:
        """Cluster ``X`` (float array ``[n_samples, n_features]``) into ``n_clusters``.

        Returns integer labels ``[n_samples]`` with values in ``[0, n_clusters)``.
        """
        raise NotImplementedError
