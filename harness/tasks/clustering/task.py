"""The clustering task: cluster a data set's rows into as many clusters as it has classes; score them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import numpy as np

from harness.core.context import RunContext
from harness.core.task import MetricSpec, Task
from harness.errors import InvalidOutputError
from harness.metrics import adjusted_rand_index, clustering_accuracy, normalized_mutual_info
from harness.protocols.clustering import ClusteringMethod, validate_labels

#: ``loader(config, seed) -> (X [n, d], y [n])``: a data set, deterministic in (config, seed).
Loader = Callable[[Any, int], tuple[np.ndarray, np.ndarray]]


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
    """One data set per variant: the registration sets ``loader`` (and ``Config`` when it has settings)."""

    family: ClassVar[str] = "clustering"
    metrics = (
        MetricSpec("acc", True, "accuracy after Hungarian matching of clusters to classes", abs_tol=0.03),
        MetricSpec("nmi", True, "normalised mutual information (arithmetic mean)", abs_tol=0.03),
        MetricSpec("ari", True, "adjusted Rand index", abs_tol=0.04),
    )
    main_metric = "acc"
    loader: Loader | None = None
    input_keys = ()  # the data sets are generated or bundled with scikit-learn

    def build(self, config: Any, ctx: RunContext) -> ClusteringData:
        X, y = self.loader(config, ctx.seed)
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
