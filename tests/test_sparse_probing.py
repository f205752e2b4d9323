"""Sparse probing (SAEBench): selection, probe accuracy against an independent computation, the token-class
labels and balanced tasks of the reconstruction family, and the random-SAE control."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from harness.core import registry
from harness.core.context import RunContext
from harness.metrics.probing import probe_accuracy, sparse_probe_accuracies, top_k_by_mean_difference
from harness.protocols.reconstruction import SparseCodes
from harness.tasks.reconstruction.probing import (
    CLASSES,
    KS,
    MAX_TEST,
    MAX_TRAIN,
    PROBE_METRICS,
    dense_rows,
    metric_name,
    plan_probes,
    probe_metrics,
    token_class,
    token_labels,
)


def toy(n=400, m=30, seed=0):
    """Gaussian features and a balanced label; column 7 equals the label."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, m))
    y = np.arange(n) % 2 == 0
    rng.shuffle(y)
    X[:, 7] = y
    return X, y


def newton_logistic(X, y, C=1.0, iters=50):
    """An independent L2 logistic regression: Newton's method on C * sum(log-loss) + |w|^2 / 2 (intercept free)."""
    A = np.hstack([X, np.ones((X.shape[0], 1))])
    w = np.zeros(A.shape[1])
    reg = np.eye(A.shape[1])
    reg[-1, -1] = 0.0
    t = y.astype(float)
    for _ in range(iters):
        p = 1 / (1 + np.exp(-A @ w))
        grad = C * A.T @ (p - t) + reg @ w
        hess = C * (A.T * (p * (1 - p))) @ A + reg
        w -= np.linalg.solve(hess, grad)
    return w


def test_one_latent_equal_to_the_label_gives_accuracy_one_at_k1():
    X, y = toy()
    assert top_k_by_mean_difference(X[:200], y[:200], 1).tolist() == [7]
    accs = sparse_probe_accuracies(X[:200], y[:200], X[200:], y[200:], ks=(1, 2, 5, None))
    assert accs[1] == 1.0 and accs[2] == 1.0 and set(accs) == {1, 2, 5, None}


def test_selection_is_the_largest_absolute_mean_difference_with_ties_in_column_order():
    y = np.array([True, True, False, False])
    X = np.array([[0, 5, -3, 1, 2], [0, 5, -3, 1, 2], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=float)
    # |differences| = 0, 5, 3, 1, 2; column 2's difference is negative and still counts
    assert top_k_by_mean_difference(X, y, 3).tolist() == [1, 2, 4]
    assert top_k_by_mean_difference(X, y, 99).tolist() == [1, 2, 4, 3, 0]
    assert top_k_by_mean_difference(np.zeros((4, 3)), y, 3).tolist() == [0, 1, 2]  # all tied: column order
    with pytest.raises(ValueError, match="both classes"):
        top_k_by_mean_difference(X, np.ones(4, dtype=bool), 1)
    with pytest.raises(ValueError, match="k"):
        sparse_probe_accuracies(X, y, X, y, ks=(0,))


def test_probe_accuracy_equals_an_independent_newton_logistic_regression():
    rng = np.random.default_rng(3)
    n, m = 300, 4
    y = rng.random(2 * n) < 0.5
    X = rng.normal(size=(2 * n, m)) * np.array([1.0, 10.0, 0.01, 3.0]) + np.outer(y, [0.8, 4.0, 0.004, 0.0])
    X_tr, y_tr, X_te, y_te = X[:n], y[:n], X[n:], y[n:]
    mean, std = X_tr.mean(0), X_tr.std(0)
    w = newton_logistic((X_tr - mean) / std, y_tr)
    pred = np.hstack([(X_te - mean) / std, np.ones((n, 1))]) @ w > 0
    assert probe_accuracy(X_tr, y_tr, X_te, y_te) == pytest.approx(float((pred == y_te).mean()), abs=1 / n)
    # standardisation: the accuracy does not depend on a column's scale
    assert probe_accuracy(X_tr * 1e3, y_tr, X_te * 1e3, y_te) == probe_accuracy(X_tr, y_tr, X_te, y_te)


def test_constant_columns_and_determinism():
    X, y = toy(seed=1)
    X[:, 3] = 0.0  # a dead latent
    a = sparse_probe_accuracies(X[:200], y[:200], X[200:], y[200:])
    b = sparse_probe_accuracies(X[:200].copy(), y[:200].copy(), X[200:].copy(), y[200:].copy())
    assert a == b and set(a) == set(KS)


def test_token_classes():
    cases = {"the": "word", " The": "word", "return": "keyword", "None": "keyword", "if": "keyword",
             "42": "number", " 7": "number", ".": "punctuation", ">>>": "punctuation", "(": "punctuation"}
    for token, cls in cases.items():
        assert CLASSES[token_class(token)] == cls, token
    for token in ("<doc>", "<unk>", "[CLS]", "##ing", "x2", "", " ", "é"):
        assert token_class(token) == -1, token
    assert token_labels(["a", ".", "<doc>"]).tolist() == [0, 3, -1]


def test_plan_is_balanced_capped_and_depends_only_on_the_labels():
    rng = np.random.default_rng(0)
    train = rng.choice([-1, 0, 0, 0, 1, 2, 3, 3], size=5000)
    test = rng.choice([-1, 0, 0, 1, 3, 3], size=800)  # no numbers in the test split: that task is skipped
    plan = plan_probes(train, test)
    assert [t.name for t in plan.tasks] == ["word", "keyword", "punctuation"]
    for t in plan.tasks:
        cls = CLASSES.index(t.name)
        for rows, y, labels, cap in ((t.train_rows, t.train_y, train, MAX_TRAIN), (t.test_rows, t.test_y, test, MAX_TEST)):
            assert y.sum() == (~y).sum() <= cap and len(set(rows.tolist())) == len(rows)
            assert (labels[rows[y]] == cls).all() and ((labels[rows[~y]] != cls) & (labels[rows[~y]] >= 0)).all()
    assert plan.tasks[0].train_y.sum() == MAX_TRAIN  # words are plentiful: capped
    assert torch.equal(plan.train_rows, torch.from_numpy(np.unique(np.concatenate([t.train_rows for t in plan.tasks]))))
    again = plan_probes(train.copy(), test.copy())
    assert all(np.array_equal(a.train_rows, b.train_rows) and np.array_equal(a.test_rows, b.test_rows)
               for a, b in zip(plan.tasks, again.tasks))
    with pytest.raises(Exception, match="too few"):
        plan_probes(np.zeros(10, dtype=np.int64), np.zeros(10, dtype=np.int64))


def test_probe_metrics_read_sparse_and_dense_codes_alike_and_find_a_label_latent():
    rng = np.random.default_rng(1)
    train_labels, test_labels = rng.integers(0, 4, size=3000), rng.integers(0, 4, size=600)
    plan = plan_probes(train_labels, test_labels)

    def codes(labels):  # latent c fires (value 1 + noise) exactly on tokens of class c; 2 more random latents
        n = len(labels)
        idx = np.stack([labels, 4 + rng.integers(0, 4, n), 8 + rng.integers(0, 4, n)], 1)
        val = np.stack([1 + rng.random(n), rng.random(n), rng.random(n)], 1)
        return SparseCodes(torch.from_numpy(idx), torch.from_numpy(val).float(), 12)

    train_codes, test_codes = codes(train_labels), codes(test_labels)
    enc = plan.train_rows.numpy()
    sub = SparseCodes(train_codes.indices[enc], train_codes.values[enc], 12)
    got = probe_metrics(plan, sub, test_codes)
    assert set(got) == {s.name for s in PROBE_METRICS} == {metric_name(k) for k in (*KS, None)}
    assert got["sparse_probe_acc_k1"] == 1.0 and got["sparse_probe_acc_full"] == 1.0
    dense = probe_metrics(plan, sub.to_dense(), test_codes.to_dense())
    assert dense == got
    rows = np.array([5, 0, 5])
    assert np.array_equal(dense_rows(test_codes, rows), test_codes.to_dense()[rows].double().numpy())


def test_random_sae_is_an_untrained_topk_sae():
    cls = registry.get_method("random-sae").cls
    assert registry.get_method("random-sae").baseline
    m = cls.create({"k": 3})
    m.setup(RunContext(seed=5, device=torch.device("cpu"), cache_dir=Path("/nonexistent")))
    X = torch.randn(50, 12, generator=torch.Generator().manual_seed(0)) + 2.0
    m.fit(X)
    sae = m.sae_
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(48)) and torch.equal(sae.W_enc, sae.W_dec)
    assert torch.allclose(sae.b_dec, X.mean(0)) and (sae.b_enc == 0).all()
    codes = m.encode(X)
    pre = (X - X.mean(0)) @ sae.W_dec.t()
    top = pre.topk(3, dim=1)
    assert torch.allclose(codes.to_dense(), torch.zeros(50, 48).scatter(1, top.indices, top.values.relu()), atol=1e-6)
    assert torch.allclose(m.decode(codes), X.mean(0) + codes.to_dense() @ sae.W_dec, atol=1e-5)
    again = cls.create({"k": 3})
    again.setup(RunContext(seed=5, device=torch.device("cpu"), cache_dir=Path("/nonexistent")))
    assert torch.equal(again.fit(X).sae_.W_dec, sae.W_dec)
    mp = registry.get_method("random-dict").cls.create({"k": 3})  # the same dictionary, read by matching pursuit
    mp.setup(RunContext(seed=5, device=torch.device("cpu"), cache_dir=Path("/nonexistent")))
    assert torch.equal(mp.fit(X).atoms_, sae.W_dec)
