"""A small MLP autoencoder, the shared building block of autoencoder-based methods.

Used by the stacked-autoencoder method and the canonical autoencoder
baseline, so that the two differ only in how they stack it.

Shapes: inputs ``X`` are ``[n_samples, d_in]``; codes are
``[n_samples, d_code]``.  Training is full-precision float32, MSE
reconstruction loss, Adam (fused kernel), mini-batches shuffled by a seeded
``torch.Generator``; the weights are initialised after
``torch.manual_seed(seed)``, so a given ``(X, hyper-parameters, seed,
device)`` gives the same model on every run on the CPU.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn


class Autoencoder(nn.Module):
    """MLP encoder ``d_in -> hidden[0] -> ... -> d_code`` and the mirrored decoder.

    Hidden layers use ReLU; the code and the reconstruction are linear.
    ``forward(x)`` takes ``[batch, d_in]`` and returns ``(reconstruction
    [batch, d_in], code [batch, d_code])``.
    """

    def __init__(self, d_in: int, hidden: Sequence[int], d_code: int) -> None:
        super().__init__()
        self.d_in, self.hidden, self.d_code = int(d_in), [int(h) for h in hidden], int(d_code)
        self.encoder = self._mlp([self.d_in, *self.hidden, self.d_code])
        self.decoder = self._mlp([self.d_code, *reversed(self.hidden), self.d_in])

    @staticmethod
    def _mlp(widths: Sequence[int]) -> nn.Sequential:
        layers: list[nn.Module] = []
        for i in range(len(widths) - 1):
            layers.append(nn.Linear(widths[i], widths[i + 1]))
            if i < len(widths) - 2:
                layers.append(nn.ReLU())
        return nn.Sequential(*layers)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``[batch, d_in]`` -> ``[batch, d_code]``."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``[batch, d_code]`` -> ``[batch, d_in]``."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(x)
        return self.decode(z), z


def train_autoencoder(
    X: np.ndarray,
    hidden: Sequence[int],
    d_code: int,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: torch.device | str = "cpu",
) -> Autoencoder:
    """Train an :class:`Autoencoder` on ``X`` (``[n_samples, d_in]``) to minimise the MSE.

    ``epochs`` passes over the data in shuffled mini-batches of
    ``batch_size`` rows with Adam at learning rate ``lr``.  Returns the model
    in eval mode, on ``device``.
    """
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"train_autoencoder needs a non-empty 2-D array, got shape {X.shape}")
    device = torch.device(device)
    torch.manual_seed(seed)
    model = Autoencoder(X.shape[1], hidden, d_code).to(device)
    # the fused Adam kernel is markedly faster for these small models (CPU and CUDA)
    fused = True if device.type in ("cpu", "cuda") else None
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, fused=fused)
    data = torch.from_numpy(X).to(device)
    shuffler = torch.Generator().manual_seed(seed)  # CPU generator: same order on every device
    n = data.shape[0]
    batch_size = max(1, min(int(batch_size), n))
    model.train()
    for _ in range(int(epochs)):
        order = torch.randperm(n, generator=shuffler).to(device)
        for start in range(0, n, batch_size):
            batch = data[order[start : start + batch_size]]
            reconstruction, _ = model(batch)
            loss = torch.mean((reconstruction - batch) ** 2)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    model.eval()
    return model


def standardize(Z: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """Each column of ``Z`` (``[n_samples, d]``) to mean 0 and standard deviation 1.

    Columns with standard deviation below ``eps`` are only centred.  Returns float32.
    """
    Z = np.asarray(Z, dtype=np.float64)
    std = Z.std(axis=0)
    std[std < eps] = 1.0
    return ((Z - Z.mean(axis=0)) / std).astype(np.float32)


@torch.no_grad()
def encode(model: Autoencoder, X: np.ndarray, device: torch.device | str = "cpu") -> np.ndarray:
    """Codes of ``X`` (``[n_samples, d_in]``) as a float32 numpy array ``[n_samples, d_code]``."""
    model.eval()
    x = torch.from_numpy(np.asarray(X, dtype=np.float32)).to(torch.device(device))
    return model.encode(x).cpu().numpy().astype(np.float32)
