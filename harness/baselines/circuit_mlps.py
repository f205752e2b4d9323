"""MLP node scores of the node-level circuit baselines (the optional ``score_mlps`` of the circuits protocol).

Each is on the scale of the same method's head scores, so that heads and MLPs can be ranked together:

- :func:`mlp_patch_effects`: ``m(clean) - m(layer l's MLP output replaced)`` per layer, the MLP counterpart of
  :func:`~harness.baselines.circuits.act_patch_batched` (resample: from the paired corrupted prompt; mean: the
  per-position mean over the clean and corrupted fit prompts); ``L + 1`` forward passes (+1 for the mean);
- :func:`mlp_eap_scores`: attribution patching of the MLP outputs, ``sum (out_clean - out_corrupt) . dM/d out``
  at the clean run (one forward + backward, one forward), the counterpart of
  :func:`~harness.baselines.circuits.eap_scores`.

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
