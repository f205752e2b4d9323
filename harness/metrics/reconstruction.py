"""Metrics of the reconstruction family, each defined once (DESIGN.md section 2).

All functions take torch tensors or numpy arrays and return Python floats;
sums are accumulated in float64.

- :func:`fvu`: fraction of variance unexplained, *pooled and centred*:
  ``sum_i ||x_i - xhat_i||^2 / sum_i ||x_i - mean(x)||^2`` with ``mean(x)`` the
  mean activation vector over the scored tokens.  (Dividing by
  ``sum ||x_i||^2`` instead, i.e. forgetting to centre, is the SAEBench bug
  that inflated explained variance; that quantity is :func:`normalized_mse`
  here, reported under its own name.)
- :func:`normalized_mse`: ``sum ||x - xhat||^2 / sum ||x||^2`` (error relative
  to predicting zero).
- :func:`mean_cosine_similarity`: mean over rows of ``cos(x_i, xhat_i)``; also
  the sentence-embedding cosine of MiniLM tasks.
- :func:`l0` / :func:`dead_latent_fraction`: from codes (see
  :mod:`harness.protocols.reconstruction`).
- :func:`next_token_cross_entropy`, :func:`mean_kl_divergence`,
  :func:`loss_recovered`, :func:`kl_recovered`: downstream fidelity of a
  language model with the reconstruction spliced in.
- :func:`tokens_per_second`.
"""

from __future__ import annotations

import math
from typing import Any, Iterator

import numpy as np
import torch


def _t64(x: Any) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    x = torch.as_tensor(x)
    return x.detach().to("cpu", torch.float64)


def _rows(x: Any, x_hat: Any) -> tuple[torch.Tensor, torch.Tensor]:
    x, x_hat = _t64(x), _t64(x_hat)
    if x.shape != x_hat.shape:
        raise ValueError(f"x and x_hat must have the same shape, got {list(x.shape)} and {list(x_hat.shape)}")
    if x.dim() == 1:
        x, x_hat = x[:, None], x_hat[:, None]
    return x.reshape(-1, x.shape[-1]), x_hat.reshape(-1, x_hat.shape[-1])


def fvu(x: Any, x_hat: Any) -> float:
    """Fraction of variance unexplained, pooled over tokens and dimensions, centred.

    ``sum ||x - x_hat||^2 / sum ||x - mean_over_tokens(x)||^2``; 0 is perfect,
    1 is no better than predicting the mean activation.
    """
    x, x_hat = _rows(x, x_hat)
    err = (x - x_hat).pow(2).sum()
    var = (x - x.mean(0, keepdim=True)).pow(2).sum()
    if var <= 0:
        raise ValueError("fvu is undefined: the activations have zero variance")
    return float(err / var)


def explained_variance(x: Any, x_hat: Any) -> float:
    """``1 - fvu(x, x_hat)``."""
    return 1.0 - fvu(x, x_hat)


def normalized_mse(x: Any, x_hat: Any) -> float:
    """``sum ||x - x_hat||^2 / sum ||x||^2``: squared error relative to predicting zero (not centred)."""
    x, x_hat = _rows(x, x_hat)
    denom = x.pow(2).sum()
    if denom <= 0:
        raise ValueError("normalized_mse is undefined for all-zero activations")
    return float((x - x_hat).pow(2).sum() / denom)


def mean_cosine_similarity(x: Any, x_hat: Any, eps: float = 1e-12) -> float:
    """Mean over rows of ``x_i . xhat_i / (|x_i| |xhat_i|)`` (a zero row scores 0)."""
    x, x_hat = _rows(x, x_hat)
    num = (x * x_hat).sum(1)
    den = x.norm(dim=1) * x_hat.norm(dim=1)
    return float(torch.where(den > eps, num / den.clamp_min(eps), torch.zeros_like(num)).mean())


def active_chunks(codes: Any, chunk_rows: int = 4096) -> Iterator[tuple[slice, torch.Tensor]]:
    """``(rows, active [rows, n_latents] bool)`` for consecutive row chunks of ``codes``.

    A latent is active in a row when its (summed) value there is non-zero.  ``codes``: a dense tensor
    ``[N, n_latents]`` (one chunk) or sparse codes (anything with ``indices`` / ``values`` ``[N, k]`` and
    ``n_latents``, such as :class:`~harness.protocols.reconstruction.SparseCodes`), scattered chunk by chunk
    so that no ``[N, n_latents]`` tensor is built.
    """
    if not hasattr(codes, "n_latents"):
        yield slice(0, codes.shape[0]), codes != 0
        return
    n, n_lat = codes.shape
    dev = codes.indices.device  # counted where the codes are
    for i in range(0, n, chunk_rows):
        rows = slice(i, min(n, i + chunk_rows))
        dense = torch.zeros(rows.stop - i, n_lat, dtype=codes.values.dtype, device=dev).scatter_add_(
            1, codes.indices[rows], codes.values[rows]
        )
        yield rows, dense != 0


def code_activity(codes: Any, chunk_rows: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """``(active_per_row [N] int64, fired [n_latents] bool)`` of codes (see :func:`active_chunks`)."""
    if not hasattr(codes, "n_latents"):
        active = codes != 0
        return active.sum(1), active.any(0)
    n, n_lat = codes.shape
    dev = codes.indices.device
    per_row = torch.empty(n, dtype=torch.long, device=dev)
    fired = torch.zeros(n_lat, dtype=torch.bool, device=dev)
    for rows, active in active_chunks(codes, chunk_rows):
        per_row[rows] = active.sum(1)
        fired |= active.any(0)
    return per_row, fired


def _activity(codes: Any):
    if not hasattr(codes, "n_latents"):
        codes = _t64(codes).float()
        if codes.dim() != 2:
            raise ValueError(f"codes must be [N, n_latents], got shape {list(codes.shape)}")
    return code_activity(codes)


def activity_stats(per_row: torch.Tensor, fired: torch.Tensor) -> tuple[float, float]:
    """``(l0, dead_fraction)`` from :func:`code_activity`'s output:
    mean non-zero latents per row, and the fraction of latents zero on every row."""
    return float(per_row.double().mean()), float(1.0 - fired.double().mean())


def l0(codes: Any) -> float:
    """Mean number of non-zero latents per row (dense codes or :class:`SparseCodes`)."""
    return activity_stats(*_activity(codes))[0]


def dead_latent_fraction(codes: Any) -> float:
    """Fraction of the ``n_latents`` latents that are zero on every row of ``codes``."""
    return activity_stats(*_activity(codes))[1]


def next_token_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Log-probabilities (float32) at the positions that predict a next token: ``[b, s - 1, vocab]``."""
    return logits[:, :-1].float().log_softmax(-1)


def next_token_cross_entropy(logits: torch.Tensor, tokens: torch.Tensor, log_probs: torch.Tensor | None = None) -> torch.Tensor:
    """Per-position next-token cross-entropy (nats), ``[b, s - 1]``: logits at ``t`` predict ``tokens[t + 1]``.

    ``log_probs``: :func:`next_token_log_probs` of ``logits`` if already computed (``logits`` may then be None).
    """
    if log_probs is None:
        if logits.dim() != 3 or tokens.shape != logits.shape[:2]:
            raise ValueError(f"need logits [b, s, vocab] and tokens [b, s]; got {list(logits.shape)}, {list(tokens.shape)}")
        log_probs = next_token_log_probs(logits)
    return -log_probs.gather(-1, tokens[:, 1:, None].to(log_probs.device, torch.long)).squeeze(-1)


def kl_per_position(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """``KL(p || q)`` per position from log-probabilities ``[..., vocab]`` (nats)."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def mean_kl_divergence(logits_p: torch.Tensor, logits_q: torch.Tensor) -> float:
    """Mean over positions of ``KL(p || q)`` (nats) from logits, ``p`` the reference (clean) model."""
    return float(kl_per_position(logits_p.double().log_softmax(-1), logits_q.double().log_softmax(-1)).mean())


def loss_recovered(ce_clean: float, ce_recon: float, ce_zero: float) -> float:
    """``(CE_zero - CE_recon) / (CE_zero - CE_clean)``: 1 = as good as the clean model, 0 = as bad as zero-ablation."""
    denom = ce_zero - ce_clean
    if not math.isfinite(denom) or abs(denom) < 1e-12:
        raise ValueError(f"loss recovered is undefined: zero-ablation CE ({ce_zero}) equals clean CE ({ce_clean})")
    return float((ce_zero - ce_recon) / denom)


def kl_recovered(kl_recon: float, kl_zero: float) -> float:
    """``(KL_zero - KL_recon) / KL_zero`` with KLs measured from the clean model's next-token distribution."""
    if not math.isfinite(kl_zero) or kl_zero < 1e-12:
        raise ValueError(f"KL recovered is undefined: zero-ablation KL is {kl_zero}")
    return float((kl_zero - kl_recon) / kl_zero)


def tokens_per_second(n_tokens: int, seconds: float) -> float:
    """``n_tokens / seconds`` (seconds floored at 1 microsecond)."""
    return float(n_tokens) / max(float(seconds), 1e-6)
