"""Shared evaluation of the clustering family."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from harness.core.context import RunContext
from harness.errors import InvalidOutputError
from harness.metrics import adjusted_rand_index, clustering_accuracy, normalized_mutual_info
from harness.protocols.clustering import ClusteringMethod
from harness.core.task import MetricSpec, Task


@dataclass(frozen=True)
class ClusteringData:
    """Inputs of one clustering cell.

    ``X``: float32 ``[n_samples, n_features]`` (already scaled as the task
    defines); ``y``: int ``[n_samples]`` true classes; ``n_clusters``: the
    number of clusters the method is asked for.
    """

    X: np.ndarray
    y: np.ndarray
    n_clusters: int


class ClusteringTask(Task):
    """Subclasses implement :meth:`load` returning ``(X, y)``; the rest is shared."""

    metrics = (
        MetricSpec("acc", True, "accuracy after Hungarian matching of clusters to classes", abs_tol=0.03),
        MetricSpec("nmi", True, "normalised mutual information (arithmetic mean)", abs_tol=0.03),
        MetricSpec("ari", True, "adjusted Rand index", abs_tol=0.04),
    )
    main_metric = "acc"

    def load(self, config: Mapping[str, Any], seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Features ``[n, d]`` and labels ``[n]``; deterministic in (config, seed)."""
        raise NotImplementedError

    def build(self, config: Mapping[str, Any], seed: int, ctx: RunContext) -> ClusteringData:
        X, y = self.load(config, seed)
        X = np.ascontiguousarray(X, dtype=np.float32)
        y = np.asarray(y, dtype=np.int64)
        return ClusteringData(X=X, y=y, n_clusters=int(len(np.unique(y))))

    def apply(self, method: ClusteringMethod, data: ClusteringData, ctx: RunContext) -> np.ndarray:
        if not hasattr(method, "fit_predict"):
            raise InvalidOutputError(f"method {method.name!r} has no fit_predict(X, n_clusters)")
        labels = method.fit_predict(data.X.copy(), data.n_clusters)
        return validate_labels(labels, len(data.y), data.n_clusters)

    def evaluate(self, data: ClusteringData, output: np.ndarray) -> dict[str, float]:
        return {
            "acc": clustering_accuracy(data.y, output),
            "nmi": normalized_mutual_info(data.y, output),
            "ari": adjusted_rand_index(data.y, output),
        }


def validate_labels(labels: Any, n_samples: int, n_clusters: int) -> np.ndarray:
    """Check a method's labels: 1-D integers, one per sample, in ``[0, n_clusters)``."""
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
