"""The clustering tasks: scikit-learn's digits and wine, and a synthetic multispectral scene.

Each task returns ``(X, y)``: features ``[n_samples, n_features]`` scaled as
its description says, and integer true classes ``[n_samples]``.  The number
of clusters a method is asked for is the number of true classes.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from sklearn.datasets import load_digits, load_wine

from harness.core.registry import register_task
from harness.tasks.clustering.base import ClusteringTask
from harness.tasks.clustering.multispectral import make_scene


class _ScikitLearnClustering(ClusteringTask):
    """A scikit-learn toy data set (``fetch``), features scaled by ``scale``; the seed does not change the data."""

    default_config: Mapping[str, Any] = {}

    @staticmethod
    def fetch() -> Any:
        """The data set as a scikit-learn ``Bunch`` (``data`` ``[n, d]``, ``target`` ``[n]``)."""
        raise NotImplementedError

    @staticmethod
    def scale(X: np.ndarray) -> np.ndarray:
        """The task's features from the raw ``data`` ``[n, d]`` (float64)."""
        raise NotImplementedError

    def load(self, config: Mapping[str, Any], seed: int) -> tuple[np.ndarray, np.ndarray]:
        data = self.fetch()
        return self.scale(data.data).astype(np.float32), data.target.astype(np.int64)


@register_task("clustering/digits", family="clustering", version="1",
               description="scikit-learn digits (1797 x 64 pixels, 10 classes), pixels scaled to [0, 1]")
class DigitsClustering(_ScikitLearnClustering):
    """Handwritten digits, 8x8 pixels with values 0..16 divided by 16."""

    fetch, scale = staticmethod(load_digits), staticmethod(lambda X: X / 16.0)


@register_task(
    "clustering/multispectral",
    family="clustering",
    version="1",
    description=(
        "synthetic multispectral scene (64 x 64 pixels, 16 bands, 6 rock units): smooth unit map, "
        "similar unit spectra, nonlinear mixing at boundaries, shading and noise; one scene per seed"
    ),
)
class MultispectralClustering(ClusteringTask):
    """Pixels of a synthetic rock-unit scene (:func:`harness.tasks.clustering.multispectral.make_scene`).

    Features are raw reflectances ``[height * width, n_bands]``; classes are
    the rock units.  The seed generates a different scene.
    """

    default_config: Mapping[str, Any] = {
        "height": 64,
        "width": 64,
        "n_units": 6,
        "n_bands": 16,
        "noise": 0.02,
    }

    def load(self, config: Mapping[str, Any], seed: int) -> tuple[np.ndarray, np.ndarray]:
        X, y, _unit_map = make_scene(
            height=int(config["height"]),
            width=int(config["width"]),
            n_units=int(config["n_units"]),
            n_bands=int(config["n_bands"]),
            noise=float(config["noise"]),
            seed=int(seed),
        )
        return X, y


@register_task("clustering/wine", family="clustering", version="1",
               description="scikit-learn wine (178 x 13 chemical measurements, 3 cultivars), z-scored per feature")
class WineClustering(_ScikitLearnClustering):
    """Wine recognition data, each feature standardised to mean 0, std 1."""

    fetch, scale = staticmethod(load_wine), staticmethod(lambda X: (X - X.mean(axis=0)) / X.std(axis=0))
