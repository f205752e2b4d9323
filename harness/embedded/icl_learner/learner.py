"""The trained in-context learner as the icl family's ``InContextLearner`` (numpy in, numpy out)."""

from __future__ import annotations

import numpy as np
import torch

from harness.core.seeding import torch_threads
from harness.embedded.icl_learner.model import InContextRegressor


class TransformerLearner:
    """numpy-in / numpy-out wrapper of a trained :class:`InContextRegressor` (the ``InContextLearner`` protocol).

    Inference runs without autograd, in float32, in chunks of contexts, on one
    CPU thread (deterministic, and these small ops gain nothing from more).  Inputs go to the
    device of the model's weights (the CPU, where :func:`load_icl_model` puts them) and outputs
    come back to the CPU as numpy arrays.
    """

    def __init__(self, model: InContextRegressor, card: dict | None = None, model_id: str = "icl",
                 chunk: int = 100, threads: int = 1):
        self.model = model.eval()
        self.card = dict(card or {})
        self.model_id = model_id
        self.d, self.n_points = model.arch.d, model.arch.n_points
        self.chunk, self.threads = chunk, threads

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(a, dtype=torch.float32, device=next(self.model.parameters()).device)

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
                    self._tensor(xs[sl]), self._tensor(ys[sl]), self._tensor(x_query[sl])).double().cpu().numpy())
        return np.concatenate(out, axis=0)

    @torch.no_grad()
    def hidden(self, xs: np.ndarray, ys: np.ndarray, x_query: np.ndarray, position: str = "query") -> np.ndarray:
        """Residual stream ``[L + 1, B, d_model]`` at ``position`` (see :meth:`InContextRegressor.residuals_at`)."""
        out = []
        with torch_threads(self.threads):
            for i in range(0, xs.shape[0], 4 * self.chunk):
                sl = slice(i, i + 4 * self.chunk)
                out.append(self.model.residuals_at(
                    self._tensor(xs[sl]), self._tensor(ys[sl]), self._tensor(x_query[sl]), position).cpu().numpy())
        return np.concatenate(out, axis=1)
