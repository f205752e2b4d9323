"""The ``discrete`` architecture: the SAE of O'Neill & Bui 2024's discrete-SAE circuit finding.

Codes: the argmax latent of ``pre = (x - b_dec) W_enc^T + b_enc`` (whether or
not it is positive), with value ``relu(pre)`` there
(:class:`~harness.protocols.reconstruction.SparseCodes`, ``k = 1``); dense
forward ``f = relu(pre)``, ``x_hat = f W_dec + b_dec``.

Training (:func:`train_discrete_sae`) in the units it is given: ``W_dec`` rows
random unit vectors, ``W_enc`` tied to ``W_dec`` at init and scaled by
``min(1, 2 d / n_latents)`` (so that the initial reconstruction has about the
input's size: about ``n_latents / 2`` unit directions have a positive
projection), ``b_dec`` the mean; loss ``mean ||x - x_hat||^2 + l1 * mean ||f||_1``;
:class:`PlainAdam` at a constant ``lr``; every row once per epoch (the last
batch may be short); decoder rows renormalised after each step; one CPU thread.

The update is a hand-written Adam, not ``torch.optim.Adam``: the first
``torch.optim`` step imports TorchDynamo (about 2 s here, as much as the whole
training), and the two round differently (``torch.optim.Adam`` interpolates the
first moment with ``lerp`` and divides the step size, not the moment, by the
bias correction), so the discrete-SAE results would change in the last bits
(measured: up to 2.4e-7 on the weights after 30 epochs, in every variant:
single-tensor, foreach and fused).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ContextManager, Sequence

import torch

from harness.core.seeding import torch_threads
from harness.protocols.reconstruction import SparseCodes
from harness.sae.model import SAE
from harness.sae.registry import Architecture, SAEConfig, register_architecture
from harness.sae.training import Trainer, TrainStats, unit_rows_


@dataclass(frozen=True, kw_only=True)
class DiscreteConfig(SAEConfig):
    """Argmax-of-pre-activation codes (nothing beyond the weights)."""


class PlainAdam:
    """Plain Adam (Kingma & Ba, bias-corrected, no weight decay) over ``params``, fed the gradients.

    The same update as ``torch.optim.Adam`` with its defaults, rounded differently (see the module docstring).
    """

    def __init__(self, params: list[torch.Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.params, self.lr, self.betas, self.eps = params, lr, betas, eps
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.t = 0

    @torch.no_grad()
    def step(self, grads: Sequence[torch.Tensor]) -> None:
        """One update with ``grads`` (one per parameter, same shapes)."""
        self.t += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1**self.t, 1 - b2**self.t
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            p.addcdiv_(m / c1, (v / c2).sqrt_().add_(self.eps), value=-self.lr)


def dense_forward(xc: torch.Tensor, W_enc_t: torch.Tensor, b_enc: torch.Tensor, W_dec: torch.Tensor,
                  b_dec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_hat [N, d], f [N, n_latents])``: ``f = relu(xc W_enc_t + b_enc)``, ``x_hat = f W_dec + b_dec``.

    ``xc`` the centred input ``[N, d]``; ``W_enc_t`` ``[d, n_latents]`` (the transpose of ``W_enc``).
    """
    f = torch.relu(xc @ W_enc_t + b_enc)
    return f @ W_dec + b_dec, f


class DiscreteTrainer(Trainer):
    """O'Neill & Bui's training (see the module docstring); ``l1`` weights the L1 term."""

    drop_last = False

    def __init__(self, x: torch.Tensor, n_latents: int, *, l1: float, **loop) -> None:
        super().__init__(x, n_latents, **loop)
        self.l1 = l1

    def setup(self) -> torch.Tensor:
        x = self.acts
        d, n = x.shape[1], self.n_latents
        w = torch.randn(n, d, generator=self.gen)
        w = w / w.norm(dim=1, keepdim=True)
        W_enc_t = w.T.clone() * min(1.0, 2.0 * d / n)  # [d, n], laid out as W_enc [n, d]
        dev = x.device
        self.W_dec = w.to(dev).requires_grad_()
        self.W_enc_t = W_enc_t.to(dev).requires_grad_()
        self.b_enc = torch.zeros(n, device=dev).requires_grad_()
        self.b_dec = x.mean(dim=0).cpu().clone().to(dev).requires_grad_()
        self.opt = PlainAdam([self.W_dec, self.W_enc_t, self.b_enc, self.b_dec], lr=self.lr)
        return x

    def loop_context(self) -> ContextManager:
        # one CPU thread: the SAE's matmuls are small (a few hundred rows x d x n_latents), so a second
        # thread only adds synchronisation (measured on a busy 2-core machine: 2 ms per step on one, 74 ms on two)
        return torch_threads(1 if self.acts.device.type == "cpu" else None)

    def loss(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        x_hat, f = dense_forward(x - self.b_dec, self.W_enc_t, self.b_enc, self.W_dec, self.b_dec)
        return (x - x_hat).pow(2).sum(-1).mean() + self.l1 * f.abs().sum(-1).mean()

    def update(self, loss: torch.Tensor) -> None:
        self.opt.step(torch.autograd.grad(loss, self.opt.params))
        unit_rows_(self.W_dec.data)

    def finish(self) -> SAE:
        W_enc_t, b_enc, W_dec, b_dec = (p.detach() for p in (self.W_enc_t, self.b_enc, self.W_dec, self.b_dec))
        return SAE(W_enc_t.t(), b_enc, W_dec, b_dec, DiscreteConfig(), info={"train": self.stats.__dict__})


@register_architecture("discrete", DiscreteConfig)
class Discrete(Architecture):
    """Argmax-of-``pre`` codes (module docstring); :meth:`forward` gives the dense codes and reconstruction."""

    trainer = DiscreteTrainer

    def pre(self, sae: SAE, x: torch.Tensor) -> torch.Tensor:
        """``pre`` ``[N, n_latents]``."""
        return self.centred(sae, x) @ sae.W_enc.t() + sae.b_enc

    def forward(self, sae: SAE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_hat [N, d], f = relu(pre) [N, n_latents])``, as in training."""
        return dense_forward(self.centred(sae, x), sae.W_enc.t(), sae.b_enc, sae.W_dec, sae.b_dec)

    def encode(self, sae: SAE, x: torch.Tensor, grads: torch.Tensor | None = None) -> SparseCodes:
        pre = self.pre(sae, x)
        idx = pre.argmax(dim=1, keepdim=True)
        return SparseCodes(idx, pre.gather(1, idx).clamp_min_(0), sae.n_latents)


def train_discrete_sae(x: torch.Tensor, n_latents: int, *, l1: float, epochs: int, batch_size: int, lr: float,
                       seed: int) -> tuple[SAE, TrainStats]:
    """Train the discrete SAE on ``x`` ``[N, d]`` (module docstring); deterministic in ``seed`` on a device."""
    return DiscreteTrainer(x, n_latents, l1=l1, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed).run()
