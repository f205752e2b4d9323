"""The ``jumprelu`` architecture: JumpReLU SAEs (Rajamanoharan, Lieberum, Sonnerat, Conmy, Varma, Kramár &
Nanda 2024, "Jumping Ahead: Improving Reconstruction Fidelity with JumpReLU Sparse Autoencoders").

Codes: ``z = JumpReLU_theta(a) = a * H(a - theta)``, ``a = relu(pre)``, ``pre = (x - b_dec) W_enc^T + b_enc``,
with a learned threshold per latent ``theta = exp(log_theta) > 0`` (dense ``[N, n_latents]``; since
``theta > 0`` this is ``pre`` where ``pre > theta``).  The threshold is a per-latent tensor of the SAE
(``SAE.extra["threshold"]``, ``threshold`` in ``sae.safetensors`` as in SAELens / Gemma Scope).

Training (:func:`train_jumprelu_sae`), per token in the harness's normalised units::

    |x - x_hat|^2 / d + lambda * L0,      L0 = sum_i H(a_i - theta_i)

with the paper's straight-through estimators: the rectangle kernel ``K(u) = 1{-1/2 < u < 1/2}`` of
bandwidth ``eps`` gives the pseudo-derivatives (:func:`jumprelu`, :func:`step`)

- ``dz/da = H(a - theta)`` and ``dz/dtheta = -(theta / eps) K((a - theta) / eps)``;
- ``dH/da = 0`` and ``dH/dtheta = -(1 / eps) K((a - theta) / eps)``;

``theta``'s gradient reaches ``log_theta`` through ``exp`` (autograd).  ``a = relu(pre)`` as in the paper's
pseudo-code.  ``lambda`` ramps up linearly over the first 10% of steps (the paper warms the sparsity
coefficient up too); everything else is the harness recipe (:class:`~harness.sae.training.NormalisedTrainer`:
unit-norm decoder rows, encoder initialised to the decoder, ``b_dec`` the mean, Adam with warm-up and
decay), with ``log_theta`` trained by the same Adam from ``log(init_threshold)``.  ``pre`` is the same
number in normalised and original units, so ``theta`` needs no conversion.

Units: the paper uses ``eps = theta_0 = 0.001`` on activations scaled to unit mean squared norm; here the
activations have per-dimension variance about 1 (``sqrt(d)`` times larger), and the runs are thousands of
times shorter, so the defaults are larger (the method's ``bandwidth`` and ``init_threshold``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from harness.errors import ConfigError
from harness.sae.kernels import threshold_encode
from harness.sae.model import SAE
from harness.sae.registry import Architecture, SAEConfig, register_architecture
from harness.sae.training import NormalisedTrainer, TrainStats


def rectangle(u: torch.Tensor) -> torch.Tensor:
    """``K(u) = 1`` for ``-1/2 < u < 1/2``, else 0 (same dtype as ``u``)."""
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, theta, eps):
        ctx.save_for_backward(a, theta)
        ctx.eps = eps
        return a * (a > theta)

    @staticmethod
    def backward(ctx, g):
        a, theta = ctx.saved_tensors
        eps = ctx.eps
        grad_a = (a > theta) * g
        grad_theta = (-(theta / eps) * rectangle((a - theta) / eps) * g).sum(0)
        return grad_a, grad_theta, None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, theta, eps):
        ctx.save_for_backward(a, theta)
        ctx.eps = eps
        return (a > theta).to(a.dtype)

    @staticmethod
    def backward(ctx, g):
        a, theta = ctx.saved_tensors
        eps = ctx.eps
        return None, (-(1.0 / eps) * rectangle((a - theta) / eps) * g).sum(0), None


def jumprelu(a: torch.Tensor, theta: torch.Tensor, eps: float) -> torch.Tensor:
    """``a * H(a - theta)`` for ``a`` ``[B, n]``, ``theta`` ``[n]``, with the STE pseudo-derivatives (module docstring)."""
    return _JumpReLU.apply(a, theta, float(eps))


def step(a: torch.Tensor, theta: torch.Tensor, eps: float) -> torch.Tensor:
    """``H(a - theta)`` ``[B, n]`` with the STE pseudo-derivative in ``theta`` only (module docstring)."""
    return _Step.apply(a, theta, float(eps))


@dataclass(frozen=True, kw_only=True)
class JumpReLUConfig(SAEConfig):
    """JumpReLU codes; the per-latent threshold is a tensor of the SAE (``SAE.extra["threshold"]``)."""


class JumpReLUTrainer(NormalisedTrainer):
    """JumpReLU with the L0 penalty through STEs (module docstring)."""

    def __init__(self, acts: torch.Tensor, n_latents: int, *, l0_coef: float, bandwidth: float,
                 init_threshold: float, **loop) -> None:
        if not (bandwidth > 0 and init_threshold > 0 and l0_coef >= 0):
            raise ConfigError(f"a jumprelu SAE needs bandwidth > 0, init_threshold > 0 and l0_coef >= 0; got "
                              f"{bandwidth}, {init_threshold} and {l0_coef}")
        super().__init__(acts, n_latents, **loop)
        self.l0_coef, self.eps, self.init_threshold = float(l0_coef), float(bandwidth), float(init_threshold)

    def setup(self) -> torch.Tensor:
        x_all = super().setup()
        self.log_theta = torch.full((self.n_latents,), math.log(self.init_threshold), device=x_all.device,
                                    requires_grad=True)
        params = [self.W_enc, self.b_enc, self.W_dec, self.b_dec, self.log_theta]
        self.opt = torch.optim.Adam(params, lr=self.lr, betas=(0.9, 0.999), fused=True)
        self.ramp = max(1, self.total // 10)
        return x_all

    def loss(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        a = torch.relu(torch.addmm(self.b_enc, x - self.b_dec, self.W_enc.t()))
        theta = self.log_theta.exp()
        z = jumprelu(a, theta, self.eps)
        x_hat = torch.addmm(self.b_dec, z, self.W_dec)
        mse = (x - x_hat).pow(2).sum(1).mean() / self.d
        l0 = step(a, theta, self.eps).sum(1).mean()
        return mse + self.l0_coef * min(1.0, (self.step + 1) / self.ramp) * l0

    def finish(self) -> SAE:
        return SAE(*self.folded(), JumpReLUConfig(), info={"train": self.stats.__dict__},
                   extra={"threshold": self.log_theta.detach().exp()})


@register_architecture("jumprelu", JumpReLUConfig)
class JumpReLU(Architecture):
    """Dense codes ``pre * (pre > threshold)`` with the SAE's per-latent ``threshold``."""

    trainer = JumpReLUTrainer
    extra_tensors = ("threshold",)

    def encode(self, sae: SAE, x: torch.Tensor, grads: torch.Tensor | None = None) -> torch.Tensor:
        centre = sae.b_dec if sae.config.apply_b_dec_to_input else None
        return threshold_encode(x, sae.W_enc, sae.b_enc, sae.extra["threshold"].clamp_min(0), centre)


def train_jumprelu_sae(acts: torch.Tensor, n_latents: int, *, l0_coef: float, bandwidth: float, init_threshold: float,
                       epochs: int = 6, batch_size: int = 512, lr: float = 5e-3,
                       seed: int = 0) -> tuple[SAE, TrainStats]:
    """Train a JumpReLU SAE on ``acts`` ``[N, d]`` (module docstring)."""
    return JumpReLUTrainer(acts, n_latents, l0_coef=l0_coef, bandwidth=bandwidth, init_threshold=init_threshold,
                           epochs=epochs, batch_size=batch_size, lr=lr, seed=seed).run()
