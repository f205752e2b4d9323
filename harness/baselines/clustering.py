"""Baselines of the clustering family (DESIGN.md, "clustering").

Every baseline uses scikit-learn with ``random_state=self.seed``; every
k-means runs ``n_init=10`` restarts and keeps the one with the lowest
inertia (scikit-learn's choice, which never looks at the true labels).
"""

from __future__ import annotations

import functools

import numpy as np
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture

from harness.core.registry import register_method
from harness.methods.stacked_autoencoder import StackedAutoencoderKMeans
from harness.protocols.clustering import ClusteringMethod, kmeans_labels

#: ``@baseline(name, description=...)`` registers a clustering baseline, version 1
baseline = functools.partial(register_method, version="1", baseline=True)


def _pca(X: np.ndarray, n_components: int, seed: int) -> np.ndarray:
    """PCA scores ``[n_samples, m]`` with ``m = min(n_components, n_features - 1, n_samples)``."""
    m = max(1, min(int(n_components), X.shape[1] - 1, X.shape[0]))
    return PCA(n_components=m, random_state=seed).fit_transform(X)


@baseline("kmeans-raw", description="k-means (n_init=10) on the task's features as given")
class KMeansRaw(ClusteringMethod):
    """k-means on the raw feature matrix ``X`` ``[n_samples, n_features]``."""

    selftest_params = {"n_init": 1}

    def __init__(self, n_init: int = 10) -> None:
        self.n_init = n_init

    def fit_predict(self, X: np.ndarray, n_clusters: int) -> np.ndarray:
        return kmeans_labels(X, n_clusters, self.n_init, self.seed)


@baseline("pca-kmeans", description="PCA to 10 components (at most n_features - 1), then k-means (n_init=10)")
class PCAKMeans(ClusteringMethod):
    """k-means on the first ``n_components`` principal-component scores (not whitened)."""

    selftest_params = {"n_init": 1}

    def __init__(self, n_components: int = 10, n_init: int = 10) -> None:
        self.n_components, self.n_init = n_components, n_init

    def fit_predict(self, X: np.ndarray, n_clusters: int) -> np.ndarray:
        return kmeans_labels(_pca(X, self.n_components, self.seed), n_clusters, self.n_init, self.seed)


@baseline("ae-kmeans", description="one MLP autoencoder (128-64 hidden, 10-d code, MSE), then k-means (n_init=10) "
                                   "on the standardised code")
class AutoencoderKMeans(StackedAutoencoderKMeans):
    """The canonical autoencoder + k-means pipeline: the ``stacked-ae-kmeans`` method with one stage.

    Train one :class:`harness.nn.autoencoder.Autoencoder` on ``X`` (hidden
    widths ``hidden``, code size ``d_code``), seeded with the run's seed,
    encode ``X``, standardise each code dimension, and run k-means.
    """

    def __init__(self, hidden: tuple[int, ...] = (128, 64), d_code: int = 10, epochs: int = 20, batch_size: int = 64,
                 lr: float = 3e-3, n_init: int = 10) -> None:
        super().__init__(1, hidden, d_code, epochs, batch_size, lr, n_init)

    def stage_seed(self, stage: int) -> int:
        """The run's seed (one stage, nothing to keep independent)."""
        return self.seed


@baseline("gmm", description="Gaussian mixture, full covariances, on PCA to 10 components (at most n_features - 1)")
class GMM(ClusteringMethod):
    """Gaussian mixture model with full covariance matrices, fitted by EM on PCA scores.

    The features are first reduced by PCA to ``n_components`` (at most
    ``n_features - 1``), as is usual before a full-covariance mixture (on
    raw pixels many directions have (near-)zero variance and the covariances
    are singular).  The scores are divided by one scalar, their overall
    standard deviation, so that ``reg_covar`` (added to every covariance
    diagonal) is relative to the data's scale whatever the task's units;
    one scalar leaves the geometry unchanged.  EM starts from k-means
    (scikit-learn's default) ``n_init`` times and keeps the fit with the
    highest likelihood.  Labels are the most probable components.
    """

    selftest_params = {"n_init": 1}

    def __init__(self, n_components: int = 10, reg_covar: float = 1e-3, n_init: int = 3, max_iter: int = 200) -> None:
        self.n_components, self.reg_covar, self.n_init, self.max_iter = n_components, reg_covar, n_init, max_iter

    def fit_predict(self, X: np.ndarray, n_clusters: int) -> np.ndarray:
        Z = _pca(X, self.n_components, self.seed)
        Z = Z / max(float(Z.std()), 1e-12)
        gmm = GaussianMixture(n_components=n_clusters, covariance_type="full", reg_covar=self.reg_covar,
                              n_init=self.n_init, max_iter=self.max_iter, random_state=self.seed)
        return gmm.fit(Z).predict(Z).astype(np.int64)
