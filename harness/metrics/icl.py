"""Metrics of the icl family (in-context linear regression), each defined once.

Conventions: a *context* is one regression task; predictions of a predictor
at ``m`` query inputs are arrays ``[..., m]`` with the matching queries
``x_query [..., m, d]``.  Everything is "dimension-normalised" as in Akyurek
et al. (2022, Fig. 1-3): squared quantities are divided by the input
dimension ``d``, so that predicting 0 for a noiseless ``y = w . x`` with
``w ~ N(0, I_d)``, ``x ~ N(0, I_d)`` has normalised error 1.
"""

from __future__ import annotations

import numpy as np

__all__ = ["implied_weights", "ilwd", "normalized_squared_error", "r2_score", "spd"]


def _reduce(values: np.ndarray, axis):
    out = values.mean(axis=axis)
    return float(out) if np.ndim(out) == 0 else out


def normalized_squared_error(pred: np.ndarray, target: np.ndarray, d: int, axis=None):
    """Squared error divided by ``d``: ``mean((pred - target)^2) / d``.

    ``axis``: the axes averaged over (default all, giving a float); e.g. with
    ``pred [B, K, m]`` and ``axis=(0, 2)`` one value per prefix length ``k``.
    """
    pred, target = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    if pred.shape != np.broadcast_shapes(pred.shape, target.shape):
        raise ValueError(f"pred {pred.shape} and target {target.shape} do not match")
    return _reduce((pred - target) ** 2 / d, axis)


def spd(pred_a: np.ndarray, pred_b: np.ndarray, d: int, axis=None):
    """Squared prediction difference (Akyurek et al. 2022, Sec. 4.1), dimension-normalised.

    ``SPD(A, B) = E_{D, x'} (A(D)(x') - B(D)(x'))^2 / d``, the expectation
    estimated by the mean over contexts and queries (``axis`` as in
    :func:`normalized_squared_error`).  ``spd(a, a) == 0``.
    """
    pred_a, pred_b = np.asarray(pred_a, dtype=np.float64), np.asarray(pred_b, dtype=np.float64)
    if pred_a.shape != pred_b.shape:
        raise ValueError(f"predictions differ in shape: {pred_a.shape} vs {pred_b.shape}")
    return _reduce((pred_a - pred_b) ** 2 / d, axis)


def implied_weights(x_query: np.ndarray, pred: np.ndarray, pinv: np.ndarray | None = None) -> np.ndarray:
    """The linear weights that best explain a predictor's outputs (Akyurek et al. Eq. 16).

    ``x_query [..., m, d]`` (the unlabeled probe inputs of one context, ``m >=
    d``), ``pred [..., m]`` -> least-squares ``w_hat [..., d]`` with
    ``pred ~ x_query @ w_hat`` (no intercept: every predictor of the family
    maps ``x = 0`` to 0 in expectation).  For a linear predictor ``x -> w . x``
    and ``m >= d`` queries in general position this recovers ``w`` exactly.
    Leading axes of ``pred`` beyond those of ``x_query`` are broadcast (e.g.
    ``x_query [B, m, d]`` with ``pred [B, K, m]`` gives ``[B, K, d]``).  ``pinv``: the
    pseudo-inverse of ``x_query`` ``[..., d, m]`` when the caller already has it.
    """
    x_query = np.asarray(x_query, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    m, d = x_query.shape[-2:]
    if m < d:
        raise ValueError(f"implied weights need at least d = {d} queries per context, got {m}")
    if pinv is None:
        pinv = np.linalg.pinv(x_query)  # [..., d, m]
    if pred.ndim == x_query.ndim - 1:
        return np.einsum("...dm,...m->...d", pinv, pred)
    if pred.ndim == x_query.ndim:  # one extra axis (e.g. prefix length) after the context axes
        return np.einsum("...dm,...km->...kd", pinv, pred)
    raise ValueError(f"pred {pred.shape} does not fit x_query {x_query.shape}")


def ilwd(w_a: np.ndarray, w_b: np.ndarray, d: int | None = None, axis=None):
    """Implicit linear weight difference (Akyurek et al. Eq. 17), dimension-normalised.

    ``ILWD(A, B) = E_D ||w_hat_A - w_hat_B||^2 / d`` from implied weights
    ``[..., d]`` (see :func:`implied_weights`); ``axis`` indexes the leading
    (context) axes averaged over, default all.  ``d`` defaults to the last axis.
    """
    w_a, w_b = np.asarray(w_a, dtype=np.float64), np.asarray(w_b, dtype=np.float64)
    if w_a.shape != w_b.shape:
        raise ValueError(f"weights differ in shape: {w_a.shape} vs {w_b.shape}")
    d = w_a.shape[-1] if d is None else d
    sq = ((w_a - w_b) ** 2).sum(-1) / d
    return _reduce(sq, axis)


def r2_score(target: np.ndarray, pred: np.ndarray) -> float:
    """Coefficient of determination, *pooled over target dimensions*.

    ``R^2 = 1 - sum_ij (T_ij - T_hat_ij)^2 / sum_ij (T_ij - mean_i T_ij)^2`` for
    ``T [N, t]``: one ratio of sums over samples and dimensions (the centring
    uses each dimension's mean over the evaluated samples).  This is
    scikit-learn's ``r2_score(..., multioutput='variance_weighted')``, not the
    uniform average of per-dimension R^2.  1 is perfect, 0 is the per-dimension
    mean, negative is worse than that.
    """
    target = np.asarray(target, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    if target.ndim == 1:
        target, pred = target[:, None], pred[:, None] if pred.ndim == 1 else pred
    if target.shape != pred.shape:
        raise ValueError(f"target {target.shape} and prediction {pred.shape} differ in shape")
    ss_res = float(((target - pred) ** 2).sum())
    ss_tot = float(((target - target.mean(axis=0)) ** 2).sum())
    if ss_tot == 0.0:
        raise ValueError("R^2 is undefined for a constant target")
    return 1.0 - ss_res / ss_tot
