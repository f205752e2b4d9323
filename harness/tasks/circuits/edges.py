"""Edge-level metrics of a circuits cell, for methods that score edges (``score_edges``).

- ``edge_roc_auc`` / ``edge_pr_auc``: the edge scores ``[n_edges]`` against the model's ground-truth edges
  (:mod:`harness.tasks.circuits.edge_truth`; recorded only where the model has them);
- ``edge_cpr`` / ``edge_cmd``: MIB's faithfulness curve (Mueller et al. 2025) at edge level on the held-out
  eval prompts: ``C_k`` = the top ``floor(k/100 * n_edges)`` edges by score (ties to the lower edge index),
  every other edge patched to its corrupted value (counterfactual ablation: the target reads the source's
  output from the paired corrupted prompt, :meth:`~harness.models.edges.EdgesMixin.run_with_edges`),
  ``f(k) = (m(C_k) - m(empty)) / (m(model) - m(empty))`` at k in :data:`~harness.metrics.circuits.MIB_KS`;
  ``m(model)`` keeps every edge (the clean run), ``m(empty)`` patches every edge (the corrupted run).  The
  areas are :func:`~harness.metrics.circuits.cpr` / :func:`~harness.metrics.circuits.cmd` (trapezoid over the
  fraction of edges), the same functions as the head-level ``cpr`` / ``cmd``.

Unlike MIB's evaluation, edges whose source or target is cut off from the logits are not pruned from
``C_k`` first: every one of the top-k edges is kept as scored.  Mean ablation is not offered at edge level.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from harness.data import circuits as D
from harness.metrics.circuits import MIB_KS, faithfulness, faithfulness_curve_sizes, pr_auc, roc_auc, top_k_masks
from harness.models.base import HookedModel
from harness.tasks.circuits.curves import FaithfulnessCurve
from harness.tasks.circuits.edge_truth import edge_ground_truth

#: Edge sets per run_with_edges call of a curve: one, so that every component none of whose inputs a small circuit
#: keeps is skipped (run_with_edges skips a component only where it is dead in every set of a call).
_SETS_PER_CALL = 1


class EdgeCurveEvaluator:
    """Edge faithfulness curves on one split: the clean and corrupted runs and the anchors are computed once."""

    def __init__(self, model: HookedModel, split: D.Split) -> None:
        self.model, self.split = model, split
        self.n_edges = model.edge_graph().n_edges
        self.clean, self.corrupted = model.edge_run(split.clean), model.edge_run(split.corrupted)
        anchors = torch.stack([torch.ones(self.n_edges, dtype=torch.bool), torch.zeros(self.n_edges, dtype=torch.bool)])
        self.m_model, self.m_empty = (float(v) for v in self._metrics(anchors))

    @torch.no_grad()
    def _metrics(self, keep: torch.Tensor) -> np.ndarray:
        ids = self.split.metric.token_ids
        keep = keep.to(self.model.device)
        parts = [self.split.metric.from_last(self.model.run_with_edges(self.clean, k, self.corrupted.sources,
                                                                       token_ids=ids))
                 for k in keep.split(_SETS_PER_CALL)]
        return torch.cat(parts).to("cpu", torch.float64).numpy()

    def curve(self, scores: np.ndarray, ks: Sequence[float] = MIB_KS) -> FaithfulnessCurve:
        """The curve of the top-``k``% edges by ``scores`` ``[n_edges]``.  ValueError when ``m(model) == m(empty)``."""
        scores = np.asarray(scores, dtype=np.float64)
        sizes = faithfulness_curve_sizes(self.n_edges, ks)
        inner = np.unique(sizes[(sizes > 0) & (sizes < self.n_edges)])
        measured = self._metrics(torch.as_tensor(top_k_masks(scores, inner))) if inner.size else np.zeros(0)
        by_size = {0: self.m_empty, self.n_edges: self.m_model, **dict(zip(inner.tolist(), measured.tolist()))}
        f = np.array([faithfulness(by_size[int(s)], self.m_empty, self.m_model) for s in sizes])
        return FaithfulnessCurve(tuple(float(k) for k in ks), sizes, f, self.m_model, self.m_empty, "resample",
                                 self.n_edges)


def edge_metrics(model: HookedModel, split: D.Split, scores: np.ndarray, cache: dict[str, Any]) -> dict[str, float]:
    """``edge_cpr`` and ``edge_cmd`` of ``scores`` on ``split``, and ``edge_roc_auc`` / ``edge_pr_auc`` where the
    model has ground-truth edges; ``cache`` (per task data) keeps the evaluator and the curves."""
    curve = edge_curve(model, split, scores, cache)
    out = {"edge_cpr": curve.cpr, "edge_cmd": curve.cmd}
    truth = edge_truth(model, cache)
    if truth is not None:
        out["edge_roc_auc"] = roc_auc(scores, truth)
        out["edge_pr_auc"] = pr_auc(scores, truth)
    return out


def edge_truth(model: HookedModel, cache: dict[str, Any]) -> np.ndarray | None:
    if "edge_truth" not in cache:
        found = edge_ground_truth(model)
        cache["edge_truth"] = None if found is None else found[0]
    return cache["edge_truth"]


def edge_curve(model: HookedModel, split: D.Split, scores: np.ndarray, cache: dict[str, Any]) -> FaithfulnessCurve:
    scores = np.asarray(scores, dtype=np.float64)
    key = f"edge-curve:{scores.tobytes().hex()}"
    if key not in cache:
        evaluator = cache.get("edge-evaluator") or EdgeCurveEvaluator(model, split)
        cache["edge-evaluator"] = evaluator
        cache[key] = evaluator.curve(scores)
    return cache[key]


def edge_artifacts(model: HookedModel, split: D.Split, scores: np.ndarray, cache: dict[str, Any]) -> dict[str, Any]:
    """The edge scores, the ground-truth edges (names) and the edge faithfulness curve, for the record."""
    curve = edge_curve(model, split, scores, cache).artifact()
    curve["components"] = "edges"
    truth = edge_truth(model, cache)
    graph = model.edge_graph()
    return {"edge_scores": np.asarray(scores, dtype=np.float64).tolist(),
            "edge_truth": None if truth is None else graph.names(truth),
            "edge_faithfulness_curve": curve}
