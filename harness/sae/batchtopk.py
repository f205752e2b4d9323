"""The ``batchtopk`` architecture: BatchTopK SAEs (Bussmann, Leask & Nanda 2024, "BatchTopK Sparse Autoencoders").

Training (:func:`train_batchtopk_sae`): the TopK recipe (:class:`~harness.sae.topk.TopKTrainer`: normalised
units, unit-norm decoder rows, AuxK against dead latents, the sparse backward of
:func:`~harness.sae.autograd.topk_sae_forward`) with the selection made over the whole batch: the
``k * B`` largest ``relu(pre)`` of a batch of ``B`` rows (:func:`~harness.sae.kernels.batch_topk_relu`),
so one row may use more latents than ``k`` and another fewer, ``k`` on average.

Inference: one global threshold ``theta`` makes encoding per sample: codes = ``pre`` where
``pre > theta``, else 0 (dense ``[N, n_latents]``; the L0 varies from row to row, about ``k`` on
average).  ``theta`` is estimated during training, as in the paper, as a running average of the
smallest selected positive activation of each batch: here the plain mean of those minima over the
second half of the training steps (the first half is spent while the encoder still moves a lot).
``pre`` is the same number in the normalised units of training and in the units of the activations
(the scale folds into ``W_enc`` and ``W_dec`` only), so ``theta`` needs no conversion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from harness.errors import ConfigError
from harness.sae.kernels import threshold_encode
from harness.sae.model import SAE
from harness.sae.registry import Architecture, SAEConfig, register_architecture
from harness.sae.topk import TopKTrainer
from harness.sae.training import TrainStats


@dataclass(frozen=True, kw_only=True)
class BatchTopKConfig(SAEConfig):
    """``k``: the batch-average L0 it was trained at (information); ``threshold``: the inference threshold."""

    k: int | None = None
    threshold: float | None = None

    saved = ("k", "threshold")


class BatchTopKTrainer(TopKTrainer):
    """TopK's trainer with BatchTopK's selection, estimating the inference threshold (module docstring)."""

    batch_topk = True

    def __init__(self, acts: torch.Tensor, n_latents: int, k: int, **kw) -> None:
        super().__init__(acts, n_latents, k, grads=None, grad_beta=0.0, **kw)
        self.minima: list[torch.Tensor] = []

    def update(self, loss: torch.Tensor) -> None:
        super().update(loss)
        if self.step >= self.total // 2:  # the second half of training
            _, vals = self.selected
            positive = vals[vals > 0]
            if positive.numel():
                self.minima.append(positive.min())

    def threshold(self) -> float:
        """The mean of the batches' smallest selected positive activations (0 if none was positive)."""
        return float(torch.stack(self.minima).double().mean()) if self.minima else 0.0

    def config(self) -> "BatchTopKConfig":
        return BatchTopKConfig(k=self.k, threshold=self.threshold())


@register_architecture("batchtopk", BatchTopKConfig)
class BatchTopK(Architecture):
    """Codes ``pre * (pre > config.threshold)`` (dense): the per-sample inference rule of a BatchTopK SAE."""

    trainer = BatchTopKTrainer

    def check(self, config: BatchTopKConfig, n_latents: int) -> BatchTopKConfig:
        t = config.threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise ConfigError(f"a {self.name} SAE needs its inference threshold, a number >= 0 (sae.json's "
                              f"\"threshold\"), got {t!r}")
        return config

    def encode(self, sae: SAE, x: torch.Tensor, grads: torch.Tensor | None = None) -> torch.Tensor:
        centre = sae.b_dec if sae.config.apply_b_dec_to_input else None
        return threshold_encode(x, sae.W_enc, sae.b_enc, float(sae.config.threshold), centre)


def train_batchtopk_sae(acts: torch.Tensor, n_latents: int, k: int, *, epochs: int = 6, batch_size: int = 512,
                        lr: float = 5e-3, seed: int = 0, auxk_coef: float = 1 / 32, k_aux: int | None = None,
                        dead_tokens: int | None = None) -> tuple[SAE, TrainStats]:
    """Train a BatchTopK SAE on ``acts`` ``[N, d]`` (module docstring); AuxK as for TopK (``auxk_coef = 0``: off)."""
    return BatchTopKTrainer(acts, n_latents, k, auxk_coef=auxk_coef, k_aux=k_aux, dead_tokens=dead_tokens,
                            epochs=epochs, batch_size=batch_size, lr=lr, seed=seed).run()
