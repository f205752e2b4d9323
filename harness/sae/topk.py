"""The ``topk`` architecture: TopK SAEs (Gao et al. 2024) with AuxK, and gradient-TopK (g-SAE).

Codes: ``relu`` of the ``k`` largest ``pre = (x - b_dec) W_enc^T + b_enc``
(:class:`~harness.protocols.reconstruction.SparseCodes` with exactly ``k``
distinct latents per row; a slot is inactive only where fewer than ``k``
pre-activations are positive).  With ``grad_beta > 0`` (g-SAE, Olmo et al. 2024)
latents are *selected* by ``relu(pre) * (1 + grad_beta * |u_i . g_hat|)``,
``u_i`` the unit decoder direction and ``g_hat = grad_scale * g`` the
downstream-loss gradient at ``x``, but keep their value ``relu(pre)``.

Training (:func:`train_topk_sae`, the recipe of
:class:`~harness.sae.training.NormalisedTrainer`) uses
:func:`~harness.sae.autograd.topk_sae_forward` (sparse backward) and AuxK:
latents that fired on none of the last ``dead_tokens`` training tokens
reconstruct the residual with their top ``k_aux`` activations, weighted
``auxk_coef``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import torch

from harness.errors import ConfigError, HarnessError
from harness.protocols.reconstruction import SparseCodes
from harness.sae.autograd import topk_sae_forward
from harness.sae.bf16_select import MAX_DEAD_FRACTION, MAX_FALLBACK_FRACTION, PrefilterStats, resolve_selection
from harness.sae.kernels import Workspace, topk_encode
from harness.sae.model import SAE
from harness.sae.registry import Architecture, SAEConfig, register_architecture
from harness.sae.training import NormalisedTrainer, TrainStats


#: ``selection="auto"`` uses the bf16 prefilter (where AMX is) for SAEs at least this wide and this large: the
#: regime where it was measured to pay (training step, one thread, batch 2,048, d_in 512, k 32: 1.2x at 8,192
#: latents, 1.9x at 32,768); on MiniLM's residual stream (d_in 384, 12,288 latents, batch 512, two threads) it
#: did not (7,760 and 7,499 tokens/s against 7,142 and 7,821 with fp32; 19% of the rows fell back by epoch 6)
PREFILTER_MIN_D_IN = 512
PREFILTER_MIN_LATENTS = 8192


@dataclass(frozen=True, kw_only=True)
class TopKConfig(SAEConfig):
    """``k`` active latents per row; ``grad_beta > 0``: g-SAE selection with gradients scaled by ``grad_scale``."""

    k: int | None = None
    grad_beta: float = 0.0
    grad_scale: float = 1.0

    saved = ("k",)


class TopKTrainer(NormalisedTrainer):
    """TopK (+ AuxK, + gradient selection when ``grads`` is given and ``grad_beta > 0``); see the module docstring.

    ``batch_topk``: select the ``k * B`` largest of each batch instead (BatchTopK, :mod:`harness.sae.batchtopk`).
    """

    batch_topk = False

    def __init__(self, acts: torch.Tensor, n_latents: int, k: int, *, grads: torch.Tensor | None, grad_beta: float,
                 auxk_coef: float, k_aux: int | None, dead_tokens: int | None, selection: str = "auto",
                 **loop) -> None:
        if not 1 <= k <= n_latents:
            raise ConfigError(f"k must lie in [1, n_latents = {n_latents}], got {k}")
        super().__init__(acts, n_latents, **loop)
        self.k, self.grad_beta, self.auxk_coef = k, grad_beta, auxk_coef
        self.grads = grads if grads is not None and grad_beta > 0 else None
        self.k_aux_opt, self.dead_tokens_opt = k_aux, dead_tokens
        self.selection = selection

    def setup(self) -> torch.Tensor:
        x_all = super().setup()
        N, d = x_all.shape
        self.grad_scale = 1.0
        if self.grads is not None:
            grads = self.grads.float()
            rms = grads.pow(2).sum(1).mean().sqrt().item()
            self.grad_scale = math.sqrt(d) / rms if rms > 0 else 1.0  # so that E|g_hat|^2 = d
            self.g_all = grads * self.grad_scale
        self.k_aux = d // 2 if self.k_aux_opt is None else int(self.k_aux_opt)
        self.dead_tokens = N if self.dead_tokens_opt is None else int(self.dead_tokens_opt)
        self.since_fired = torch.zeros(self.n_latents, dtype=torch.long, device=x_all.device)
        self.workspace = Workspace()  # the [B, n_latents] buffers, reused every step
        self.stats.selection = self.resolve_selection(x_all.device)
        self.prefilter = PrefilterStats() if self.stats.selection == "bf16-prefilter" else None
        return x_all

    def resolve_selection(self, device: torch.device) -> str:
        """``"bf16-prefilter"`` or ``"fp32"``: ``"auto"`` takes the prefilter for plain TopK on a CPU with AMX
        from :data:`PREFILTER_MIN_D_IN` x :data:`PREFILTER_MIN_LATENTS` on."""
        plain = not self.batch_topk and self.grads is None
        if self.selection == "auto":
            wide = self.d >= PREFILTER_MIN_D_IN and self.n_latents >= PREFILTER_MIN_LATENTS and plain
            return resolve_selection("auto", device) if wide else "fp32"
        chosen = resolve_selection(self.selection, device)
        if chosen == "bf16-prefilter" and not plain:
            raise ConfigError("selection='bf16-prefilter' applies to plain TopK only (not g-SAE or BatchTopK)")
        return chosen

    def loss(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        scale = None
        if self.grads is not None:
            with torch.no_grad():
                scale = self.workspace.get("scale", (x.shape[0], self.n_latents), x.dtype, x.device)
                torch.mm(self.g_all[rows], self.W_dec.detach().t(), out=scale).abs_().mul_(self.grad_beta).add_(1.0)
        dead_idx = self.dead_latents()
        x_hat, aux_hat, vals, idx = topk_sae_forward(
            x, self.W_enc, self.b_enc, self.W_dec, self.b_dec, self.k, scale, dead_idx, self.k_aux, self.batch_topk,
            self.workspace, self.step_prefilter(dead_idx),
        )
        e = x - x_hat
        loss = e.pow(2).sum() / self.denom(x) + self.aux_loss(aux_hat, e, dead_idx, x)
        self.selected = idx, vals
        return loss

    def step_prefilter(self, dead_idx: torch.Tensor | None) -> PrefilterStats | None:
        """The prefilter's stats for this step, or None for the fp32 selection: with more than
        :data:`~harness.sae.bf16_select.MAX_DEAD_FRACTION` of the latents dead (AuxK's own fp32 matmul over them
        would cost more than the prefilter saves), and for good once a step's rows fell back to fp32 beyond
        :data:`~harness.sae.bf16_select.MAX_FALLBACK_FRACTION`.  Deterministic: it follows the seeded trajectory."""
        p = self.prefilter
        if p is None:
            return None
        if p.last_fallback_fraction > MAX_FALLBACK_FRACTION:
            p.retired = True  # the bound no longer settles enough rows on this data: fp32 from here on
        many_dead = dead_idx is not None and self.k_aux > 0 and dead_idx.numel() > MAX_DEAD_FRACTION * self.n_latents
        if p.retired or many_dead:
            p.fp32_steps += 1
            return None
        return p

    def denom(self, x: torch.Tensor) -> float:
        """``B * d``: in normalised units the total variance of a batch ``x`` ``[B, d]`` is about that."""
        return float(x.shape[0] * self.d)

    def dead_latents(self) -> torch.Tensor | None:
        """Ids of the latents that fired on none of the last ``dead_tokens`` tokens (None: none, or no AuxK)."""
        if self.auxk_coef > 0:
            dead = self.since_fired > self.dead_tokens
            if bool(dead.any()):
                return dead.nonzero().flatten()
        return None

    def aux_loss(self, aux_hat: torch.Tensor, e: torch.Tensor, dead_idx: torch.Tensor | None,
                 x: torch.Tensor) -> torch.Tensor | float:
        """AuxK: ``auxk_coef * min(1, n_dead / k_aux) * |aux_hat - e|^2 / (B d)`` (0 when no latent is dead)."""
        if not aux_hat.numel():
            return 0.0
        frac = min(1.0, dead_idx.numel() / max(1, self.k_aux))
        return self.auxk_coef * frac * (aux_hat - e.detach()).pow(2).sum() / self.denom(x)

    def update(self, loss: torch.Tensor) -> None:
        super().update(loss)
        with torch.no_grad():  # AuxK's bookkeeping: tokens since each latent last fired
            idx, vals = self.selected
            fired = torch.bincount(idx[vals > 0], minlength=self.n_latents) > 0
            self.since_fired += idx.shape[0]
            self.since_fired[fired] = 0

    def config(self) -> SAEConfig:
        """The trained SAE's config."""
        return TopKConfig(k=self.k, grad_beta=self.grad_beta if self.grads is not None else 0.0,
                          grad_scale=self.grad_scale)

    def finish(self) -> SAE:
        self.stats.dead_fraction = float((self.since_fired > self.dead_tokens).float().mean())
        if self.prefilter is not None:
            self.stats.fallback_rows = self.prefilter.fallback_rows
            self.stats.fp32_steps = self.prefilter.fp32_steps
        return SAE(*self.folded(), self.config(), info={"train": self.stats.__dict__})


@register_architecture("topk", TopKConfig)
class TopK(Architecture):
    """TopK codes (g-SAE selection when ``config.grad_beta > 0``; then :meth:`encode` needs ``grads``)."""

    trainer = TopKTrainer

    def check(self, config: TopKConfig, n_latents: int) -> TopKConfig:
        k = config.k
        try:
            ok = k is not None and 1 <= int(k) <= n_latents
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ConfigError(f"a topk SAE needs 1 <= k <= n_latents = {n_latents}, got k = {k}")
        return config if type(k) is int else dataclasses.replace(config, k=int(k))

    def encode(self, sae: SAE, x: torch.Tensor, grads: torch.Tensor | None = None) -> SparseCodes:
        centre = sae.b_dec if sae.config.apply_b_dec_to_input else None
        vals, idx = topk_encode(x, sae.W_enc, sae.b_enc, sae.config.k, centre, self.select_scale(sae, grads))
        return SparseCodes(idx, vals, sae.n_latents)

    @staticmethod
    def select_scale(sae: SAE, grads: torch.Tensor | None) -> Callable[[slice], torch.Tensor] | None:
        """g-SAE: ``rows -> 1 + grad_beta * |g_hat[rows] . u|`` ``[rows, n_latents]``; None for plain TopK."""
        beta = sae.config.grad_beta
        if beta <= 0:
            return None
        if grads is None:
            raise HarnessError("this g-SAE selects latents with gradients but was given none")
        unit = sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
        g = grads.to(sae.W_dec.dtype) * sae.config.grad_scale

        def scale(rows: slice) -> torch.Tensor:
            return (g[rows] @ unit.t()).abs_().mul_(beta).add_(1.0)

        return scale


def train_topk_sae(
    acts: torch.Tensor,
    n_latents: int,
    k: int,
    *,
    epochs: int = 6,
    batch_size: int = 512,
    lr: float = 5e-3,
    seed: int = 0,
    grads: torch.Tensor | None = None,
    grad_beta: float = 0.0,
    auxk_coef: float = 1 / 32,
    k_aux: int | None = None,
    dead_tokens: int | None = None,
    selection: str = "auto",
) -> tuple[SAE, TrainStats]:
    """Train a TopK SAE (g-SAE when ``grads`` and ``grad_beta > 0``); see the module docstring.

    ``acts`` ``[N, d]``; ``grads`` ``[N, d]`` the downstream-loss gradients at
    ``acts``; ``auxk_coef = 0`` disables AuxK; ``k_aux`` defaults to ``d // 2``
    and ``dead_tokens`` to ``N`` (a latent is dead after one epoch without firing).  ``selection``: ``"fp32"``,
    ``"bf16-prefilter"`` (:mod:`harness.sae.bf16_select`: the same latents selected without the fp32 encoder
    matmul) or ``"auto"`` (the prefilter where it pays, see :meth:`TopKTrainer.resolve_selection`).
    """
    return TopKTrainer(acts, n_latents, k, grads=grads, grad_beta=grad_beta, auxk_coef=auxk_coef, k_aux=k_aux,
                       dead_tokens=dead_tokens, selection=selection, epochs=epochs, batch_size=batch_size, lr=lr,
                       seed=seed).run()
