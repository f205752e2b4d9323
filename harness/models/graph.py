"""The computational graph of a transformer at edge level: which component's output each component reads.

Built from the model's shape alone (layers, heads, whether blocks have MLPs), in the convention of
Hanna et al. 2024 (EAP-IG) and MIB (Mueller et al. 2025), with TransformerLens's split q / k / v inputs:

- **sources** (upstream nodes: what writes into the residual stream), in execution order:
  ``input`` (token + positional embedding), then per layer ``l`` its heads ``l.h`` (each head's
  ``z_h @ W_O[h]``, without the layer's output bias) and its MLP ``mlp{l}`` (when blocks have MLPs);
- **targets** (downstream inputs: what reads the residual stream), in execution order: per layer ``l``
  each head's query, key and value input ``l.h:q``, ``l.h:k``, ``l.h:v`` (head-major), then ``mlp{l}``
  (the MLP's input, the residual after the layer's attention); finally ``logits`` (the input of the
  final layer norm);
- **edges** ``u -> v`` for every source ``u`` computed before target ``v`` reads: heads of layer ``l``
  read ``input``, every earlier head and every earlier MLP; ``mlp{l}`` also reads the heads of its own
  layer; ``logits`` reads everything.  Names: ``0.5->1.3:q``, ``input->0.5:k``, ``1.3->mlp1``,
  ``mlp2->logits``.  Edges are ordered by target (execution order), then by source.

A target's input is the sum of its sources' outputs plus constants (biases), so "patching an edge"
``u -> v`` means: ``input_v = residual - out_u(clean) + out_u(corrupted)``, before ``v``'s layer norm.
The residual stream of the full model is recovered by keeping every edge.

Edge scores are flat float arrays ``[n_edges]`` in :attr:`EdgeGraph.edges` order; a keep-mask is a
bool array of the same shape.  :meth:`EdgeGraph.node_scores` derives node scores from edge scores:
a source's score is the sum of ``|score|`` over its outgoing edges.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Iterable, Sequence

import numpy as np

CHANNELS = ("q", "k", "v")


@dataclass(frozen=True)
class EdgeGraph:
    """The edge graph of a model with ``n_layers`` x ``n_heads`` heads and, if ``mlp``, one MLP per block."""

    n_layers: int
    n_heads: int
    mlp: bool = True
    sources: tuple[str, ...] = field(init=False, repr=False)
    targets: tuple[str, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if int(self.n_layers) < 1 or int(self.n_heads) < 1:
            raise ValueError(f"an edge graph needs n_layers, n_heads >= 1, got {self.n_layers}, {self.n_heads}")
        L, H = int(self.n_layers), int(self.n_heads)
        sources, targets = ["input"], []
        for layer in range(L):
            sources += [f"{layer}.{h}" for h in range(H)]
            targets += [f"{layer}.{h}:{c}" for h in range(H) for c in CHANNELS]
            if self.mlp:
                sources.append(f"mlp{layer}")
                targets.append(f"mlp{layer}")
        targets.append("logits")
        object.__setattr__(self, "sources", tuple(sources))
        object.__setattr__(self, "targets", tuple(targets))

    @classmethod
    def of(cls, model) -> "EdgeGraph":
        """The graph of a hooked model (``n_layers``, ``n_heads``, ``d_mlp``)."""
        return cls(int(model.n_layers), int(model.n_heads), bool(getattr(model, "d_mlp", 0)))

    # ------------------------------------------------------------ structure
    @cached_property
    def source_stage(self) -> np.ndarray:
        """int ``[n_sources]``: when each source is written (input -1; layer ``l``: heads ``2l``, MLP ``2l + 1``)."""
        return np.array([self._stage(name, source=True) for name in self.sources], dtype=np.int64)

    @cached_property
    def target_stage(self) -> np.ndarray:
        """int ``[n_targets]``: when each target reads (layer ``l``: head inputs ``2l``, MLP ``2l + 1``; logits ``2L``)."""
        return np.array([self._stage(name, source=False) for name in self.targets], dtype=np.int64)

    def _stage(self, name: str, source: bool) -> int:
        if name == "input":
            return -1
        if name == "logits":
            return 2 * self.n_layers
        if name.startswith("mlp"):
            return 2 * int(name[3:]) + 1
        return 2 * int(name.split(".")[0])

    @cached_property
    def target_owner(self) -> np.ndarray:
        """int ``[n_targets]``: the source index of the component that reads through each target (a head's q / k / v
        inputs: that head; an MLP's input: that MLP; the logits: -1)."""
        index = {name: i for i, name in enumerate(self.sources)}
        return np.array([index.get(t.split(":")[0], -1) for t in self.targets], dtype=np.int64)

    @cached_property
    def valid(self) -> np.ndarray:
        """Bool ``[n_sources, n_targets]``: True where ``source -> target`` is an edge."""
        return self.source_stage[:, None] < self.target_stage[None, :]

    @cached_property
    def edge_index(self) -> np.ndarray:
        """int ``[n_edges, 2]``: (source index, target index) of each edge, ordered by target then source."""
        tgt, src = np.nonzero(self.valid.T)
        return np.stack([src, tgt], axis=1)

    @property
    def n_sources(self) -> int:
        return len(self.sources)

    @property
    def n_targets(self) -> int:
        return len(self.targets)

    @property
    def n_edges(self) -> int:
        return int(self.edge_index.shape[0])

    @cached_property
    def edges(self) -> tuple[str, ...]:
        """Edge names ``"source->target"`` in order."""
        return tuple(f"{self.sources[u]}->{self.targets[v]}" for u, v in self.edge_index)

    @cached_property
    def _position(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.edges)}

    def index(self, edge: str) -> int:
        """The position of edge ``"u->v"``; KeyError (naming close edges) for an edge not in the graph."""
        try:
            return self._position[edge]
        except KeyError:
            import difflib

            close = difflib.get_close_matches(str(edge), self.edges, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise KeyError(f"{edge!r} is not an edge of this graph ({self.n_layers} layers x {self.n_heads} heads"
                           f"{', MLPs' if self.mlp else ', attention-only'}){hint}") from None

    def mask(self, edges: Iterable[str]) -> np.ndarray:
        """Bool ``[n_edges]`` with the named edges set."""
        out = np.zeros(self.n_edges, dtype=bool)
        for edge in edges:
            out[self.index(edge)] = True
        return out

    def names(self, mask: Sequence[bool] | np.ndarray) -> list[str]:
        """The names of the edges set in a bool ``[n_edges]`` mask."""
        m = np.asarray(mask, dtype=bool)
        if m.shape != (self.n_edges,):
            raise ValueError(f"an edge mask must have shape [{self.n_edges}], got {list(m.shape)}")
        return [self.edges[i] for i in np.nonzero(m)[0]]

    def matrix(self, edge_values: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """``[..., n_edges]`` -> ``[..., n_sources, n_targets]`` (non-edges get ``fill``)."""
        values = np.asarray(edge_values)
        out = np.full((*values.shape[:-1], self.n_sources, self.n_targets), fill, dtype=values.dtype)
        out[..., self.edge_index[:, 0], self.edge_index[:, 1]] = values
        return out

    # ------------------------------------------------------------ node scores
    def node_scores(self, edge_scores: np.ndarray) -> dict[str, np.ndarray]:
        """Node scores from edge scores: a source's score is ``sum |score|`` over its outgoing edges.

        Returns ``{"heads": [L, H], "mlps": [L] (zeros when attention-only), "input": [1]}`` (float64).
        """
        s = np.asarray(edge_scores, dtype=np.float64)
        if s.shape != (self.n_edges,):
            raise ValueError(f"edge scores must have shape [{self.n_edges}], got {list(s.shape)}")
        per_source = np.zeros(self.n_sources)
        np.add.at(per_source, self.edge_index[:, 0], np.abs(s))
        L, H = self.n_layers, self.n_heads
        stride = H + (1 if self.mlp else 0)
        body = per_source[1:].reshape(L, stride)
        mlps = body[:, H].copy() if self.mlp else np.zeros(L)
        return {"heads": body[:, :H].copy(), "mlps": mlps, "input": per_source[:1].copy()}

    def head_mask_of(self, edge_mask: np.ndarray) -> np.ndarray:
        """Bool ``[L, H]``: heads with at least one outgoing edge set in ``edge_mask`` ``[n_edges]``."""
        m = np.asarray(edge_mask, dtype=bool)
        return self.node_scores(m.astype(np.float64))["heads"] > 0
