"""Baselines of the clustering family (DESIGN.md, "clustering").

Every baseline uses scikit-learn with ``random_state=self.seed``; every
k-means runs ``n_init=10`` restarts and keeps the one with the lowest
inertia (scikit-learn's choice, which never looks at the true labels).
"""

from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture

from harness.nn.autoencoder import encode, standardize, train_autoencoder
from harness.protocols.clustering import ClusteringMethod, kmeans_labels
from harness.core.registry import register_method


def _pca(X: np.ndarray, n_components: int, seed: int) -> np.ndarray:
    """PCA scores ``[n_samples, m]`` with ``m = min(n_components, n_features - 1, n_samples)``."""
    m = max(1, min(int(n_components), X.shape[1] - 1, X.shape[0]))
    return PCA(n_components=m, random_state=seed).fit_transform(X)


@register_method(
    "kmeans-raw",
    family="clustering",
    version="1",
    description="k-means (n_init=10) on the task's features as given",
    baseline=True,
)
class KMeansRaw(ClusteringMethod):
    """k-means on the raw feature matrix."""

    def __init__(self, n_init: int = 10) -> None:
        self.n_init = n_init

    def fit_predict(self, X: np.ndarray, n_clusters: int) -> np.ndarray:
        return kmeans_labels(X, n_clusters, self.n_init, self.seed)


@register_method(
    "pca-kmeans",
    family="clustering",
    version="1",
    description="PCA to 10 components (at most n_features - 1), then k-means (n_init=10)",
    baseline=True,
)
class PCAKMeans(ClusteringMethod):
    """k-means on the first ``n_components`` principal-component scores (not whitened)."""

    def __init__(self, n_components: int = 10, n_init: int = 10) -> None:
        self.n_components = n_components
        self.n_init = n_init

    def fit_predict(self, X: np.ndarray, n_clusters: int) -> np.ndarray:
        return kmeans_labels(_pca(X, self.n_components, self.seed), n_clusters, self.n_init, self.seed)


@register_method(
    "ae-kmeans",
    family="clustering",
    version="1",
    description="one MLP autoencoder (128-64 hidden, 10-d code, MSE), then k-means (n_init=10) on the standardised code",
    baseline=True,
)
class AutoencoderKMeans(ClusteringMethod):
    """The canonical autoencoder + k-means pipeline.

    Train one :class:`harness.nn.autoencoder.Autoencoder` on ``X`` (hidden
    widths ``hidden``, code size ``d_code``), encode ``X``, standardise each
    code dimension, and run k-means.  Same building block, training recipe
    and final step as the ``stacked-ae-kmeans`` method, without the stacking.
    """

    def __init__(
        self,
        hidden: tuple[int, ...] = (128, 64),
        d_code: int = 10,
        epochs: int = 20,
        batch_size: int = 64,
        lr: float = 3e-3,
        n_init: int = 10,
    ) -> None:
        self.hidden = hidden
        self.d_code = d_code
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.n_init = n_init

    def fit_predict(self, X: np.ndarray, n_clusters: int) -> np.ndarray:
        model = train_autoencoder(
            X, list(self.hidden), self.d_code, self.epochs, self.batch_size, self.lr, self.seed, self.device
        )
        code = encode(model, X, self.device)
        return kmeans_labels(standardize(code), n_clusters, self.n_init, self.seed)


@register_method(
    "gmm",
    family="clustering",
    version="1",
    description="Gaussian mixture, full covariances, on PCA to 10 components (at most n_features - 1)",
    baseline=True,
)
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

    def __init__(self, n_components: int = 10, reg_covar: float = 1e-3, n_init: int = 3, max_iter: int = 200) -> None:
        self.n_components = n_components
        self.reg_covar = reg_covar
        self.n_init = n_init
        self.max_iter = max_iter

    def fit_predict(self, X: np.ndarray, n_clusters: int) -> np.ndarray:
        Z = _pca(X, self.n_components, self.seed)
        Z = Z / max(float(Z.std()), 1e-12)
        gmm = GaussianMixture(
            n_components=n_clusters,
            covariance_type="full",
            reg_covar=self.reg_covar,
            n_init=self.n_init,
            max_iter=self.max_iter,
            random_state=self.seed,
        )
        return gmm.fit(Z).predict(Z).astype(np.int64)
