"""Random SAE weights and inputs for the SAE tests (float64: reference computations agree to ~1e-12)."""

from __future__ import annotations

import torch


def random_weights(seed: int, n_latents: int, d: int, rows: int) -> tuple[torch.Tensor, ...]:
    """``(W_enc, b_enc, W_dec, b_dec, x)``: ``W_*`` ``[n_latents, d]``, ``b_enc`` ``[n_latents]`` (scale 0.3),
    ``b_dec`` ``[d]``, ``x`` ``[rows, d]``; drawn in float32 from one generator, returned as float64."""
    g = torch.Generator().manual_seed(seed)
    W_enc, W_dec = torch.randn(n_latents, d, generator=g), torch.randn(n_latents, d, generator=g)
    b_enc, b_dec = 0.3 * torch.randn(n_latents, generator=g), torch.randn(d, generator=g)
    x = torch.randn(rows, d, generator=g)
    return tuple(t.double() for t in (W_enc, b_enc, W_dec, b_dec, x))
