"""Clustering family: task data, the five methods, and label validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import harness.core.registry as registry
from harness.core.context import RunContext
from harness.errors import InvalidOutputError
from harness.protocols.clustering import validate_labels
from harness.tasks.clustering.task import ClusteringData
from harness.tasks.clustering.multispectral import make_scene

registry.load_builtin()

TASKS = ["clustering/digits", "clustering/multispectral", "clustering/wine"]
METHODS = ["kmeans-raw", "pca-kmeans", "gmm", "ae-kmeans", "stacked-ae-kmeans"]
# small training budgets keep the autoencoder methods fast in tests
FAST_PARAMS = {
    "ae-kmeans": {"epochs": 3, "hidden": (16,), "d_code": 4},
    "stacked-ae-kmeans": {"epochs": 3, "hidden": (16,), "d_code": 4, "n_stages": 2},
}


def ctx(seed: int, tmp_path: Path) -> RunContext:
    return RunContext(seed=seed, device=torch.device("cpu"), cache_dir=tmp_path)


def build(task_name: str, seed: int, tmp_path: Path, **overrides) -> ClusteringData:
    task = registry.get_task(task_name).create()
    return task.build(task.resolve_config(overrides), ctx(seed, tmp_path))


# --- tasks -------------------------------------------------------------


def test_tasks_registered():
    names = [e.name for e in registry.tasks("clustering")]
    assert names == TASKS
    for name in TASKS:
        entry = registry.get_task(name)
        assert entry.family == "clustering" and entry.version == "1" and entry.description


@pytest.mark.parametrize(
    "task_name,shape,n_clusters",
    [("clustering/digits", (1797, 64), 10), ("clustering/multispectral", (4096, 16), 6), ("clustering/wine", (178, 13), 3)],
)
def test_task_data(task_name, shape, n_clusters, tmp_path):
    data = build(task_name, 0, tmp_path)
    assert data.X.shape == shape and data.X.dtype == np.float32
    assert data.y.shape == (shape[0],) and data.y.dtype == np.int64
    assert data.n_clusters == n_clusters
    assert np.array_equal(np.unique(data.y), np.arange(n_clusters))
    assert np.isfinite(data.X).all()
    again = build(task_name, 0, tmp_path)
    assert np.array_equal(data.X, again.X) and np.array_equal(data.y, again.y)


def test_digits_scaling(tmp_path):
    X = build("clustering/digits", 0, tmp_path).X
    assert X.min() == 0.0 and X.max() == 1.0
    assert np.array_equal(X, build("clustering/digits", 5, tmp_path).X)  # seed does not change data


def test_wine_standardised(tmp_path):
    X = build("clustering/wine", 0, tmp_path).X
    np.testing.assert_allclose(X.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(X.std(axis=0), 1.0, atol=1e-5)
    assert np.array_equal(X, build("clustering/wine", 3, tmp_path).X)


def test_multispectral_depends_on_seed(tmp_path):
    a, b = build("clustering/multispectral", 0, tmp_path), build("clustering/multispectral", 1, tmp_path)
    assert not np.array_equal(a.X, b.X)
    assert not np.array_equal(a.y, b.y)


def test_make_scene_every_unit_and_deterministic():
    for seed in range(6):
        X, y, unit_map = make_scene(height=24, width=20, n_units=7, n_bands=9, noise=0.02, seed=seed)
        assert X.shape == (480, 9) and X.dtype == np.float32
        assert unit_map.shape == (24, 20) and np.array_equal(unit_map.reshape(-1), y)
        assert np.array_equal(np.unique(y), np.arange(7))
        X2, y2, _ = make_scene(height=24, width=20, n_units=7, n_bands=9, noise=0.02, seed=seed)
        assert np.array_equal(X, X2) and np.array_equal(y, y2)


def test_multispectral_config_overrides(tmp_path):
    data = build("clustering/multispectral", 2, tmp_path, height=16, width=12, n_units=4, n_bands=8)
    assert data.X.shape == (192, 8) and data.n_clusters == 4


# --- methods -----------------------------------------------------------


def test_methods_registered():
    entries = {e.name: e for e in registry.methods("clustering")}
    assert set(METHODS) <= set(entries)
    assert not entries["stacked-ae-kmeans"].baseline
    for name in METHODS[:-1]:
        assert entries[name].baseline, name


def make_method(name: str, seed: int, tmp_path: Path):
    method = registry.get_method(name).cls.create(FAST_PARAMS.get(name, {}))
    method.setup(ctx(seed, tmp_path))
    return method


@pytest.fixture(scope="module")
def small_data() -> ClusteringData:
    """A 300-row subset of digits (stratified by taking every 6th row)."""
    task = registry.get_task("clustering/digits").create()
    full = task.build(task.resolve_config(), RunContext(0, torch.device("cpu"), Path(".")))
    return ClusteringData(X=full.X[::6].copy(), y=full.y[::6].copy(), n_clusters=full.n_clusters)


@pytest.mark.parametrize("name", METHODS)
def test_method_valid_and_deterministic(name, small_data, tmp_path):
    task = registry.get_task("clustering/digits").create()
    labels = task.apply(make_method(name, 0, tmp_path), small_data, ctx(0, tmp_path))
    assert labels.shape == small_data.y.shape and labels.dtype == np.int64
    assert labels.min() >= 0 and labels.max() < small_data.n_clusters
    again = task.apply(make_method(name, 0, tmp_path), small_data, ctx(0, tmp_path))
    assert np.array_equal(labels, again)
    metrics = task.check_metrics(task.evaluate(small_data, labels))
    assert set(metrics) == {"acc", "nmi", "ari"}
    assert metrics["acc"] > 0.3  # far above chance (0.1) even with tiny training budgets


def test_ae_kmeans_is_one_autoencoder_seeded_with_the_run_seed(small_data, tmp_path):
    """The baseline is the stacked pipeline with one stage; written out here: train, encode, standardise, k-means."""
    from harness.nn.autoencoder import encode, standardize, train_autoencoder
    from harness.protocols.clustering import kmeans_labels

    X, p = small_data.X, FAST_PARAMS["ae-kmeans"]
    model = train_autoencoder(X, list(p["hidden"]), p["d_code"], p["epochs"], 64, 3e-3, 4, "cpu")
    want = kmeans_labels(standardize(encode(model, X, "cpu")), 10, 10, 4)
    assert np.array_equal(make_method("ae-kmeans", 4, tmp_path).fit_predict(X.copy(), 10), want)
    assert "n_stages" not in registry.get_method("ae-kmeans").cls.param_names()


def test_method_params_round_trip():
    for name in METHODS:
        cls = registry.get_method(name).cls
        method = cls.create()
        assert method.get_params() == cls.default_params()


def test_method_on_multispectral_and_wine(tmp_path):
    """The stacked method runs on the other tasks' feature shapes."""
    for task_name in ("clustering/multispectral", "clustering/wine"):
        overrides = {"height": 16, "width": 16} if task_name.endswith("multispectral") else {}
        data = build(task_name, 1, tmp_path, **overrides)
        task = registry.get_task(task_name).create()
        labels = task.apply(make_method("stacked-ae-kmeans", 1, tmp_path), data, ctx(1, tmp_path))
        assert labels.shape == data.y.shape and labels.max() < data.n_clusters


# --- label validation ---------------------------------------------------


def test_validate_labels_accepts_good_labels():
    out = validate_labels(np.array([0, 2, 1, 2], dtype=np.int32), 4, 3)
    assert out.dtype == np.int64 and out.tolist() == [0, 2, 1, 2]
    out = validate_labels(torch.tensor([1, 0, 1]), 3, 2)
    assert out.tolist() == [1, 0, 1]


@pytest.mark.parametrize(
    "labels",
    [
        np.array([0, 1, 2]),  # too short
        np.array([[0, 1], [1, 0]]),  # 2-D
        np.array([0.0, 1.0, 1.0, 0.0]),  # floats
        np.array([True, False, True, False]),  # booleans
        np.array([0, 1, 3, 1]),  # label >= n_clusters
        np.array([0, -1, 1, 1]),  # negative label
        [0, 1, 1, 0],  # not an array
    ],
)
def test_validate_labels_rejects(labels):
    with pytest.raises(InvalidOutputError):
        validate_labels(labels, 4, 3)
