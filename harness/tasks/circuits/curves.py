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

Cost: :class:`CurveEvaluator` measures the anchors ``m(model)`` and ``m(empty)`` once per split, then
each curve is *one* :meth:`~harness.models.patching.PatchingMixin.ablate_many` call (split only when the
logits it returns would exceed :data:`MAX_OUTPUT_ELEMENTS`) over its distinct sizes strictly between 0
and ``N``; ``C_k`` of size 0 or ``N`` takes the anchor itself, so ``f(100%) == 1`` and ``f`` of an empty
``C_k`` ``== 0`` hold exactly.
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


class CurveEvaluator:
    """Faithfulness curves of many score arrays on one split: what they share is computed once.

    On creation: the replacement ``z`` (:func:`replacement`) and the anchors ``m(model)`` / ``m(empty)`` (one
    :meth:`~harness.models.patching.PatchingMixin.ablate_many` call with the two sets).  Per curve: one call
    with the circuits of the sizes strictly between 0 and every component; a curve whose circuits (the
    nested top-``n`` sets) were measured before reuses those numbers.  A result never depends on which curves
    came before it: each circuit sequence is always measured in the same batch.
    """

    def __init__(self, model: HookedModel, split: D.Split, ablation: str = "resample") -> None:
        self.model, self.split, self.ablation = model, split, ablation
        self.rep = replacement(model, split, ablation)
        L, H = model.n_layers, model.n_heads
        none_all = torch.stack([torch.zeros(L, H, dtype=torch.bool), torch.ones(L, H, dtype=torch.bool)])
        self.m_model, self.m_empty = (float(v) for v in self._metrics(none_all))
        self._seen: dict[bytes, np.ndarray] = {}

    @torch.no_grad()
    def _metrics(self, ablated: torch.Tensor) -> np.ndarray:
        """Mean task metric over the split for each set of ablated heads ``[n_sets, L, H]``, float64 ``[n_sets]``."""
        ids = self.split.metric.token_ids
        width = len(ids) if ids is not None else self.model.vocab_size
        per_call = max(1, MAX_OUTPUT_ELEMENTS // (len(self.split) * width))
        ablated = ablated.to(self.model.device)
        parts = [self.split.metric.from_last(self.model.ablate_many(self.split.clean, group, self.rep, token_ids=ids))
                 for group in ablated.split(per_call)]
        return torch.cat(parts).to("cpu", torch.float64).numpy()

    def curve(self, scores: np.ndarray, ks: Sequence[float] = MIB_KS) -> FaithfulnessCurve:
        """The curve of the top-``k``% heads by ``scores`` ``[L, H]``.  ValueError when ``m(model) == m(empty)``."""
        scores = np.asarray(scores, dtype=np.float64)
        n = int(scores.size)
        sizes = faithfulness_curve_sizes(n, ks)
        inner = np.unique(sizes[(sizes > 0) & (sizes < n)])
        ablated = component_masks(scores, inner)
        key = inner.tobytes() + ablated.tobytes()
        if key not in self._seen:
            self._seen[key] = self._metrics(torch.as_tensor(ablated)) if inner.size else np.zeros(0)
        by_size = {0: self.m_empty, n: self.m_model, **dict(zip(inner.tolist(), self._seen[key].tolist()))}
        f = np.array([faithfulness(by_size[int(s)], self.m_empty, self.m_model) for s in sizes])
        return FaithfulnessCurve(tuple(float(k) for k in ks), sizes, f, self.m_model, self.m_empty, self.ablation, n)


def faithfulness_curve(model: HookedModel, split: D.Split, scores: np.ndarray, ablation: str = "resample",
                       ks: Sequence[float] = MIB_KS) -> FaithfulnessCurve:
    """The faithfulness curve of the top-``k``% heads by ``scores`` ``[L, H]`` on ``split`` (see the module
    doc); for many score arrays on one split, keep one :class:`CurveEvaluator`."""
    return CurveEvaluator(model, split, ablation).curve(scores, ks)
