"""Clustering metrics against independent, brute-force computations written here."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from harness.metrics import adjusted_rand_index, clustering_accuracy, normalized_mutual_info


def brute_force_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Best accuracy over every one-to-one map from predicted clusters to true classes.

    Clusters left without a class (when there are more clusters than classes)
    count as wrong.
    """
    classes = sorted(set(y_true.tolist()))
    clusters = sorted(set(y_pred.tolist()))
    slots = classes + [None] * max(0, len(clusters) - len(classes))
    best = 0
    for perm in itertools.permutations(slots, len(clusters)):
        mapping = dict(zip(clusters, perm))
        hits = sum(1 for t, p in zip(y_true.tolist(), y_pred.tolist()) if mapping[p] == t)
        best = max(best, hits)
    return best / len(y_true)


def entropy(labels: np.ndarray) -> float:
    n = len(labels)
    return -sum((c / n) * math.log(c / n) for c in np.unique(labels, return_counts=True)[1])


def mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    n = len(a)
    mi = 0.0
    for u in np.unique(a):
        for v in np.unique(b):
            n_uv = int(np.sum((a == u) & (b == v)))
            if n_uv:
                n_u, n_v = int(np.sum(a == u)), int(np.sum(b == v))
                mi += (n_uv / n) * math.log(n * n_uv / (n_u * n_v))
    return mi


def nmi_arithmetic(a: np.ndarray, b: np.ndarray) -> float:
    ha, hb = entropy(a), entropy(b)
    if ha == 0.0 and hb == 0.0:
        return 1.0
    return mutual_information(a, b) / ((ha + hb) / 2.0)


def ari_pair_counting(a: np.ndarray, b: np.ndarray) -> float:
    """ARI from the four pair counts over all sample pairs (Hubert & Arabie)."""
    n11 = n10 = n01 = n00 = 0
    for i, j in itertools.combinations(range(len(a)), 2):
        same_a, same_b = a[i] == a[j], b[i] == b[j]
        if same_a and same_b:
            n11 += 1
        elif same_a:
            n10 += 1
        elif same_b:
            n01 += 1
        else:
            n00 += 1
    pairs = n11 + n10 + n01 + n00
    expected = (n11 + n10) * (n11 + n01) / pairs
    maximum = ((n11 + n10) + (n11 + n01)) / 2.0
    if maximum == expected:
        return 1.0
    return (n11 - expected) / (maximum - expected)


def random_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Small random labellings, with different numbers of classes and clusters and non-contiguous ids."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(8, 40))
    k_true, k_pred = int(rng.integers(2, 5)), int(rng.integers(2, 6))
    true_ids = rng.choice(np.arange(-3, 20), size=k_true, replace=False)
    pred_ids = rng.choice(np.arange(0, 50), size=k_pred, replace=False)
    y_true = true_ids[rng.integers(0, k_true, n)]
    # predictions correlated with the truth, with random flips
    y_pred = pred_ids[np.searchsorted(np.sort(true_ids), y_true) % k_pred]
    flip = rng.random(n) < 0.35
    y_pred[flip] = pred_ids[rng.integers(0, k_pred, int(flip.sum()))]
    return y_true, y_pred


CASES = [random_case(s) for s in range(12)]


@pytest.mark.parametrize("y_true,y_pred", CASES)
def test_accuracy_matches_brute_force(y_true, y_pred):
    assert clustering_accuracy(y_true, y_pred) == pytest.approx(brute_force_accuracy(y_true, y_pred), abs=1e-12)


@pytest.mark.parametrize("y_true,y_pred", CASES)
def test_nmi_matches_entropy_computation(y_true, y_pred):
    assert normalized_mutual_info(y_true, y_pred) == pytest.approx(nmi_arithmetic(y_true, y_pred), abs=1e-10)


@pytest.mark.parametrize("y_true,y_pred", CASES)
def test_ari_matches_pair_counting(y_true, y_pred):
    assert adjusted_rand_index(y_true, y_pred) == pytest.approx(ari_pair_counting(y_true, y_pred), abs=1e-10)


def test_cases_cover_unequal_cluster_counts():
    assert any(len(np.unique(t)) != len(np.unique(p)) for t, p in CASES)
    assert any(len(np.unique(t)) < len(np.unique(p)) for t, p in CASES)
    assert any(len(np.unique(t)) > len(np.unique(p)) for t, p in CASES)


def test_nmi_is_arithmetic_not_geometric():
    # a case where arithmetic and geometric normalisations differ
    y_true = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 0, 1, 1, 1, 1, 1, 1])
    mi = mutual_information(y_true, y_pred)
    geometric = mi / math.sqrt(entropy(y_true) * entropy(y_pred))
    assert normalized_mutual_info(y_true, y_pred) == pytest.approx(nmi_arithmetic(y_true, y_pred))
    assert abs(normalized_mutual_info(y_true, y_pred) - geometric) > 1e-3


@pytest.mark.parametrize("seed", range(4))
def test_perfect_and_permuted_labellings_score_one(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 5, 60)
    relabel = rng.permutation(5) * 7 + 3  # a permutation onto non-contiguous ids
    for y_pred in (y.copy(), relabel[y]):
        assert clustering_accuracy(y, y_pred) == pytest.approx(1.0)
        assert normalized_mutual_info(y, y_pred) == pytest.approx(1.0)
        assert adjusted_rand_index(y, y_pred) == pytest.approx(1.0)


def test_accuracy_known_value():
    y_true = np.array([0, 0, 0, 1, 1, 1])
    y_pred = np.array([1, 1, 0, 0, 0, 0])  # best map: 1->0, 0->1: 2 + 3 = 5 correct
    assert clustering_accuracy(y_true, y_pred) == pytest.approx(5 / 6)


def test_metrics_reject_mismatched_lengths():
    with pytest.raises(ValueError):
        clustering_accuracy(np.array([0, 1, 1]), np.array([0, 1]))
