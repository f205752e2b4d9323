"""Edge-level circuit baselines: EAP, EAP-IG (inputs) and ACDC on the edges of the model's graph.

The graph is :class:`~harness.models.graph.EdgeGraph` (``model.edge_graph()``): sources ``input``,
heads ``l.h`` and MLPs ``mlp{l}``; targets each head's ``q`` / ``k`` / ``v`` input, each MLP's input and
the ``logits``.  Each method returns one score per edge (:class:`~harness.protocols.edges.EdgeCircuitMethod`),
and its head scores are derived from them: a head's score is the sum of ``|edge score|`` over its
outgoing edges.  All need a model with split q / k / v inputs (the harness's GPT); on others they raise
a ``HarnessError`` naming the supported models.

Signs as in :mod:`harness.baselines.circuits`: the signed effect of an edge estimates
``m(clean) - m(clean with the edge patched from the corrupted run)`` (positive = the edge helps the
task); by default methods rank edges by its magnitude (``absolute=True``).
"""

from __future__ import annotations

import numpy as np
import torch

from harness.core.registry import register_method
from harness.models.base import HookedModel
from harness.models.graph import EdgeGraph
from harness.protocols.circuits import CircuitData
from harness.protocols.edges import EdgeCircuitMethod

#: Most edge sets ACDC evaluates in one speculative batch (see :func:`acdc_edges`).
ACDC_BATCH = 64


def edge_attribution(graph: EdgeGraph, diff: torch.Tensor, grads: torch.Tensor) -> np.ndarray:
    """``sum_{batch, pos, d} diff_u * grads_v`` for every edge ``u -> v``, float64 ``[n_edges]``.

    ``diff``: source outputs ``[b, s, n_sources, d]`` (clean minus corrupted); ``grads``: ``d metric / d
    input_v`` ``[b, s, n_targets, d]``."""
    per_pair = torch.einsum("bsud,bsvd->uv", diff.to(grads.dtype), grads)
    src, tgt = (torch.as_tensor(graph.edge_index[:, i]) for i in (0, 1))
    return per_pair.to("cpu", torch.float64)[src, tgt].numpy()


def edge_eap_scores(model: HookedModel, data: CircuitData) -> np.ndarray:
    """Signed edge attribution patching (Syed et al. 2023), ``[n_edges]`` float64.

    ``(out_u(clean) - out_u(corrupted)) . d metric / d input_v`` at the clean run, summed over prompts and
    positions: the first-order estimate of ``m(clean) - m(edge u -> v patched)``.  One forward + backward
    on the clean prompts (every target's gradient at once) and one forward on the corrupted ones."""
    clean, grads = model.edge_gradients(data.clean, data.metric.from_logits)
    corrupted = model.edge_run(data.corrupted)
    return edge_attribution(model.edge_graph(), clean.sources - corrupted.sources, grads)


def edge_eap_ig_scores(model: HookedModel, data: CircuitData, steps: int = 5) -> np.ndarray:
    """Signed EAP-IG on edges, MIB's recommended "inputs" variant (Hanna et al. 2024), ``[n_edges]`` float64.

    ``(out_u(clean) - out_u(corrupted)) . (1/steps) sum_{k=1..steps} d metric / d input_v`` where the
    ``k``-th gradient is taken on a run from the interpolated input embedding ``e_corr + (k/steps)(e_clean -
    e_corr)`` (token + positional embedding); ``k = steps`` is the clean run, so ``steps=1`` is EAP.
    ``steps`` forward + backward passes and one forward on the corrupted prompts."""
    steps = int(steps)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    corrupted = model.edge_run(data.corrupted)
    clean, grad_sum = model.edge_gradients(data.clean, data.metric.from_logits)  # alpha = 1
    for k in range(1, steps):
        embed = corrupted.embed + (k / steps) * (clean.embed - corrupted.embed)
        grad_sum += model.edge_gradients(data.clean, data.metric.from_logits, embed=embed)[1]
    return edge_attribution(model.edge_graph(), clean.sources - corrupted.sources, grad_sum / steps)


@torch.no_grad()
def acdc_edges(model: HookedModel, data: CircuitData, tau: float, batch: int = ACDC_BATCH):
    """ACDC (Conmy et al. 2023) on edges: ``(scores [n_edges], kept bool [n_edges])``.

    Start with every edge.  Visit targets from the logits back to the first layer's q / k / v inputs and,
    for each, its incoming edges from the latest source to ``input``.  Patch the edge from the corrupted
    run *on top of* the edges already removed and measure ``effect = |m(current) - m(current with the edge
    also patched)| / |m(clean) - m(corrupted)|`` (the task metric, as the node-level ``acdc``; a gap below
    1e-12 normalises by 1); remove it for good when ``effect < tau``.  An edge's score is its ``effect`` when
    visited.  Exactly this sequential procedure, evaluated speculatively: the next edges are patched
    cumulatively (as if each were removed) in one :meth:`~HookedModel.run_with_edges` call, and the walk
    restarts after the first edge that is kept; the number of edges per call doubles while edges are
    removed (up to ``batch``) and falls back to 1 after an edge is kept."""
    graph = model.edge_graph()
    metric = data.metric
    ids = metric.token_ids
    clean = model.edge_run(data.clean)
    corrupted = model.edge_run(data.corrupted)
    m_clean = float(metric.from_last(model.unembed(clean.resid_final[:, -1], ids)))
    m_corr = float(metric.from_last(model.unembed(corrupted.resid_final[:, -1], ids)))
    gap = abs(m_clean - m_corr)
    gap = gap if gap > 1e-12 else 1.0
    order = np.arange(graph.n_edges)[::-1]  # targets last to first, sources latest first
    keep = torch.ones(graph.n_edges, dtype=torch.bool, device=model.device)
    scores = np.zeros(graph.n_edges)
    m_cur, i, size = m_clean, 0, 1
    while i < len(order):
        todo = torch.as_tensor(order[i : i + size].copy(), device=model.device)
        sets = keep.repeat(len(todo), 1)
        tri = torch.ones(len(todo), len(todo), dtype=torch.bool, device=model.device).tril()
        sets[:, todo] = sets[:, todo] & ~tri  # set j also removes todo[0..j]
        m_new = metric.from_last(model.run_with_edges(clean, sets, corrupted.sources, token_ids=ids)).tolist()
        size = min(2 * size, batch)  # grows while edges are removed, back to 1 after one is kept
        for j, edge in enumerate(todo.tolist()):
            i += 1
            effect = abs(m_cur - m_new[j]) / gap
            scores[edge] = effect
            if effect >= tau:
                size = 1
                break  # kept: the later sets assumed it removed
            keep[edge], m_cur = False, m_new[j]
    return scores, keep.cpu().numpy()


# ------------------------------------------------------------------- methods
class _EdgeAttribution(EdgeCircuitMethod):
    """An attribution method on edges: ``signed(model, data)``, ranked by magnitude unless ``absolute`` is False."""

    absolute: bool = True

    def signed(self, model: HookedModel, data: CircuitData) -> np.ndarray:
        raise NotImplementedError

    def compute_edges(self, model: HookedModel, data: CircuitData) -> np.ndarray:
        s = self.signed(model, data)
        return np.abs(s) if self.absolute else s


@register_method(
    "eap-edges",
    version="1",
    baseline=True,
    description="edge attribution patching (Syed, Rager & Conmy 2023, arXiv:2310.10348): |sum (out_u clean - "
    "out_u corrupt) . dM/d input_v| per edge u -> v (q/k/v, MLP, logits; 2 forward + 1 backward); head score = "
    "sum of |scores| of its outgoing edges",
)
class EAPEdges(_EdgeAttribution):
    """Edge attribution patching (:func:`edge_eap_scores`); ``absolute`` as in the node-level ``eap``."""

    def __init__(self, absolute: bool = True):
        self.absolute = absolute

    def signed(self, model: HookedModel, data: CircuitData) -> np.ndarray:
        return edge_eap_scores(model, data)


@register_method(
    "eap-ig-edges",
    version="1",
    baseline=True,
    description="EAP-IG on edges, inputs variant (Hanna, Pezzelle & Belinkov 2024, arXiv:2403.17806; MIB's "
    "recommended method): gradients averaged over input embeddings interpolated from corrupted to clean, "
    "steps=5; head score = sum of |scores| of its outgoing edges",
)
class EAPIGEdges(_EdgeAttribution):
    """EAP-IG (inputs) on edges (:func:`edge_eap_ig_scores`), as many steps as the node-level ``eap-ig``."""

    def __init__(self, steps: int = 5, absolute: bool = True):
        self.steps = steps
        self.absolute = absolute

    def signed(self, model: HookedModel, data: CircuitData) -> np.ndarray:
        return edge_eap_ig_scores(model, data, self.steps)


@register_method(
    "acdc-edges",
    version="1",
    baseline=True,
    description="ACDC at edge level, its native form (Conmy et al. 2023, arXiv:2304.14997): targets from the "
    "logits back, each incoming edge patched from the corrupted run on top of the removed ones and removed "
    "for good if the normalised metric change stays below tau; own circuit = the kept edges",
)
class ACDCEdges(EdgeCircuitMethod):
    """ACDC on edges (:func:`acdc_edges`); its selected heads are those with a kept outgoing edge."""

    def __init__(self, tau: float = 0.02):
        self.tau = tau

    def compute_edges(self, model: HookedModel, data: CircuitData) -> np.ndarray:
        scores, kept = acdc_edges(model, data, float(self.tau))
        self._edge_selection = kept
        return scores
