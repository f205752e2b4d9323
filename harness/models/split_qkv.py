"""The harness GPT's forward with split q / k / v inputs (TransformerLens's ``use_split_qkv_input``).

In the plain forward every head of a layer reads the same residual stream through one fused
``qkv`` projection.  Here each head's query, key and value input is its own tensor (``[N, s, H, 3,
d_model]``, then the layer's first layer norm, then that head's rows of ``W_Q`` / ``W_K`` / ``W_V``), and
so is each MLP's input and the final residual, so that a method can

- add a zero *probe* to any target's input and read the gradient of a metric with respect to it
  (edge attribution: one backward gives every target's gradient), and
- *patch an edge* ``u -> v``: add ``out_u(patched) - out_u(current)`` to ``v``'s input only.

:class:`SplitQKVGPT` runs the blocks of a :class:`~harness.models.gpt.GPT` with the module's own
weights and submodules (its layer norms, its MLPs, its output projection), layer by layer from any
layer's residual (so a run whose first intervention is in layer ``l`` starts there).  A layer whose
heads get no intervention runs the model's own fused attention, so with nothing patched a run is the
plain forward (up to the rounding of the split q/k/v matmuls in layers that carry a probe).

Sources and targets are those of :class:`~harness.models.graph.EdgeGraph` (heads' outputs
``z_h @ W_O[h]`` without the bias ``b_O``, which is the same in every run).
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F

from harness.models.graph import EdgeGraph

#: ``intervene(targets, sources, position) -> delta``: ``targets`` a slice of target indices (one stage: a
#: layer's head inputs ``[3H]``, an MLP ``[1]`` or the logits ``[1]``), ``sources`` the current run's outputs
#: of every source before that stage (a list, in source order), ``position`` None, or the one position those
#: targets are read at in position mode (the last layer's MLP and the logits: ``sources`` written before the
#: last layer still hold every position); returns what to add to the targets' inputs, ``[N, s, n_v,
#: d_model]`` (``s = 1`` at a ``position``), or None (nothing); for a layer's head inputs also ``(active,
#: delta)``: a LongTensor of the inputs that change (offsets in ``targets``) and their ``[N, s, n_a, d_model]``.
Intervene = Callable[[slice, list, Optional[int]], Union[None, torch.Tensor, tuple]]


class SplitQKVGPT:
    """Split-input runs of a :class:`~harness.models.gpt.GPT` (see the module docstring)."""

    def __init__(self, gpt, graph: EdgeGraph):
        cfg = gpt.config
        if (graph.n_layers, graph.n_heads, graph.mlp) != (cfg.n_layers, cfg.n_heads, bool(cfg.d_mlp)):
            raise ValueError("the edge graph does not match the model's shape")
        self.gpt, self.graph = gpt, graph
        self.H, self.dh, self.d = cfg.n_heads, cfg.d_head, cfg.d_model
        self.t_stride = 3 * self.H + int(graph.mlp)  # targets per layer
        self.s_stride = self.H + int(graph.mlp)  # sources per layer

    # ------------------------------------------------------------- indices
    def head_targets(self, layer: int) -> slice:
        start = layer * self.t_stride
        return slice(start, start + 3 * self.H)

    def mlp_target(self, layer: int) -> slice:
        start = layer * self.t_stride + 3 * self.H
        return slice(start, start + 1)

    @property
    def logits_target(self) -> slice:
        n = self.graph.n_targets
        return slice(n - 1, n)

    def sources_before(self, layer: int) -> int:
        """Number of sources written before layer ``layer``'s heads read (a prefix of the source order)."""
        return 1 + layer * self.s_stride

    # ------------------------------------------------------------- the run
    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.gpt.embed_tokens(tokens)

    def run(self, resid: torch.Tensor, sources: list[torch.Tensor], start_layer: int,
            intervene: Intervene | None = None, resid_pre: list | None = None,
            position: int | None = None, replace: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
        """Run from the residual ``resid`` ``[N, s, d]`` entering layer ``start_layer`` (``n_layers``: only the
        logits target) to the final residual (the input of the final layer norm, after the logits target's
        intervention), ``[N, s, d]``.

        ``sources``: the outputs of the sources written before ``start_layer`` (a list of ``[N, s, d]``, or of
        ``[b, s, d]`` that ``intervene`` knows how to read; extended in place with every later source's
        output); ``resid_pre``: a list that receives the residual entering each layer from ``start_layer`` on.
        ``position`` (position mode, as in the plain forward): only that query position of the last layer is
        computed, so its sources, the MLP and logits targets and the returned residual have ``s = 1``
        (``intervene`` is then called with ``position`` for those targets).  ``replace``: source index ->
        output ``[N, s, d]`` to use instead of the computed one (a component whose every input is patched
        writes what the patch run wrote: the caller then leaves its inputs out of ``intervene``)."""
        if len(sources) != self.sources_before(start_layer):
            raise ValueError(f"a run from layer {start_layer} needs the {self.sources_before(start_layer)} earlier "
                             f"sources, got {len(sources)}")
        L = self.graph.n_layers
        for layer in range(start_layer, L):
            if resid_pre is not None:
                resid_pre.append(resid)
            resid = self._block(layer, resid, sources, intervene, position if layer == L - 1 else None, replace or {})
        if position is not None and start_layer == L:
            resid = resid[:, position : position + 1]
        delta = None if intervene is None else intervene(self.logits_target, sources, position)
        return resid if delta is None else resid + delta[:, :, 0]

    def _block(self, layer: int, resid: torch.Tensor, sources: list[torch.Tensor], intervene: Intervene | None,
               position: int | None, replace: dict[int, torch.Tensor]):
        block = self.gpt.blocks[layer]
        first = self.sources_before(layer)
        at = slice(None) if position is None else slice(position, position + 1)
        delta = None if intervene is None else intervene(self.head_targets(layer), sources, None)
        if delta is None:
            z = block.attn.heads(block.ln1(resid), position)  # the model's own fused attention
        else:
            z = self._split_heads(block, resid, delta, position)
        W_O = block.attn.out.weight.T.reshape(self.H, self.dh, self.d)
        outs = list(torch.einsum("nshe,hem->nshm", z, W_O.to(z.dtype)).unbind(dim=2))
        mid = resid[:, at] + block.attn.out(z.flatten(2))
        for h in range(self.H):
            if first + h in replace:
                new = replace[first + h][:, at]
                mid, outs[h] = mid + (new - outs[h]), new
        sources.extend(outs)
        if block.mlp is None:
            return mid
        if first + self.H in replace:
            out = replace[first + self.H][:, at]
        else:
            delta = None if intervene is None else intervene(self.mlp_target(layer), sources, position)
            out = block.mlp(block.ln2(mid if delta is None else mid + delta[:, :, 0]))
        sources.append(out)
        return mid + out

    def _split_heads(self, block, resid: torch.Tensor, delta, position: int | None) -> torch.Tensor:
        """``z`` ``[N, s, H, d_head]`` (``s = 1`` with ``position``) of a layer whose head inputs are ``resid +
        delta``: ``delta`` ``[N, s, 3H, d]`` (head-major, then q, k, v), or ``(active, delta)`` with ``delta``
        ``[N, s, n_a, d]`` for the ``active`` inputs only (the others read ``resid`` through the fused ``qkv``), or
        ``(rows, shared, shared_delta, varying, varying_delta)`` when the ``N`` rows are ``N / rows`` repeats of the
        first ``rows`` (sets resumed from one residual): the ``shared`` inputs are the same in every repeat
        (``shared_delta`` ``[rows, s, n_1, d]``, computed once), the ``varying`` ones are not (``[N, s, n_2, d]``)."""
        N, s, d = resid.shape
        W = block.attn.qkv.weight.reshape(3, self.H, self.dh, d)
        b = block.attn.qkv.bias.reshape(3, self.H, self.dh)
        if isinstance(delta, torch.Tensor):  # every input split
            h = block.ln1(resid[:, :, None, None, :] + delta.reshape(N, s, self.H, 3, d))
            qkv = torch.einsum("nshcd,ched->nsche", h, W.to(h.dtype)) + b.to(h.dtype)  # [N, s, 3, H, dh]
        elif len(delta) == 2:
            active, part = delta
            qkv = block.attn.qkv(block.ln1(resid)).reshape(N, s, 3, self.H, self.dh)
            self._set_inputs(block, qkv, active, resid[:, :, None, :] + part, W, b)
        else:
            rows, shared, shared_delta, varying, varying_delta = delta
            qkv = block.attn.qkv(block.ln1(resid[:rows])).reshape(rows, s, 3, self.H, self.dh)
            self._set_inputs(block, qkv, shared, resid[:rows, :, None, :] + shared_delta, W, b)
            qkv = qkv.repeat(N // rows, 1, 1, 1, 1)
            self._set_inputs(block, qkv, varying, resid[:, :, None, :] + varying_delta, W, b)
        q, k, v = (qkv[:, :, c].transpose(1, 2) for c in range(3))  # each [N, H, s, dh]
        return self._attend(q, k, v, position)

    @staticmethod
    def _set_inputs(block, qkv: torch.Tensor, idx: torch.Tensor, x: torch.Tensor, W: torch.Tensor, b: torch.Tensor):
        """Write into ``qkv`` ``[*, s, 3, H, dh]`` the q / k / v of the head inputs ``idx`` (offsets in the layer's head
        targets: head ``idx // 3``, channel ``idx % 3``) read from ``x`` ``[*, s, len(idx), d]``."""
        if idx.numel() == 0:
            return
        head, chan = torch.div(idx, 3, rounding_mode="floor"), idx % 3
        h = block.ln1(x)
        qkv[:, :, chan, head] = torch.einsum("nsad,aed->nsae", h, W[chan, head].to(h.dtype)) + b[chan, head].to(h.dtype)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, position: int | None) -> torch.Tensor:
        if position is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)
        p = position  # one query: it attends to every key up to and including itself
        z = F.scaled_dot_product_attention(q[:, :, p : p + 1], k[:, :, : p + 1], v[:, :, : p + 1])
        return z.transpose(1, 2)
