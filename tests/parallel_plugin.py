"""A plugin for tests/test_parallel.py: a clustering method that kills its own process (``os._exit``), or not.

Importable by name (``--plugin parallel_plugin``) from the worker processes, which rebuild the run's cells.
"""

from __future__ import annotations

import os

import numpy as np

from harness.core.registry import register_method
from harness.protocols.clustering import ClusteringMethod, kmeans_labels


@register_method("test-exit", version="1", description="test plugin: os._exit(3) when exit_code is set")
class ExitingMethod(ClusteringMethod):
    def __init__(self, exit_code: int = 0) -> None:
        self.exit_code = exit_code

    def fit_predict(self, X: np.ndarray, n_clusters: int) -> np.ndarray:
        if self.exit_code:
            os._exit(self.exit_code)  # what no try/except can catch in-process
        return kmeans_labels(X, n_clusters, 1, self.seed)
