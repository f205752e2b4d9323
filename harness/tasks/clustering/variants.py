"""The registered clustering tasks, one registration per data set: digits, wine, a multispectral scene.

Each loader returns ``(X, y)``: features ``[n_samples, n_features]`` scaled as the task's description
says, and integer true classes ``[n_samples]``.  The number of clusters a method is asked for is the
number of true classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.datasets import load_digits, load_wine

from harness.core.registry import add_task
from harness.tasks.clustering.multispectral import make_scene
from harness.tasks.clustering.task import ClusteringTask


def digits(config: Any, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Handwritten digits, 8x8 pixels with values 0..16 divided by 16.  The seed does not change the data."""
    data = load_digits()
    return (data.data / 16.0).astype(np.float32), data.target.astype(np.int64)


def wine(config: Any, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Wine recognition data, each feature standardised to mean 0, std 1.  The seed does not change the data."""
    data = load_wine()
    X = data.data
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    return X.astype(np.float32), data.target.astype(np.int64)


@dataclass(frozen=True)
class SceneConfig:
    """Size of the synthetic scene (pixels), its rock units and bands, and the noise std (reflectance)."""

    height: int = 64
    width: int = 64
    n_units: int = 6
    n_bands: int = 16
    noise: float = 0.02


def scene(config: SceneConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw reflectances ``[height * width, n_bands]`` of :func:`make_scene`; classes are the rock units.

    The seed generates a different scene.
    """
    X, y, _unit_map = make_scene(
        height=int(config.height), width=int(config.width), n_units=int(config.n_units),
        n_bands=int(config.n_bands), noise=float(config.noise), seed=int(seed),
    )
    return X, y


add_task("clustering/digits", ClusteringTask, version="1", loader=digits,
         description="scikit-learn digits (1797 x 64 pixels, 10 classes), pixels scaled to [0, 1]")
add_task("clustering/multispectral", ClusteringTask, version="1", loader=scene, Config=SceneConfig,
         selftest={"height": 16, "width": 16},
         description="synthetic multispectral scene (64 x 64 pixels, 16 bands, 6 rock units): smooth unit map, "
                     "similar unit spectra, nonlinear mixing at boundaries, shading and noise; one scene per seed")
add_task("clustering/wine", ClusteringTask, version="1", loader=wine,
         description="scikit-learn wine (178 x 13 chemical measurements, 3 cultivars), z-scored per feature")
