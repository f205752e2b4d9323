"""Metrics of a learned dictionary against a known one (the reconstruction family's known-truth tasks).

Directions are rows: ``true`` ``[n_features, d]`` (the generator's feature directions) and ``learned``
``[n_latents, d]`` (what one unit of each latent adds to the reconstruction: an SAE's ``W_dec`` rows,
PCA's components, a random dictionary's atoms).  Cosines are *absolute* (``|cos|``): a direction is
recovered whether a latent adds it or subtracts it, since PCA's and matching pursuit's codes are signed
(for SAEs, whose codes are non-negative, a row pointing at ``-f`` cannot reconstruct ``f``, so training
never puts one there).  A zero learned row has cosine 0 with everything.  Sums in float64.

- :func:`abs_cosine_matrix`: ``[n_features, n_latents]`` of ``|cos(true_i, learned_j)|``.
- :func:`mmcs`: mean over true features of the max ``|cos|`` with any learned row (mean max cosine
  similarity, Sharkey, Braun & Millidge 2022, "Taking features out of superposition with sparse autoencoders").
- :func:`recovered_fraction`: fraction of true features whose max ``|cos|`` is at least ``threshold`` (0.9).
- :func:`match_latents`: max-cosine matching, each latent to the true feature it is closest to (many to
  one, so a feature split over two latents keeps both; not a Hungarian one-to-one assignment).
- :func:`active_set_precision_recall`: per sample, the active latents mapped through that matching
  against the truly active features, pooled over samples.
"""

from __future__ import annotations

from typing import Any

import torch

from harness.metrics.reconstruction import active_chunks

#: the cosine at which a true feature counts as recovered (:func:`recovered_fraction`)
RECOVERY_COSINE = 0.9


def _rows64(x: Any, what: str) -> torch.Tensor:
    x = torch.as_tensor(x).detach().to("cpu", torch.float64)
    if x.dim() != 2 or x.shape[0] < 1:
        raise ValueError(f"{what} must be a non-empty [rows, d] matrix, got shape {list(x.shape)}")
    return x


def abs_cosine_matrix(true: Any, learned: Any) -> torch.Tensor:
    """``|cos(true_i, learned_j)|`` ``[n_features, n_latents]`` float64 (a zero learned row scores 0)."""
    t, w = _rows64(true, "true"), _rows64(learned, "learned")
    if t.shape[1] != w.shape[1]:
        raise ValueError(f"true directions have d = {t.shape[1]} but learned ones d = {w.shape[1]}")
    tn = t.norm(dim=1, keepdim=True)
    if not bool((tn > 0).all()):
        raise ValueError("a true feature direction is zero")
    return ((t / tn) @ (w / w.norm(dim=1, keepdim=True).clamp_min(1e-300)).t()).abs_()


def max_cosines(true: Any, learned: Any) -> torch.Tensor:
    """For each true feature, the largest ``|cos|`` with any learned row ``[n_features]``."""
    return abs_cosine_matrix(true, learned).max(dim=1).values


def mmcs(true: Any, learned: Any) -> float:
    """Mean max cosine similarity: mean over true features of their best ``|cos|`` with a learned row."""
    return float(max_cosines(true, learned).mean())


def recovered_fraction(true: Any, learned: Any, threshold: float = RECOVERY_COSINE) -> float:
    """Fraction of true features with some learned row at ``|cos| >= threshold``."""
    return float((max_cosines(true, learned) >= threshold).double().mean())


def match_latents(true: Any, learned: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Max-cosine matching: ``(feature [n_latents] int64, |cos| [n_latents])``, each latent's closest true feature."""
    best = abs_cosine_matrix(true, learned).max(dim=0)
    return best.indices, best.values


def active_set_precision_recall(codes: Any, latent_feature: torch.Tensor, true_active: torch.Tensor,
                                chunk_rows: int = 4096) -> tuple[float, float]:
    """``(precision, recall)`` of the active sets, pooled over samples.

    ``codes``: dense ``[N, n_latents]`` or sparse codes (a latent is active where its value is non-zero);
    ``latent_feature`` ``[n_latents]``: the true feature each latent stands for (:func:`match_latents`);
    ``true_active`` ``[N, n_features]`` bool.  Precision = sum over samples of the active latents whose
    feature is truly active / sum of active latents; recall = sum over samples of the truly active features
    that some active latent stands for / sum of truly active features.  0 when a denominator is 0.
    """
    true_active = torch.as_tensor(true_active).to("cpu", torch.bool)
    feat = torch.as_tensor(latent_feature).to("cpu", torch.long)
    n_features = true_active.shape[1]
    stands_for = torch.zeros(feat.numel(), n_features)  # [n_latents, n_features] one-hot of the matching
    stands_for[torch.arange(feat.numel()), feat] = 1.0
    hits = active = covered = truly = 0
    for rows, act in active_chunks(codes, chunk_rows):
        act = act.cpu()
        t = true_active[rows]
        hits += int((act & t[:, feat]).sum())
        active += int(act.sum())
        covered += int(((act.float() @ stands_for > 0) & t).sum())
        truly += int(t.sum())
    return (hits / active if active else 0.0), (covered / truly if truly else 0.0)
