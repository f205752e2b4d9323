"""Circuit-finding metrics: ranking quality of head scores, set quality of a selected circuit, faithfulness.

Shapes: ``scores`` is a float array ``[n_layers, n_heads]`` (or any shape, it is
flattened; higher = more likely in the circuit) and ``truth`` / ``selected``
are bool arrays of the same shape (True = head in the ground-truth circuit /
in the method's circuit).  Flattening is row-major (layer-major), so flat
index ``i`` is head ``(i // n_heads, i % n_heads)``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata


def _scores_truth(scores, truth) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(truth)
    if s.shape != t.shape:
        raise ValueError(f"scores and truth must have the same shape, got {s.shape} and {t.shape}")
    if t.dtype != np.bool_:
        if not np.isin(t, (0, 1)).all():
            raise ValueError("truth must be boolean (or 0/1)")
        t = t.astype(bool)
    s, t = s.ravel(), t.ravel()
    if s.size == 0:
        raise ValueError("scores are empty")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinite values")
    return s, t


def _threshold_counts(s: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True and false positives at each distinct score threshold, in decreasing order (tied scores enter
    together: the last index of each run of equal sorted scores is one threshold)."""
    order = np.argsort(-s, kind="stable")
    s_sorted, t_sorted = s[order], t[order]
    ends = np.r_[np.nonzero(np.diff(s_sorted))[0], s_sorted.size - 1]
    tps = np.cumsum(t_sorted)[ends].astype(np.float64)
    return tps, (ends + 1) - tps


def _as_bool(x, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype != np.bool_:
        if a.size and not np.isin(a, (0, 1)).all():
            raise ValueError(f"{name} must be boolean (or 0/1)")
        a = a.astype(bool)
    return a


def roc_auc(scores, truth) -> float:
    """Area under the ROC curve of ``scores`` ``[L, H]`` (or flat) against bool ``truth`` (same shape).

    Equal to the Mann-Whitney statistic ``U / (n_pos * n_neg)``: the probability
    that a random circuit head scores above a random non-circuit head, ties
    counting one half.  ValueError when ``truth`` is all True or all False
    (the AUC is undefined without both classes).
    """
    s, t = _scores_truth(scores, truth)
    n_pos = int(t.sum())
    n_neg = t.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"roc_auc needs both circuit and non-circuit heads; truth has {n_pos} True and {n_neg} False"
        )
    ranks = rankdata(s, method="average")  # ties get their average rank: U counts a tie as 1/2
    u = ranks[t].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_curve(scores, truth) -> tuple[np.ndarray, np.ndarray]:
    """ROC curve of ``scores`` ``[L, H]`` (or flat) against bool ``truth``: ``(fpr, tpr)``, each ``[T + 1]``.

    One point per distinct score threshold in decreasing order (tied heads
    enter together), starting at ``(0, 0)`` and ending at ``(1, 1)``; the
    trapezoidal area under it equals :func:`roc_auc`.  ValueError when
    ``truth`` lacks one of the two classes.
    """
    s, t = _scores_truth(scores, truth)
    n_pos = int(t.sum())
    n_neg = t.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"roc_curve needs both circuit and non-circuit heads; truth has {n_pos} True and {n_neg} False")
    tps, fps = _threshold_counts(s, t)
    return np.r_[0.0, fps / n_neg], np.r_[0.0, tps / n_pos]


def pr_auc(scores, truth) -> float:
    """Average precision of ``scores`` ``[L, H]`` (or flat) against bool ``truth``, as scikit-learn defines it.

    ``AP = sum_n (R_n - R_{n-1}) P_n`` over the distinct score thresholds in
    decreasing order (tied scores enter together), with ``R_0 = 0``: a step
    function, no trapezoidal interpolation.  Equals
    ``sklearn.metrics.average_precision_score(truth, scores)``.  ValueError
    when ``truth`` has no True entry (recall is undefined).
    """
    s, t = _scores_truth(scores, truth)
    n_pos = int(t.sum())
    if n_pos == 0:
        raise ValueError("pr_auc needs at least one circuit head; truth is all False")
    tps, fps = _threshold_counts(s, t)
    precision = tps / (tps + fps)
    recall = tps / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def set_metrics(selected, truth) -> dict[str, float]:
    """Precision, recall and F1 of a selected head set against the ground truth.

    ``selected`` and ``truth``: bool arrays of the same shape (``[L, H]``).
    precision = |S & T| / |S| (0 when S is empty), recall = |S & T| / |T|
    (0 when T is empty), f1 = 2PR / (P + R) (0 when P + R = 0).
    Returns ``{"precision", "recall", "f1"}`` as floats.
    """
    sel = _as_bool(selected, "selected")
    tru = _as_bool(truth, "truth")
    if sel.shape != tru.shape:
        raise ValueError(f"selected and truth must have the same shape, got {sel.shape} and {tru.shape}")
    tp = int(np.logical_and(sel, tru).sum())
    n_sel, n_true = int(sel.sum()), int(tru.sum())
    precision = tp / n_sel if n_sel else 0.0
    recall = tp / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1)}


def top_k_mask(scores, k: int) -> np.ndarray:
    """Bool mask (same shape as ``scores``) of the ``k`` highest scores.

    Deterministic tie-break: among equal scores the head with the lower flat
    (layer-major) index wins, i.e. the earlier layer, then the lower head.
    ``k`` is clipped to the number of heads; ``k < 0`` or non-finite scores
    raise ValueError.
    """
    s = np.asarray(scores, dtype=np.float64)
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinite values")
    k = int(k)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    flat = s.ravel()
    order = np.argsort(-flat, kind="stable")  # stable: equal scores keep increasing index order
    mask = np.zeros(flat.size, dtype=bool)
    mask[order[: min(k, flat.size)]] = True
    return mask.reshape(s.shape)


def faithfulness(m_circuit: float, m_empty: float, m_full: float) -> float:
    """Faithfulness ``(m(C) - m(empty)) / (m(model) - m(empty))`` of a circuit.

    ``m_circuit``: the task metric with only the circuit's heads kept (the others
    ablated); ``m_empty``: with every head ablated; ``m_full``: the unablated
    model.  1 = the circuit carries the whole effect, 0 = none of it.  All three
    scalars.  ValueError when ``m_full == m_empty`` (undefined) or any is not finite.
    """
    vals = [float(m_circuit), float(m_empty), float(m_full)]
    if not all(math.isfinite(v) for v in vals):
        raise ValueError(f"faithfulness needs finite metrics, got m_circuit, m_empty, m_full = {vals}")
    m_c, m_e, m_f = vals
    if m_f == m_e:
        raise ValueError(
            f"faithfulness is undefined: the full model's metric equals the empty circuit's ({m_f}); "
            "the task has no effect to explain"
        )
    return (m_c - m_e) / (m_f - m_e)


# ------------------------------------------------------------- faithfulness curves (MIB)
#: MIB's circuit sizes ``k``, in percent of the scored components (Mueller et al. 2025, the circuit
#: track's ``evaluate_area_under_curve``: fractions .001 .002 .005 .01 .02 .05 .1 .2 .5 1).
MIB_KS = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)


def _check_ks(ks) -> np.ndarray:
    k = np.asarray(ks, dtype=np.float64)
    if k.ndim != 1 or k.size < 1:
        raise ValueError(f"ks must be a non-empty 1-D sequence of percentages, got shape {k.shape}")
    if not np.isfinite(k).all() or (k <= 0).any() or (k > 100).any():
        raise ValueError(f"ks must be percentages in (0, 100], got {k.tolist()}")
    if (np.diff(k) <= 0).any():
        raise ValueError(f"ks must be strictly increasing, got {k.tolist()}")
    return k


def faithfulness_curve_sizes(n_components: int, ks=MIB_KS) -> np.ndarray:
    """Number of components in the top-``k``% circuit ``C_k`` for each ``k`` in ``ks`` (percent): int64 ``[len(ks)]``.

    ``|C_k| = floor(k / 100 * n_components)``, MIB's convention (its evaluation code takes
    ``int(pct * n_scored_items)``), so ``k = 100`` is every component and a ``k`` whose share is
    below one component gives the *empty* circuit (``f = 0`` by definition), not a forced
    single component: with 12 heads, ``k`` = 0.1 ... 5% are 0 heads, 10% is 1, 20% is 2, 50% is 6.
    (A 1e-9 guard keeps float error from flooring an exact product, e.g. 10% of 30 = 3.)
    ValueError unless ``n_components >= 1`` and ``ks`` are strictly increasing percentages in (0, 100].
    """
    if isinstance(n_components, bool) or int(n_components) != n_components or n_components < 1:
        raise ValueError(f"n_components must be an integer >= 1, got {n_components!r}")
    k = _check_ks(ks)
    return np.floor(k / 100.0 * int(n_components) + 1e-9).astype(np.int64)


def top_k_masks(scores, sizes) -> np.ndarray:
    """Nested top-``n`` masks of ``scores`` for each ``n`` in ``sizes``: bool ``[len(sizes), *scores.shape]``.

    The same deterministic order as :func:`top_k_mask` (stable sort on ``-score``: ties go to the
    lower flat, layer-major, index), so ``top_k_masks(s, [n])[0] == top_k_mask(s, n)`` and a larger
    size's circuit always contains a smaller one's.  Sizes are clipped to the number of components.
    """
    s = np.asarray(scores, dtype=np.float64)
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinite values")
    n = np.asarray(sizes, dtype=np.int64).ravel()
    if (n < 0).any():
        raise ValueError(f"sizes must be >= 0, got {n.tolist()}")
    rank = np.empty(s.size, dtype=np.int64)
    rank[np.argsort(-s.ravel(), kind="stable")] = np.arange(s.size)
    return (rank[None, :] < n[:, None]).reshape(n.size, *s.shape)


def _curve(ks, f) -> tuple[np.ndarray, np.ndarray]:
    x = _check_ks(ks) / 100.0
    y = np.asarray(f, dtype=np.float64)
    if y.shape != x.shape:
        raise ValueError(f"f must have one value per k: {x.size} ks, f of shape {y.shape}")
    if x.size < 2:
        raise ValueError("an area needs at least two points of the curve")
    if not np.isfinite(y).all():
        raise ValueError(f"f contains NaN or infinite values: {y.tolist()}")
    return x, y


def _trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum(np.diff(x) * (y[:-1] + y[1:]) / 2.0))


def cpr(ks, f) -> float:
    """MIB's CPR: the area under the faithfulness curve ``f(k)``, by the trapezoid rule.

    ``ks``: circuit sizes in percent of the components (strictly increasing, in (0, 100]); ``f``: the
    faithfulness ``(m(C_k) - m(empty)) / (m(model) - m(empty))`` at each (unitless, may leave [0, 1]).
    The x-axis is the *fraction* of components, ``x = k / 100``, linear (MIB's default), from the first
    ``k`` to the last with no point added at 0:
    ``CPR = sum_i (x_{i+1} - x_i) (f_i + f_{i+1}) / 2``.  Units: fraction of components x faithfulness;
    on :data:`MIB_KS` the axis spans 0.999, so ``f = 1`` everywhere gives 0.999.  Higher is better;
    ``f`` above 1 raises it (a circuit that beats the model counts as more than the model).
    """
    x, y = _curve(ks, f)
    return _trapezoid(x, y)


def cmd(ks, f) -> float:
    """MIB's CMD: the area between the faithfulness curve and 1, ``trapezoid over x = k / 100 of |1 - f(k)|``.

    Same axis and rule as :func:`cpr` (linear fraction of components, first ``k`` to last, no point at
    0).  0 = the circuit matches the model at every size; lower is better; overshoot (``f > 1``) and
    undershoot count alike.  On :data:`MIB_KS` a curve with ``f = 0`` everywhere gives 0.999.
    """
    x, y = _curve(ks, f)
    return _trapezoid(x, np.abs(1.0 - y))


__all__ = [
    "MIB_KS", "cmd", "cpr", "faithfulness", "faithfulness_curve_sizes", "pr_auc", "roc_auc", "set_metrics",
    "top_k_mask", "top_k_masks",
]
