"""MIB's faithfulness curves (Mueller et al. 2025) of a method's component scores on the held-out eval prompts.

For each circuit size ``k`` in :data:`~harness.metrics.circuits.MIB_KS` (percent of the components),
``C_k`` is the top ``floor(k / 100 * N)`` components by score (:func:`~harness.metrics.circuits.
faithfulness_curve_sizes`; ties to the lower layer-major index, :func:`~harness.metrics.circuits.top_k_masks`),
everything *outside* ``C_k`` is ablated and ``f(k) = (m(C_k) - m(empty)) / (m(model) - m(empty))``,
``m`` = the task metric averaged over the eval prompts, ``m(model)`` = the clean run, ``m(empty)`` =
every component ablated.  CPR and CMD are the areas of :func:`~harness.metrics.circuits.cpr` /
:func:`~harness.metrics.circuits.cmd` over that curve.

Ablation (``ablation``):

- ``"resample"`` (MIB's default, counterfactual / interchange): an ablated head's ``z`` is its ``z`` on
  the *paired* corrupted prompt (row ``i`` of the clean batch gets row ``i`` of the corrupted run), as
  ``act-patch-resample`` patches single heads;
- ``"mean"``: the mean ``z`` over the eval split's corrupted prompts, per position (the replacement of
  the task's single ``faithfulness`` number).

Components: the circuits family scores attention heads only (``[L, H]``, flattened layer-major), so
``N = L * H`` and the only ablated activations are the heads' ``z``; embeddings and MLPs always run
clean.  When a model's scored components include MLP nodes, :func:`component_masks` is the one place
that maps the top-``k`` set of flat components to what is ablated (extend it to return MLP masks next
to the head masks, and the ablation call below to take them).

All sizes go through *one* :meth:`~harness.models.patching.PatchingMixin.ablate_many` call (split only
when the logits it returns would exceed :data:`MAX_OUTPUT_ELEMENTS`): ``m(empty)``, ``m(model)`` and every
distinct ``|C_k|`` are sets of the same call, so ``f(100%) == 1`` and ``f`` of an empty ``C_k`` ``== 0``
hold exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from harness.data import circuits as D
from harness.metrics.circuits import MIB_KS, cmd, cpr, faithfulness, faithfulness_curve_sizes, top_k_masks
from harness.models.base import HookedModel

ABLATIONS = ("resample", "mean")
#: Largest ablate_many output (sets x prompts x logit columns) requested at once: 256 MB in float32.
MAX_OUTPUT_ELEMENTS = 2**26


@dataclass(frozen=True)
class FaithfulnessCurve:
    """``f`` at each ``k`` (percent) with ``sizes`` components kept; ``m_model`` / ``m_empty`` are its anchors."""

    ks: tuple[float, ...]
    sizes: np.ndarray  # int [len(ks)]: |C_k|
    f: np.ndarray  # float64 [len(ks)]
    m_model: float
    m_empty: float
    ablation: str
    n_components: int

    @property
    def cpr(self) -> float:
        return cpr(self.ks, self.f)

    @property
    def cmd(self) -> float:
        return cmd(self.ks, self.f)

    def artifact(self) -> dict[str, Any]:
        """The curve as JSON for the record (``harness.tasks.circuits.plots`` draws it)."""
        return {
            "ks": [float(k) for k in self.ks], "n_components": [int(n) for n in self.sizes],
            "f": [float(v) for v in self.f], "m_model": self.m_model, "m_empty": self.m_empty,
            "ablation": self.ablation, "components": "heads", "total_components": self.n_components,
        }


def component_masks(scores: np.ndarray, sizes: Sequence[int]) -> np.ndarray:
    """Bool ``[len(sizes), L, H]``: True = head ablated (outside the top-``n`` circuit), for each ``n``.

    Today every component is a head; MLP nodes would be mapped to their own masks here."""
    return ~top_k_masks(scores, sizes)


@torch.no_grad()
def replacement(model: HookedModel, split: D.Split, ablation: str) -> torch.Tensor:
    """The ``z`` an ablated head gets on ``split``: ``"resample"``: the corrupted run's ``z``
    ``[b, s, L, H, d_head]`` (row-paired); ``"mean"``: its mean over the corrupted prompts ``[s, L, H, d_head]``."""
    if ablation == "resample":
        return model.run_with_cache(split.corrupted, return_logits=False)[1]
    if ablation == "mean":
        return model.mean_z(split.corrupted)
    raise ValueError(f"unknown faithfulness ablation {ablation!r}; use one of {ABLATIONS}")


@torch.no_grad()
def faithfulness_curve(model: HookedModel, split: D.Split, scores: np.ndarray, ablation: str = "resample",
                       ks: Sequence[float] = MIB_KS, rep: torch.Tensor | None = None) -> FaithfulnessCurve:
    """The faithfulness curve of the top-``k``% heads by ``scores`` ``[L, H]`` on ``split`` (see the module doc).

    ``rep``: the replacement ``z`` when the caller has it already (:func:`replacement`).  ValueError when
    ``m(model) == m(empty)`` (no effect to explain).
    """
    scores = np.asarray(scores, dtype=np.float64)
    n = int(scores.size)
    sizes = faithfulness_curve_sizes(n, ks)
    uniq = np.unique(np.r_[0, sizes, n])  # first = empty circuit, last = every component (the model)
    masks = torch.as_tensor(component_masks(scores, uniq), device=model.device)
    if rep is None:
        rep = replacement(model, split, ablation)
    ids = split.metric.token_ids
    width = len(ids) if ids is not None else model.vocab_size
    per_call = max(1, MAX_OUTPUT_ELEMENTS // (len(split) * width))
    m = torch.cat([split.metric.from_last(model.ablate_many(split.clean, group, rep, token_ids=ids))
                   for group in masks.split(per_call)]).to("cpu", torch.float64).numpy()
    by_size = dict(zip(uniq.tolist(), m.tolist()))
    m_empty, m_model = by_size[0], by_size[n]
    f = np.array([faithfulness(by_size[int(s)], m_empty, m_model) for s in sizes])
    return FaithfulnessCurve(tuple(float(k) for k in ks), sizes, f, m_model, m_empty, ablation, n)
