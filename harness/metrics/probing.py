"""Sparse probing (SAEBench, Karvonen et al. 2025): how well ``k`` code dimensions alone classify a label.

A binary task gives features ``X`` ``[n, m]`` (one row per example: a token's or a text's
code) and labels ``y`` ``[n]`` (bool) for a train and a test split.

- :func:`top_k_by_mean_difference`: SAEBench's selection: the ``k`` columns whose class
  means differ most on the *train* split, ``|mean(X[y]) - mean(X[~y])|``, largest first
  (ties to the lower column, so the choice is deterministic).
- :func:`probe_accuracy`: test accuracy of an L2 logistic regression (scikit-learn,
  ``C = 1``, lbfgs, up to 1,000 iterations, as SAEBench) fitted on the train split.  Unlike
  SAEBench the columns are first standardised with the train split's mean and standard
  deviation, so that the penalty does not depend on each method's code scale (a TopK
  SAE's codes, PCA coefficients and raw activations differ by orders of magnitude);
  constant columns stay constant.
- :func:`sparse_probe_accuracies`: both at each ``k`` (``None``: every column, the dense probe).
"""

from __future__ import annotations

import warnings
from typing import Any, Iterable

import numpy as np


def _features(X: Any) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"features must be [n, m], got shape {list(X.shape)}")
    return X


def _labels(y: Any, n: int) -> np.ndarray:
    y = np.asarray(y).astype(bool).reshape(-1)
    if y.shape[0] != n:
        raise ValueError(f"{y.shape[0]} labels for {n} rows of features")
    if y.all() or not y.any():
        raise ValueError("a binary probe needs examples of both classes")
    return y


def top_k_by_mean_difference(X: Any, y: Any, k: int) -> np.ndarray:
    """The ``min(k, m)`` column indices of ``X`` ``[n, m]`` with the largest ``|mean(X[y]) - mean(X[~y])|``.

    Largest first; equal differences keep column order.  ``y`` ``[n]`` bool (both classes present).
    """
    X = _features(X)
    y = _labels(y, X.shape[0])
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    diff = np.abs(X[y].mean(0) - X[~y].mean(0))
    return np.argsort(-diff, kind="stable")[: min(int(k), X.shape[1])]


def probe_accuracy(X_train: Any, y_train: Any, X_test: Any, y_test: Any, C: float = 1.0,
                   max_iter: int = 1000) -> float:
    """Fraction of test rows a logistic regression fitted on the (standardised) train rows classifies right."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    X_train, X_test = _features(X_train), _features(X_test)
    y_train = _labels(y_train, X_train.shape[0])
    y_test = np.asarray(y_test).astype(bool).reshape(-1)
    if X_test.shape[1] != X_train.shape[1] or y_test.shape[0] != X_test.shape[0]:
        raise ValueError(f"test features {list(X_test.shape)} / labels {list(y_test.shape)} do not match the "
                         f"train features' {X_train.shape[1]} columns")
    mean, std = X_train.mean(0), X_train.std(0)
    std[std == 0] = 1.0
    probe = LogisticRegression(C=C, max_iter=max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        probe.fit((X_train - mean) / std, y_train)
    return float((probe.predict((X_test - mean) / std) == y_test).mean())


def sparse_probe_accuracies(X_train: Any, y_train: Any, X_test: Any, y_test: Any,
                            ks: Iterable[int | None] = (1, 2, 5, 10, 20)) -> dict[int | None, float]:
    """``{k: test accuracy of the probe on the top-k columns by class-mean difference}``; ``k = None``: all columns.

    The columns are chosen on the train split only; ``k`` larger than the width uses every column.
    """
    X_train, X_test = _features(X_train), _features(X_test)
    ks = list(ks)
    finite = [int(k) for k in ks if k is not None]
    if any(k < 1 for k in finite):
        raise ValueError(f"every k must be >= 1 (or None for all columns), got {ks}")
    order = top_k_by_mean_difference(X_train, y_train, max(finite)) if finite else np.arange(X_train.shape[1])
    out: dict[int | None, float] = {}
    for k in ks:
        cols = np.arange(X_train.shape[1]) if k is None else order[: int(k)]
        out[k] = probe_accuracy(X_train[:, cols], y_train, X_test[:, cols], y_test)
    return out
