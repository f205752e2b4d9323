"""Edge-level runs of a hooked model: source outputs, gradients at every edge target, edge patching.

The graph is :class:`~harness.models.graph.EdgeGraph` (sources: the input embedding, each head's output
``z_h @ W_O[h]``, each MLP's output; targets: each head's q / k / v input, each MLP's input, the logits).
Everything here needs a forward in which every target's input is its own tensor (split q / k / v
inputs); an adapter provides it through ``_split_qkv()``.  The harness's GPT does
(:class:`~harness.models.split_qkv.SplitQKVGPT`); other adapters raise a :class:`HarnessError` saying
so: a Hugging Face model's attention computes q, k and v from one shared input inside its own forward.

- :meth:`EdgesMixin.edge_run`: one forward; every source's output ``[b, s, n_sources, d_model]`` and the
  residual entering each layer (an :class:`EdgeRun`, the cache patching resumes from);
- :meth:`EdgesMixin.edge_gradients`: one forward and one backward; ``d metric / d input_v`` for every
  target ``v`` at once, ``[b, s, n_targets, d_model]`` (a zero probe added to each target's input);
- :meth:`EdgesMixin.run_with_edges`: logits at one position for many edge sets at once: every edge *not*
  kept is patched, ``input_v = residual - out_u(current run) + out_u(patch run)`` summed over the removed
  edges into ``v`` (MIB's and ACDC's semantics: a kept edge carries its source's output in the current,
  patched run).  A set whose first removed edge reads at layer ``l`` resumes from the clean run's residual
  there; sets sharing a start layer are stacked along the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from harness.errors import HarnessError
from harness.models.forward import describe
from harness.models.graph import EdgeGraph

#: What a model without split q / k / v inputs says when asked for edges.
NO_SPLIT_QKV = ("edge-level scores need a model with split q/k/v inputs; supported: the harness's GPT models "
                "(planted and embedded models, harness GPT directories)")
#: Largest stacked tensor of one edge-patching chunk (sets x batch x seq x sources or head inputs x d_model):
#: 64 MiB in float32.
_CHUNK_ELEMENTS = 2**24


@dataclass
class EdgeRun:
    """One run's source outputs ``[b, s, n_sources, d_model]``, the residual entering each layer (a list of
    ``[b, s, d_model]``) and the final residual (the input of the final layer norm), all detached."""

    sources: torch.Tensor
    resid_pre: list[torch.Tensor]
    resid_final: torch.Tensor

    @property
    def embed(self) -> torch.Tensor:
        """The ``input`` source: token + positional embedding, ``[b, s, d_model]``."""
        return self.sources[:, :, 0]


class EdgesMixin:
    """Edge-level runs (see the module docstring).  Needs :class:`~harness.models.forward.HookedForward`."""

    def edge_graph(self) -> EdgeGraph:
        """The model's edge graph (from its shape; every adapter has one, not every adapter can run it)."""
        return EdgeGraph.of(self)

    def _split_qkv(self):
        """The adapter's split-input forward (:class:`~harness.models.split_qkv.SplitQKVGPT`); none by default."""
        raise HarnessError(f"{NO_SPLIT_QKV}; got {type(self).__name__} ({getattr(self, 'model_id', '?')})")

    def _start(self, tokens: torch.Tensor, embed: torch.Tensor | None):
        split = self._split_qkv()
        tokens = self._check_tokens(tokens)
        if embed is None:
            return split, split.embed(tokens)
        want = (*tokens.shape, self.d_model)
        if not isinstance(embed, torch.Tensor) or tuple(embed.shape) != want:
            raise ValueError(f"embed must be a tensor of shape {list(want)}, got {describe(embed)}")
        return split, embed.to(self.device, self.dtype)

    @torch.no_grad()
    def edge_run(self, tokens: torch.Tensor, embed: torch.Tensor | None = None) -> EdgeRun:
        """One forward of ``tokens`` ``[b, s]`` (from ``embed`` ``[b, s, d_model]`` instead of the token embedding
        when given); nothing patched, so it is the plain forward."""
        split, x0 = self._start(tokens, embed)
        sources, resid_pre = [x0], []
        final = split.run(x0, sources, 0, None, resid_pre)
        return EdgeRun(torch.stack(sources, dim=2), resid_pre, final)

    def edge_gradients(self, tokens: torch.Tensor, metric_fn: Callable[[torch.Tensor], torch.Tensor],
                       embed: torch.Tensor | None = None) -> tuple[EdgeRun, torch.Tensor]:
        """``(run, d metric / d input_v)``: the run's :class:`EdgeRun` and the gradient of ``metric_fn(logits
        [b, s, vocab])`` (a scalar) with respect to every target's input, ``[b, s, n_targets, d_model]``.

        One forward (with every head's q / k / v input split) and one backward; ``embed`` as in
        :meth:`edge_run` (EAP-IG evaluates gradients on interpolated embeddings).  No parameter gradients."""
        split, x0 = self._start(tokens, embed)
        b, s = x0.shape[:2]
        with torch.enable_grad():
            probe = torch.zeros(b, s, split.graph.n_targets, self.d_model, dtype=x0.dtype, device=x0.device,
                                requires_grad=True)
            sources, resid_pre = [x0.detach()], []
            final = split.run(sources[0], sources, 0, lambda targets, _, __: probe[:, :, targets], resid_pre)
            metric = metric_fn(self.unembed(final))
            if not isinstance(metric, torch.Tensor) or metric.numel() != 1:
                raise ValueError(f"metric_fn must return a scalar tensor, got {describe(metric)}")
            (grad,) = torch.autograd.grad(metric.reshape(()), probe)
        run = EdgeRun(torch.stack(sources, dim=2).detach(), [r.detach() for r in resid_pre], final.detach())
        return run, grad

    @torch.no_grad()
    def run_with_edges(self, clean: EdgeRun, keep: torch.Tensor, patch: torch.Tensor, position: int = -1,
                       token_ids: torch.Tensor | Sequence[int] | None = None) -> torch.Tensor:
        """Logits at ``position`` ``[n_sets, b, len(token_ids) or vocab]`` with every edge *not* in ``keep``
        (bool ``[n_sets, n_edges]``) patched from ``patch`` (source outputs ``[b, s, n_sources, d_model]`` of the
        patch run: a corrupted run's :attr:`EdgeRun.sources`, row-paired with the clean prompts).

        ``clean`` is the clean prompts' :class:`EdgeRun`; a set resumes from it at the first layer one of its
        removed edges reads.  Keeping every edge gives the clean run's logits, keeping none the patch run's
        (its input embedding included).  Runs without autograd."""
        split = self._split_qkv()
        graph = split.graph
        b, s = clean.sources.shape[:2]
        keep = torch.as_tensor(keep, device=self.device)
        if keep.dtype != torch.bool or keep.dim() != 2 or keep.shape[1] != graph.n_edges:
            raise ValueError(f"keep must be a BoolTensor [n_sets, {graph.n_edges}], got {describe(keep)}")
        if tuple(patch.shape) != tuple(clean.sources.shape):
            raise ValueError(f"patch must have the clean run's shape {list(clean.sources.shape)}, got {describe(patch)}")
        position = position % s
        token_ids = self._check_token_ids(token_ids)
        patch = patch.to(self.device, clean.sources.dtype)
        src, tgt = (torch.as_tensor(graph.edge_index[:, i], device=self.device) for i in (0, 1))
        coef = torch.zeros(keep.shape[0], graph.n_sources, graph.n_targets, dtype=patch.dtype, device=self.device)
        coef[:, src, tgt] = (~keep).to(patch.dtype)
        stage = torch.as_tensor(graph.target_stage, device=self.device)[tgt]
        first = torch.where(~keep, stage, 2 * graph.n_layers + 1).min(dim=1).values  # [n_sets]
        start = torch.div(first, 2, rounding_mode="floor")
        clean_out = self.unembed(clean.resid_final[:, position], token_ids)
        out = clean_out.new_empty((keep.shape[0], b, clean_out.shape[-1]))
        out[first > 2 * graph.n_layers] = clean_out
        dead = _dead_components(graph, keep)
        widest = max(graph.n_sources, 3 * self.n_heads)  # a stage's sources or a layer's head inputs
        per_chunk = max(1, _CHUNK_ELEMENTS // (b * s * widest * self.d_model))
        for layer in range(graph.n_layers + 1):
            idx = ((start == layer) & (first <= 2 * graph.n_layers)).nonzero().flatten()
            for chunk in (idx.split(per_chunk) if idx.numel() else ()):
                final = self._patched_final(split, clean, coef[chunk], patch, layer, position, dead[chunk].all(dim=0))
                out[chunk] = self.unembed(final[:, 0], token_ids).reshape(len(chunk), b, -1)
        return out

    def _patched_final(self, split, clean: EdgeRun, coef: torch.Tensor, patch: torch.Tensor, layer: int,
                       position: int, dead: torch.Tensor) -> torch.Tensor:
        """The final residual at ``position`` ``[n * b, 1, d]`` of ``n`` edge sets (``coef`` ``[n, n_sources,
        n_targets]``: 1 where an edge is patched), run from the clean residual entering ``layer``.

        The sources written before ``layer`` are the clean run's in every set, so what their patched edges add
        is computed once for the edges all sets patch, plus the few each set patches alone (ACDC's sets differ
        in one edge); later sources differ per set and are mixed per set.  A component ``dead`` in every set (all
        its inputs patched) writes the patch run's output and is not computed (MIB's small circuits leave most
        components so)."""
        n = coef.shape[0]
        b, s, _, d = clean.sources.shape
        prefix = split.sources_before(layer)
        resid = clean.resid_pre[layer] if layer < split.graph.n_layers else clean.resid_final
        shared = list(clean.sources[:, :, :prefix].unbind(dim=2))
        diff0 = patch[:, :, :prefix] - clean.sources[:, :, :prefix]  # [b, s, u0, d]
        owner = torch.as_tensor(split.graph.target_owner, device=dead.device)
        replace = {u: patch[:, :, u].repeat(n, 1, 1) for u in dead.nonzero().flatten().tolist() if u >= prefix}

        def intervene(targets: slice, current: list[torch.Tensor], pos: int | None):
            c = coef[:, : len(current), targets]  # [n, n_u, n_v]
            needed = ~dead[owner[targets].clamp(min=0)] | (owner[targets] < 0)  # a dead component's inputs are unused
            active = (c.any(dim=1).any(dim=0) & needed).nonzero().flatten()
            if active.numel() == 0:
                return None
            c = c[:, :, active]
            if len(current) == prefix and pos is None and c.shape[2] > 1:  # the start layer's heads: shared rows
                return _start_layer_delta(diff0, c, active, b)
            at = slice(None) if pos is None else slice(pos, pos + 1)
            delta = _mix(diff0[:, at], c[:, :prefix])  # [n, b, s', n_a, d]
            if len(current) > prefix and bool(c[:, prefix:].any()):
                cur = torch.stack([t[:, at] if t.shape[1] > 1 else t for t in current[prefix:]], dim=2)
                diff = patch[None, :, at, prefix : len(current)] - cur.reshape(n, b, *cur.shape[1:])
                delta += _mix(diff, c[:, prefix:])
            delta = delta.reshape(n * b, *delta.shape[2:])
            return delta if active.numel() == targets.stop - targets.start else (active, delta)

        return split.run(resid.repeat(n, 1, 1), shared, layer, intervene, position=position, replace=replace)


def _start_layer_delta(diff: torch.Tensor, c: torch.Tensor, active: torch.Tensor, b: int) -> tuple:
    """The start layer's head-input deltas in :meth:`~harness.models.split_qkv.SplitQKVGPT._split_heads`'s
    repeated-rows form: every set reads the same clean sources (``diff`` ``[b, s, u, d]``), so an input whose
    patched edges (``c`` ``[n, u, n_a]``) are the same in all sets is computed once."""
    n = c.shape[0]
    varying = (c != c[:1]).any(dim=1).any(dim=0)  # [n_a]
    shared_delta = torch.matmul(c[0][:, ~varying].T, diff)  # [b, s, n_1, d]
    varying_delta = _mix(diff, c[:, :, varying])  # [n, b, s, n_2, d]
    varying_delta = varying_delta.reshape(n * b, *varying_delta.shape[2:])
    return b, active[~varying], shared_delta, active[varying], varying_delta


def _dead_components(graph: EdgeGraph, keep: torch.Tensor) -> torch.Tensor:
    """Bool ``[n_sets, n_sources]``: components (heads, MLPs) none of whose incoming edges is kept in a set."""
    tgt = torch.as_tensor(graph.edge_index[:, 1], device=keep.device)
    kept_in = torch.zeros(keep.shape[0], graph.n_targets, device=keep.device).index_add_(1, tgt, keep.float())
    owner = torch.as_tensor(graph.target_owner, device=keep.device)
    reads = owner >= 0
    alive = torch.zeros(keep.shape[0], graph.n_sources, device=keep.device).index_add_(1, owner[reads], kept_in[:, reads])
    dead = alive == 0
    dead[:, 0] = False  # the input embedding reads nothing
    return dead


def _mix(diff: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``sum_u c[n, u, v] diff[..., u, :]`` -> ``[n, b, s, v, d]``: ``diff`` ``[b, s, u, d]`` (sources every set reads
    alike) or ``[n, b, s, u, d]``, ``c`` ``[n, u, v]``.  The part of ``c`` common to all sets is one matrix
    product; each set's own entries are added sparsely when they are few (ACDC's sets differ in one edge)."""
    n, u, v = c.shape
    shape = (n, *diff.shape[-4:-2], v, diff.shape[-1])
    if u == 0 or not bool(c.any()):
        return diff.new_zeros(shape)
    common = c.amin(dim=0)  # [u, v]
    out = torch.matmul(common.T, diff)  # [..., v, d]
    out = out.expand(shape).clone() if diff.dim() == 4 else out
    rest = c - common
    nz = rest.nonzero()
    if nz.shape[0] == 0:
        return out
    if nz.shape[0] * 8 > rest.numel():
        return out + torch.matmul(rest.transpose(1, 2)[:, None, None], diff)
    picked = diff[:, :, nz[:, 1]].permute(2, 0, 1, 3) if diff.dim() == 4 else diff[nz[:, 0], :, :, nz[:, 1]]
    values = picked * rest[nz[:, 0], nz[:, 1], nz[:, 2]].reshape(-1, 1, 1, 1)  # [k, b, s, d]
    out.permute(0, 3, 1, 2, 4).index_put_((nz[:, 0], nz[:, 2]), values, accumulate=True)
    return out
