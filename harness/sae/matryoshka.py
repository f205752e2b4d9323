"""The ``matryoshka`` architecture: Matryoshka SAEs (Bussmann, Nabeshima, Karvonen & Nanda 2025,
"Learning Multi-Level Features with Matryoshka Sparse Autoencoders").

The dictionary is read as nested prefixes ``m_1 < m_2 < ... < m_L = n_latents``: the first ``m_l``
latents must reconstruct the input on their own.  Training loss (normalised units, per batch of ``B``)::

    sum_l |x - x_hat_l|^2 / (B d),   x_hat_l = b_dec + sum_{j selected, j < m_l} z_j W_dec[j]

with the codes ``z`` of BatchTopK (the ``k * B`` largest ``relu(pre)`` of the batch, selected once over the
whole dictionary, as in the paper), plus AuxK against dead latents on the full reconstruction.  The
selection and the encoder's sparse backward are the TopK kernels' (:func:`~harness.sae.kernels.batch_topk_relu`,
:func:`~harness.sae.autograd.sparse_encode`); each prefix's decode is an embedding-bag over the selected
latents with the latents beyond the prefix weighted 0.  Everything else (init, units, schedule, unit-norm
decoder rows, the inference threshold) is :mod:`harness.sae.batchtopk`'s; so is inference.

Default prefixes (:func:`prefix_sizes`): ``levels`` halvings of the dictionary,
``n/2^(L-1), ..., n/4, n/2, n``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from harness.errors import ConfigError
from harness.sae.autograd import sparse_encode
from harness.sae.batchtopk import BatchTopK, BatchTopKConfig, BatchTopKTrainer
from harness.sae.kernels import batch_topk_relu, dead_topk_relu, encoder_preacts
from harness.sae.model import SAE
from harness.sae.registry import register_architecture
from harness.sae.training import TrainStats


@dataclass(frozen=True, kw_only=True)
class MatryoshkaConfig(BatchTopKConfig):
    """BatchTopK's inference config and the nested prefix sizes it was trained with (``prefixes``, increasing,
    the last one ``n_latents``)."""

    prefixes: tuple[int, ...] = ()

    saved = ("k", "threshold", "prefixes")


def prefix_sizes(n_latents: int, levels: int) -> tuple[int, ...]:
    """``levels`` nested sizes ``n // 2^(levels-1), ..., n // 2, n`` (duplicates from small ``n`` dropped)."""
    if levels < 1:
        raise ConfigError(f"a matryoshka SAE needs levels >= 1, got {levels}")
    return tuple(sorted({max(1, n_latents >> (levels - 1 - i)) for i in range(levels)}))


def check_prefixes(prefixes, n_latents: int) -> tuple[int, ...]:
    """``prefixes`` as a tuple of ints: increasing, from >= 1 up to ``n_latents`` (:class:`ConfigError` if not)."""
    try:
        sizes = tuple(int(m) for m in prefixes)
    except (TypeError, ValueError):
        sizes = ()
    if not sizes or sizes[-1] != n_latents or sizes[0] < 1 or any(b <= a for a, b in zip(sizes, sizes[1:])):
        raise ConfigError(f"a matryoshka SAE needs increasing prefix sizes from >= 1 up to n_latents = {n_latents}, "
                          f"got {prefixes!r}")
    return sizes


def nested_loss(x: torch.Tensor, vals: torch.Tensor, idx: torch.Tensor, W_dec: torch.Tensor, b_dec: torch.Tensor,
                prefixes: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum_l |x - x_hat_l|^2, x - x_hat_L)`` for codes ``vals`` at latents ``idx`` ``[B, m]`` (sorted within each
    row; module docstring).

    One embedding-bag decodes every (row, group) at once: the latents of group ``l`` (``m_{l-1} <= j < m_l``) are
    contiguous in a sorted row, so each is a bag; the prefixes' reconstructions are the cumulative sums over groups.
    """
    n_rows, m = idx.shape
    starts = torch.tensor((0,) + tuple(prefixes[:-1]), dtype=idx.dtype, device=idx.device)
    offsets = torch.searchsorted(idx.contiguous(), starts.expand(n_rows, -1).contiguous())  # [B, L] first slot of a group
    offsets = (offsets + torch.arange(n_rows, device=idx.device)[:, None] * m).reshape(-1)
    groups = F.embedding_bag(idx.reshape(-1), W_dec, offsets, per_sample_weights=vals.reshape(-1), mode="sum")
    e = (x - b_dec)[:, None, :] - groups.view(n_rows, len(prefixes), -1).cumsum(1)  # [B, L, d]
    return e.pow(2).sum(), e[:, -1]


class MatryoshkaTrainer(BatchTopKTrainer):
    """BatchTopK's trainer with the nested loss (module docstring)."""

    def __init__(self, acts: torch.Tensor, n_latents: int, k: int, *, prefixes: tuple[int, ...], **kw) -> None:
        super().__init__(acts, n_latents, k, **kw)
        self.prefixes = check_prefixes(prefixes, n_latents)

    def loss(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        xc = x - self.b_dec
        dead_idx = self.dead_latents()
        with torch.no_grad():
            pre = encoder_preacts(xc, self.W_enc, self.b_enc, self.workspace)  # selection only: reused buffer
            selected, idx = batch_topk_relu(pre, self.k)
            aux = None if dead_idx is None else dead_topk_relu(pre, dead_idx, self.k_aux)
        vals = sparse_encode(xc, self.W_enc, self.b_enc, idx) * (selected > 0)
        total, e = nested_loss(x, vals, idx, self.W_dec, self.b_dec, self.prefixes)
        loss = total / self.denom(x)
        if aux is not None:
            aux_sel, aux_idx = aux
            aux_vals = sparse_encode(xc, self.W_enc, self.b_enc, aux_idx) * (aux_sel > 0)
            aux_hat = F.embedding_bag(aux_idx, self.W_dec, per_sample_weights=aux_vals, mode="sum")
            loss = loss + self.aux_loss(aux_hat, e, dead_idx, x)
        self.selected = idx, selected
        return loss

    def config(self) -> MatryoshkaConfig:
        return MatryoshkaConfig(k=self.k, threshold=self.threshold(), prefixes=self.prefixes)


@register_architecture("matryoshka", MatryoshkaConfig)
class Matryoshka(BatchTopK):
    """BatchTopK's inference (codes ``pre * (pre > threshold)``); trained with nested prefixes."""

    trainer = MatryoshkaTrainer

    def check(self, config: MatryoshkaConfig, n_latents: int) -> MatryoshkaConfig:
        config = super().check(config, n_latents)
        prefixes = check_prefixes(config.prefixes, n_latents)
        return config if prefixes == config.prefixes else dataclasses.replace(config, prefixes=prefixes)


def train_matryoshka_sae(acts: torch.Tensor, n_latents: int, k: int, *, levels: int = 5,
                         prefixes: tuple[int, ...] | None = None, epochs: int = 6, batch_size: int = 512,
                         lr: float = 5e-3, seed: int = 0, auxk_coef: float = 1 / 32, k_aux: int | None = None,
                         dead_tokens: int | None = None) -> tuple[SAE, TrainStats]:
    """Train a Matryoshka SAE on ``acts`` ``[N, d]`` (module docstring); ``prefixes`` default to
    :func:`prefix_sizes` ``(n_latents, levels)``."""
    return MatryoshkaTrainer(acts, n_latents, k, prefixes=prefixes or prefix_sizes(n_latents, levels),
                             auxk_coef=auxk_coef, k_aux=k_aux, dead_tokens=dead_tokens, epochs=epochs,
                             batch_size=batch_size, lr=lr, seed=seed).run()
