"""Stacked autoencoder + k-means (DESIGN.md, "clustering").

Stage 1 is an autoencoder trained on ``X``.  Every later stage is a new
autoencoder trained on the previous stage's code (standardised per
dimension) concatenated with the original input ``X``, so each stage can
refine the code while still seeing the raw features.  k-means clusters the
last stage's code, standardised per dimension.

Shapes: ``X`` ``[n, d]``; stage ``s`` input ``[n, d]`` (s = 1) or
``[n, d_code + d]`` (s > 1); each code ``[n, d_code]``; labels ``[n]``.
"""

from __future__ import annotations

import numpy as np

from harness.nn.autoencoder import encode, standardize, train_autoencoder
from harness.protocols.clustering import ClusteringMethod, kmeans_labels
from harness.core.registry import register_method


def stage_seed(seed: int, stage: int) -> int:
    """An independent seed for each stage, derived from the run's seed."""
    return int(np.random.SeedSequence([int(seed), int(stage)]).generate_state(1)[0])


@register_method(
    "stacked-ae-kmeans",
    version="1",
    description=(
        "stacked autoencoder (3 stages, each fed the previous code concatenated with the input), "
        "then k-means (n_init=10) on the standardised last code"
    ),
    baseline=False,
)
class StackedAutoencoderKMeans(ClusteringMethod):
    """Stacked autoencoder, each stage on ``[previous code, X]``, then k-means.

    Hyper-parameters: ``n_stages`` autoencoders, each with hidden widths
    ``hidden`` and a ``d_code``-dimensional code, trained for ``epochs``
    epochs with mini-batches of ``batch_size`` and Adam at ``lr``
    (:func:`harness.nn.autoencoder.train_autoencoder`), stage ``s`` seeded
    with :meth:`stage_seed`; k-means with ``n_init`` restarts and
    ``random_state=seed``.  The ``ae-kmeans`` baseline is this pipeline with
    one stage (:class:`harness.baselines.clustering.AutoencoderKMeans`).
    """

    selftest_params = {"epochs": 2, "n_init": 1}

    def __init__(
        self,
        n_stages: int = 3,
        hidden: tuple[int, ...] = (128, 64),
        d_code: int = 10,
        epochs: int = 20,
        batch_size: int = 64,
        lr: float = 3e-3,
        n_init: int = 10,
    ) -> None:
        self.n_stages, self.hidden, self.d_code = n_stages, hidden, d_code
        self.epochs, self.batch_size, self.lr, self.n_init = epochs, batch_size, lr, n_init

    def stage_seed(self, stage: int) -> int:
        """The seed of stage ``stage`` (0-based): :func:`stage_seed` of the run's seed."""
        return stage_seed(self.seed, stage)

    def transform(self, X: np.ndarray) -> np.ndarray:
        """The last stage's code ``[n_samples, d_code]`` (trains every stage; uses ``self.seed``)."""
        if self.n_stages < 1:
            raise ValueError(f"n_stages must be >= 1, got {self.n_stages}")
        X = np.asarray(X, dtype=np.float32)
        code = None
        for stage in range(self.n_stages):
            inputs = X if code is None else np.concatenate([standardize(code), X], axis=1)
            model = train_autoencoder(inputs, list(self.hidden), self.d_code, self.epochs, self.batch_size, self.lr,
                                      self.stage_seed(stage), self.device)
            code = encode(model, inputs, self.device)
        return code

    def fit_predict(self, X: np.ndarray, n_clusters: int) -> np.ndarray:
        code = standardize(self.transform(X))
        return kmeans_labels(code, n_clusters, self.n_init, self.seed)
