"""Sparse autoencoder weights with the config of their architecture; encode / decode through the registry.

:class:`SAE` holds weights in the units of the activations it reads:
``W_enc``, ``W_dec`` ``[n_latents, d_in]``, ``b_enc`` ``[n_latents]``, ``b_dec``
``[d_in]``, and a ``config`` (an :class:`~harness.sae.registry.SAEConfig`
subclass) that names its architecture.  ``pre = (x - b_dec) W_enc^T + b_enc``,
``x_hat = b_dec + codes W_dec``, and the codes are the architecture's
(:mod:`harness.sae.topk`, :mod:`harness.sae.relu`, :mod:`harness.sae.discrete`):

- ``topk``: ``relu`` of the ``k`` largest ``pre`` (sparse; g-SAE when ``grad_beta > 0``);
- ``relu``: ``relu(pre)`` (dense);
- ``argmax``: only the largest ``relu(pre)`` (sparse, ``k = 1``);
- ``discrete``: the argmax latent of ``pre`` (O'Neill & Bui's discrete SAE; sparse, ``k = 1``);
- ``jumprelu``: ``pre`` where ``pre > threshold`` (a per-latent tensor in :attr:`SAE.extra`; dense);
- ``batchtopk`` / ``matryoshka``: ``pre`` where ``pre > threshold`` (one number in the config; dense).

An architecture may need per-latent tensors besides the four weights (``Architecture.extra_tensors``,
e.g. JumpReLU's ``threshold``): they live in :attr:`SAE.extra`, each ``[n_latents]``.

Saved and loaded by :mod:`harness.sae.io` (``sae.safetensors`` + ``sae.json``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.errors import ConfigError
from harness.protocols.reconstruction import SparseCodes
from harness.sae.registry import Architecture, SAEConfig, architecture_of


@dataclass
class SAE:
    """Weights (``W_enc``, ``W_dec`` ``[n_latents, d_in]``, ``b_enc`` ``[n_latents]``, ``b_dec`` ``[d_in]``)
    and the ``config`` of their architecture; ``info`` is free-form (training statistics, path); ``extra``
    the architecture's per-latent tensors (``{"threshold": [n_latents]}`` for JumpReLU)."""

    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor
    config: SAEConfig
    info: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n, d = self.W_dec.shape
        if self.W_enc.shape != (n, d) or self.b_enc.shape != (n,) or self.b_dec.shape != (d,):
            raise ConfigError(
                f"inconsistent SAE shapes: W_enc {list(self.W_enc.shape)}, b_enc {list(self.b_enc.shape)}, "
                f"W_dec {list(self.W_dec.shape)}, b_dec {list(self.b_dec.shape)} (expected W_enc and W_dec "
                f"[n_latents, d_in] internally)"
            )
        self.config = self.arch.check(self.config, n)
        wanted = self.arch.extra_tensors
        if set(self.extra) != set(wanted) or any(self.extra[name].shape != (n,) for name in wanted):
            got = {name: list(t.shape) for name, t in self.extra.items()}
            raise ConfigError(f"a {self.arch.name} SAE needs the per-latent tensor(s) {list(wanted)} of shape "
                              f"[{n}] besides its weights, got {got}")

    @property
    def arch(self) -> Architecture:
        """The registered architecture of :attr:`config`."""
        return architecture_of(self.config)

    @property
    def architecture(self) -> str:
        """The architecture's registered name (``sae.json``'s ``"activation"``)."""
        return self.arch.name

    @property
    def n_latents(self) -> int:
        return int(self.W_dec.shape[0])

    @property
    def d_in(self) -> int:
        return int(self.W_dec.shape[1])

    def to(self, device: torch.device | str) -> "SAE":
        """Move the weights to ``device`` (in place); returns ``self``."""
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            setattr(self, name, getattr(self, name).to(device))
        self.extra = {name: t.to(device) for name, t in self.extra.items()}
        return self

    def replace(self, **changes: Any) -> "SAE":
        """The same weights with config fields changed (e.g. ``grad_beta=0.0``: a g-SAE read as plain TopK)."""
        return dataclasses.replace(self, config=dataclasses.replace(self.config, **changes))

    @torch.no_grad()
    def encode(self, x: torch.Tensor, grads: torch.Tensor | None = None) -> SparseCodes | torch.Tensor:
        """Codes of ``x`` ``[N, d_in]``: dense ``[N, n_latents]`` or :class:`SparseCodes` (see the architecture)."""
        return self.arch.encode(self, x.to(self.W_enc.dtype), grads)

    @torch.no_grad()
    def decode(self, codes: SparseCodes | torch.Tensor) -> torch.Tensor:
        """``x_hat`` ``[N, d_in]`` from codes."""
        return self.arch.decode(self, codes)

    def save(self, directory: str | Path) -> Path:
        """Write ``sae.safetensors`` + ``sae.json`` (:func:`harness.sae.io.save_sae`)."""
        from harness.sae.io import save_sae

        return save_sae(self, directory)
