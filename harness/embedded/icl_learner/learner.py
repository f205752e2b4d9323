"""The trained in-context learner as the icl family's ``InContextLearner`` (numpy in, numpy out)."""

from __future__ import annotations

import numpy as np
import torch

from harness.core.seeding import torch_threads
from harness.embedded.icl_learner.model import InContextRegressor


class TransformerLearner:
    """numpy-in / numpy-out wrapper of a trained :class:`InContextRegressor` (the ``InContextLearner`` protocol).

    Inference runs without autograd, in float32, in chunks of contexts, on one
    CPU thread (deterministic, and these small ops gain nothing from more).
    """

    def __init__(self, model: InContextRegressor, card: dict | None = None, model_id: str = "icl",
                 chunk: int = 100, threads: int = 1):
        self.model = model.eval()
        self.card = dict(card or {})
        self.model_id = model_id
        self.d, self.n_points = model.arch.d, model.arch.n_points
        self.chunk, self.threads = chunk, threads

    @torch.no_grad()
    def predict_prefixes(self, xs: np.ndarray, ys: np.ndarray, x_query: np.ndarray) -> np.ndarray:
        """``[B, n + 1, m]`` predictions at every prefix (see :meth:`InContextRegressor.predict_prefixes`)."""
        if xs.shape[1] > self.n_points:
            raise ValueError(f"{xs.shape[1]} examples exceed the model's n_points = {self.n_points}")
        out = []
        with torch_threads(self.threads):
            for i in range(0, xs.shape[0], self.chunk):
                sl = slice(i, i + self.chunk)
                out.append(self.model.predict_prefixes(
                    torch.as_tensor(xs[sl], dtype=torch.float32), torch.as_tensor(ys[sl], dtype=torch.float32),
                    torch.as_tensor(x_query[sl], dtype=torch.float32)).double().numpy())
        return np.concatenate(out, axis=0)

    @torch.no_grad()
    def hidden(self, xs: np.ndarray, ys: np.ndarray, x_query: np.ndarray, position: str = "query") -> np.ndarray:
        """Residual stream ``[L + 1, B, d_model]`` at ``position`` (see :meth:`InContextRegressor.residuals_at`)."""
        out = []
        with torch_threads(self.threads):
            for i in range(0, xs.shape[0], 4 * self.chunk):
                sl = slice(i, i + 4 * self.chunk)
                out.append(self.model.residuals_at(
                    torch.as_tensor(xs[sl], dtype=torch.float32), torch.as_tensor(ys[sl], dtype=torch.float32),
                    torch.as_tensor(x_query[sl], dtype=torch.float32), position).numpy())
        return np.concatenate(out, axis=1)
