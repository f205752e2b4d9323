"""Edge scores in the circuits protocol: ``score_edges(model, data) -> array[n_edges]``, optional.

A circuit method may score the edges of the model's computational graph
(:class:`~harness.models.graph.EdgeGraph`: ``input`` / head / MLP outputs -> head q / k / v inputs, MLP
inputs, logits; ``model.edge_graph()``) besides the heads.  The task then records edge-level metrics
(edge ROC-AUC / PR-AUC against an edge ground truth, MIB's edge faithfulness curve); a method without
``score_edges`` records none of them.

:class:`EdgeCircuitMethod` is the base of methods that score edges only: it implements
:meth:`~harness.protocols.circuits.CircuitMethod.score_heads` from the edge scores by
:meth:`~harness.models.graph.EdgeGraph.node_scores` (a head's score is the sum of ``|score|`` over its
outgoing edges; an MLP's likewise, :meth:`EdgeCircuitMethod.score_mlps`), computing the edges once per task data however often either is called.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from harness.models.base import HookedModel
from harness.models.graph import EdgeGraph
from harness.protocols.circuits import CircuitData, CircuitMethod, validate_vector


def has_edge_scores(method: Any) -> bool:
    """Whether ``method`` speaks the edge half of the protocol (a callable ``score_edges``)."""
    return callable(getattr(method, "score_edges", None))


class EdgeCircuitMethod(CircuitMethod):
    """A circuit method that scores edges; its head scores are derived from them (see the module docstring).

    Subclasses implement :meth:`compute_edges` (``[n_edges]`` float, higher = more likely in the circuit, in
    ``model.edge_graph().edges`` order) and may set :attr:`_edge_selection` there (a bool ``[n_edges]``: the
    method's own edge circuit), from which :meth:`select_heads` takes the heads with a kept outgoing edge.
    """

    def compute_edges(self, model: HookedModel, data: CircuitData) -> np.ndarray:
        raise NotImplementedError

    def _edges(self, model: HookedModel, data: CircuitData) -> np.ndarray:
        cached = getattr(self, "_edge_cache", None)
        if cached is None or cached[0] is not data:  # once per task data (held, so identity cannot be reused)
            self._edge_selection = None
            scores = np.asarray(self.compute_edges(model, data), dtype=np.float64)
            self._edge_cache = (data, scores, self._edge_selection)
        return self._edge_cache[1]

    def score_edges(self, model: HookedModel, data: CircuitData) -> np.ndarray:
        return self._edges(model, data).copy()

    def score_heads(self, model: HookedModel, data: CircuitData) -> np.ndarray:
        return EdgeGraph.of(model).node_scores(self._edges(model, data))["heads"]

    def score_mlps(self, model: HookedModel, data: CircuitData) -> np.ndarray:
        """Each MLP's score: the sum of ``|score|`` over its outgoing edges, as for a head."""
        return EdgeGraph.of(model).node_scores(self._edges(model, data))["mlps"]

    def select_edges(self, model: HookedModel, data: CircuitData) -> np.ndarray | None:
        """The method's own edge circuit (bool ``[n_edges]``), or None."""
        self._edges(model, data)
        selection = self._edge_cache[2]
        return None if selection is None else selection.copy()

    def select_heads(self, model: HookedModel, data: CircuitData, scores: np.ndarray) -> np.ndarray | None:
        edges = self.select_edges(model, data)
        return None if edges is None else EdgeGraph.of(model).head_mask_of(edges)


def validate_edge_scores(scores: Any, n_edges: int, method: str = "method") -> np.ndarray:
    """Edge scores must be a finite real array ``[n_edges]``; returns float64."""
    return validate_vector(scores, n_edges, method, "score_edges", "one score per edge of model.edge_graph()",
                           "edge", "edges")
