"""The ``relu`` and ``argmax`` architectures: ReLU SAEs with an L1 penalty, and their argmax codes.

- ``relu``: codes = ``relu(pre)``, ``pre = (x - b_dec) W_enc^T + b_enc`` (dense ``[N, n_latents]``);
- ``argmax``: only the largest ``relu(pre)`` of each row (the argmax-code idea of
  O'Neill & Bui 2024; :class:`~harness.protocols.reconstruction.SparseCodes` with ``k = 1``).

Both are trained by :func:`train_relu_sae` (the recipe of
:class:`~harness.sae.training.NormalisedTrainer`): ``|e|^2 / d + l1 * sum_i z_i / sqrt(d)``
per token, the L1 coefficient ramped up linearly over the first 10% of steps;
unit-norm decoder rows, so the L1 cannot be dodged by shrinking codes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from harness.errors import ConfigError
from harness.protocols.reconstruction import SparseCodes
from harness.sae.model import SAE
from harness.sae.registry import Architecture, SAEConfig, architecture_of, register_architecture
from harness.sae.training import NormalisedTrainer, TrainStats


@dataclass(frozen=True, kw_only=True)
class ReLUConfig(SAEConfig):
    """Dense ReLU codes (nothing beyond the weights)."""


@dataclass(frozen=True, kw_only=True)
class ArgmaxConfig(SAEConfig):
    """The single largest ReLU latent of each row."""


class ReLUTrainer(NormalisedTrainer):
    """ReLU + L1 (see the module docstring); returns an SAE with ``config`` (``relu`` or ``argmax``)."""

    def __init__(self, acts: torch.Tensor, n_latents: int, *, l1_coef: float, config: SAEConfig, **loop) -> None:
        if architecture_of(config).trainer is not ReLUTrainer:
            raise ConfigError(f"train_relu_sae trains relu / argmax SAEs, not {type(config).architecture!r}")
        super().__init__(acts, n_latents, **loop)
        self.l1_coef, self.config = l1_coef, config

    def setup(self) -> torch.Tensor:
        x_all = super().setup()
        self.ramp = max(1, self.total // 10)
        self.sqrt_d = math.sqrt(self.d)
        return x_all

    def loss(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        z = torch.relu(torch.addmm(self.b_enc, x - self.b_dec, self.W_enc.t()))
        x_hat = torch.addmm(self.b_dec, z, self.W_dec)
        mse = (x - x_hat).pow(2).sum(1).mean() / self.d
        return mse + self.l1_coef * min(1.0, (self.step + 1) / self.ramp) * z.sum(1).mean() / self.sqrt_d

    def finish(self) -> SAE:
        return SAE(*self.folded(), self.config, info={"train": self.stats.__dict__})


@register_architecture("relu", ReLUConfig)
class ReLU(Architecture):
    """Dense codes ``relu(pre)``."""

    trainer = ReLUTrainer

    def encode(self, sae: SAE, x: torch.Tensor, grads: torch.Tensor | None = None) -> torch.Tensor:
        return torch.addmm(sae.b_enc, self.centred(sae, x), sae.W_enc.t()).clamp_min_(0)


@register_architecture("argmax", ArgmaxConfig)
class Argmax(ReLU):
    """Sparse codes: the largest ``relu(pre)`` of each row and its latent."""

    def encode(self, sae: SAE, x: torch.Tensor, grads: torch.Tensor | None = None) -> SparseCodes:
        vals, idx = super().encode(sae, x).max(dim=1, keepdim=True)
        return SparseCodes(idx, vals, sae.n_latents)


def train_relu_sae(
    acts: torch.Tensor,
    n_latents: int,
    *,
    l1_coef: float = 0.1,
    epochs: int = 6,
    batch_size: int = 512,
    lr: float = 1e-2,
    seed: int = 0,
    config: SAEConfig | None = None,
) -> tuple[SAE, TrainStats]:
    """Train a ReLU SAE with an L1 penalty on ``acts`` ``[N, d]`` (module docstring).

    ``config``: :class:`ReLUConfig` (default) or :class:`ArgmaxConfig` (the same
    weights read as argmax codes).
    """
    return ReLUTrainer(acts, n_latents, l1_coef=l1_coef, config=ReLUConfig() if config is None else config,
                       epochs=epochs, batch_size=batch_size, lr=lr, seed=seed).run()
