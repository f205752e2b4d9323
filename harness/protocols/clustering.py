"""Clustering protocol: ``fit_predict(X, n_clusters) -> labels``."""

from __future__ import annotations

from typing import Any

import numpy as np

from harness.core.method import Method
from harness.errors import InvalidOutputError


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


def validate_labels(labels: Any, n_samples: int, n_clusters: int) -> np.ndarray:
    """Check a method's labels: 1-D integers, one per sample, in ``[0, n_clusters)``; int64 ``[n_samples]``."""
    if hasattr(labels, "detach"):  # a torch tensor
        labels = labels.detach().cpu().numpy()
    if not isinstance(labels, np.ndarray):
        raise InvalidOutputError(f"fit_predict must return a numpy array of labels, got {type(labels).__name__}")
    if labels.shape != (n_samples,):
        raise InvalidOutputError(f"fit_predict must return labels of shape ({n_samples},), got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise InvalidOutputError(f"labels must be integers, got dtype {labels.dtype}")
    if n_samples and (labels.min() < 0 or labels.max() >= n_clusters):
        raise InvalidOutputError(
            f"labels must lie in [0, {n_clusters}), got range [{labels.min()}, {labels.max()}]"
        )
    return labels.astype(np.int64)
