"""MLP node scores of the node-level circuit baselines (the optional ``score_mlps`` of the circuits protocol).

Each is on the scale of the same method's head scores, so that heads and MLPs can be ranked together:

- :func:`mlp_patch_effects`: ``m(clean) - m(layer l's MLP output replaced)`` per layer, the MLP counterpart of
  :func:`~harness.baselines.circuits.act_patch_batched` (resample: from the paired corrupted prompt; mean: the
  per-position mean over the clean and corrupted fit prompts); ``L + 2`` forward passes (the replacement's run, the
  clean run, one per layer);
- :func:`mlp_eap_scores`: attribution patching of the MLP outputs, ``sum (out_clean - out_corrupt) . dM/d out``
  at the clean run (one forward + backward, one forward), the counterpart of
  :func:`~harness.baselines.circuits.eap_scores`;
- :func:`mlp_eap_ig_scores`: the same with the gradient averaged over ``steps`` runs in which the MLP's output
  is interpolated from the corrupted to the clean one (``k / steps``, ``k = 1..steps``; the last is the clean
  run), every other component computed normally: the counterpart of
  :func:`~harness.baselines.circuits.eap_ig_scores` (``L (steps - 1)`` more forward + backward passes).

Signed (positive = the MLP helps the metric); the methods take ``|.|`` as they do for heads.
"""

from __future__ import annotations

import numpy as np
import torch

from harness.models.base import HookedModel
from harness.protocols.circuits import CircuitData


@torch.no_grad()
def mlp_patch_effects(model: HookedModel, data: CircuitData, kind: str) -> np.ndarray:
    """Signed single-MLP patching effects ``[L]`` float64 (module docstring); ``kind`` "resample" or "mean"."""
    if kind == "resample":
        replacement = model.mlp_outputs(data.corrupted)  # [b, s, L, d]
    elif kind == "mean":
        replacement = model.mlp_outputs(torch.cat([data.clean, data.corrupted], dim=0)).mean(dim=0)  # [s, L, d]
    else:
        raise ValueError(f"unknown replacement {kind!r}; use 'resample' or 'mean'")
    metric = data.metric
    m_clean = metric.from_logits(model.logits(data.clean))
    effects = [m_clean - metric.from_logits(model.run_with_mlp_replaced(data.clean, layer, replacement[..., layer, :]))
               for layer in range(model.n_layers)]
    return torch.stack(effects).to("cpu", torch.float64).numpy()


def mlp_eap_scores(model: HookedModel, data: CircuitData) -> np.ndarray:
    """Signed attribution patching of each MLP's output ``[L]`` float64 (module docstring)."""
    out_clean, grad = model.mlp_gradients(data.clean, data.metric.from_logits)
    with torch.no_grad():
        out_corr = model.mlp_outputs(data.corrupted).to(out_clean.dtype)
    return torch.einsum("bsld,bsld->l", out_clean - out_corr, grad).to("cpu", torch.float64).numpy()


def mlp_eap_ig_scores(model: HookedModel, data: CircuitData, steps: int = 5) -> np.ndarray:
    """Signed EAP-IG of each MLP's output ``[L]`` float64 (module docstring); ``steps=1`` is :func:`mlp_eap_scores`,
    and as ``steps`` grows each score tends to the MLP's patching effect (completeness)."""
    steps = int(steps)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    out_clean, grad_sum = model.mlp_gradients(data.clean, data.metric.from_logits)  # the alpha = 1 point
    with torch.no_grad():
        out_corr = model.mlp_outputs(data.corrupted).to(out_clean.dtype)
    diff = out_clean - out_corr
    for k in range(1, steps):
        for layer in range(model.n_layers):
            interp = out_corr[:, :, layer] + (k / steps) * diff[:, :, layer]
            grad_sum[:, :, layer] += model.mlp_replacement_gradient(data.clean, layer, interp, data.metric.from_logits)
    return torch.einsum("bsld,bsld->l", diff, grad_sum / steps).to("cpu", torch.float64).numpy()
