"""Clustering metrics: ACC with Hungarian matching, NMI, ARI.

All take integer label arrays ``[n_samples]``; predicted labels need not use
the same ids as the true ones (nor the same number of clusters).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

NMI_AVERAGE_METHOD = "arithmetic"  # pinned: scikit-learn's default changed once (geometric -> arithmetic)


def _as_labels(y: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D labels, got shape {arr.shape}")
    return arr


def contingency(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Counts ``[n_pred_clusters, n_true_classes]`` of samples per (predicted, true) pair."""
    y_true = _as_labels(y_true, "y_true")
    y_pred = _as_labels(y_pred, "y_pred")
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred differ in length: {y_true.shape[0]} vs {y_pred.shape[0]}")
    _, t = np.unique(y_true, return_inverse=True)
    _, p = np.unique(y_pred, return_inverse=True)
    table = np.zeros((p.max() + 1, t.max() + 1), dtype=np.int64)
    np.add.at(table, (p, t), 1)
    return table


def clustering_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Best one-to-one accuracy: max over matchings of clusters to classes (Hungarian), in [0, 1]."""
    table = contingency(y_true, y_pred)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / table.sum())


def normalized_mutual_info(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """NMI with arithmetic-mean normalisation, in [0, 1]."""
    return float(
        normalized_mutual_info_score(
            _as_labels(y_true, "y_true"), _as_labels(y_pred, "y_pred"), average_method=NMI_AVERAGE_METHOD
        )
    )


def adjusted_rand_index(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Adjusted Rand index, in [-1, 1] (0 = chance)."""
    return float(adjusted_rand_score(_as_labels(y_true, "y_true"), _as_labels(y_pred, "y_pred")))
