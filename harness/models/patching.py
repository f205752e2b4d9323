"""Head patching on top of the hook points: replace or ablate chosen heads' ``z``.

Vocabulary (``b`` = batch, ``s`` = sequence, ``L`` = layers, ``H`` = heads):

- ``z``: each head's output before ``W_O``, ``[b, s, L, H, d_head]`` (the
  ``blocks.{l}.attn.hook_z`` points stacked along dim 2);
- a head *mask* is a BoolTensor ``[L, H]`` (True = replace that head); a *mix* is a float
  tensor ``[L, H]`` or ``[b, L, H]`` (1 = keep the head's ``z``, 0 = the replacement, in between
  the interpolation);
- a *replacement* is anything broadcastable to ``z``: a scalar, ``[s, L, H, d_head]``
  from :meth:`PatchingMixin.mean_z`, or the full ``z`` of a corrupted run.

Every run here is :meth:`~harness.models.forward.HookedForward.run_with_hooks` /
``run_from`` with hooks at ``attn.hook_z``; no adapter primitive is called.
"""

from __future__ import annotations

from typing import Sequence

import torch

from harness.models.forward import HookFn, describe

# Default bound on one ablate_many chunk: elements of its widest activation (the MLP hidden
# layer or the fused QKV output): 2**26 floats = 256 MiB in float32. Larger chunks are
# faster (fewer, bigger matmuls), up to memory.
_CHUNK_ELEMENTS = 2**26


class PatchingMixin:
    """Reading heads' contributions and running with heads replaced. Needs :class:`HookedForward`."""

    def head_results(self, z: torch.Tensor) -> torch.Tensor:
        """Each head's contribution to the residual stream, ``z_h @ W_O[h]``.

        ``z`` is ``[..., L, H, d_head]``; returns ``[..., L, H, d_model]`` (without
        the per-layer output bias ``b_O``).
        """
        if z.shape[-3:] != (self.n_layers, self.n_heads, self.d_head):
            raise ValueError(
                f"z must end in [n_layers, n_heads, d_head] = "
                f"{[self.n_layers, self.n_heads, self.d_head]}, got {list(z.shape)}"
            )
        return torch.einsum("...lhd,lhdm->...lhm", z, self.W_O.to(z.dtype))

    def run_with_heads_replaced(self, tokens: torch.Tensor, mask: torch.Tensor, replacement) -> torch.Tensor:
        """Logits ``[b, s, vocab]`` of a run where heads with ``mask[l, h]`` True get ``z`` = ``replacement``.

        Zero ablation: ``replacement=0.``; mean ablation: ``mean_z(reference_tokens)``;
        resample ablation / activation patching: the ``z`` of a corrupted run.
        Differentiable (follows the caller's grad mode).
        """
        tokens = self._check_tokens(tokens)
        mask = self._check_mask(mask)
        rep = self._check_replacement(replacement, self._z_shape(tokens), self.dtype)
        hooks = {}
        for layer in range(self.n_layers):
            if bool(mask[layer].any()):
                hooks[f"blocks.{layer}.attn.hook_z"] = _head_replacer(mask[layer][:, None], rep[:, :, layer])
        return self.run_with_hooks(tokens, hooks)

    def run_with_heads_mixed(self, tokens: torch.Tensor, mix: torch.Tensor, replacement, *,
                             position: int | None = None,
                             token_ids: torch.Tensor | Sequence[int] | None = None) -> torch.Tensor:
        """Logits of a run where every head's ``z`` is ``mix * z + (1 - mix) * replacement``.

        ``mix`` is a float tensor ``[L, H]`` (one coefficient per head) or ``[b, L, H]`` (one per prompt and
        head): 1 keeps the head's own ``z`` (computed in this run, so it sees the mixing of earlier layers),
        0 gives it ``replacement`` (as :meth:`run_with_heads_replaced`).  ``position`` / ``token_ids``: position
        mode as in :meth:`run_with_hooks` (logits ``[b, len(token_ids) or vocab]``).  Differentiable in ``mix``
        and ``replacement`` (follows the caller's grad mode): the forward of mask-learning methods.
        """
        tokens = self._check_tokens(tokens)
        b, s = tokens.shape
        L, H = self.n_layers, self.n_heads
        if not isinstance(mix, torch.Tensor) or not mix.is_floating_point() or mix.shape not in ((L, H), (b, L, H)):
            raise ValueError(f"mix must be a float tensor [n_layers, n_heads] = {[L, H]} or [batch, n_layers, "
                             f"n_heads] = {[b, L, H]}, got {describe(mix)}")
        if position is not None and not -s <= position < s:
            raise ValueError(f"position {position} is out of range for sequences of length {s}")
        rep = self._check_replacement(replacement, self._z_shape(tokens), self.dtype)
        coef = mix.to(self.device).reshape(-1, 1, L, H, 1)  # [1 or b, 1, L, H, 1]
        hooks = {}
        for layer in range(L):
            r = rep[:, :, layer]
            if position is not None and layer == L - 1 and r.shape[1] > 1:  # the last block sees `position` only
                r = r[:, position % s : position % s + 1]
            hooks[f"blocks.{layer}.attn.hook_z"] = _head_mixer(coef[:, :, layer], r)
        return self.run_with_hooks(tokens, hooks, position=position, token_ids=token_ids)

    @torch.no_grad()
    def mean_z(self, tokens: torch.Tensor) -> torch.Tensor:
        """Mean ``z`` over a reference batch, ``[seq, L, H, d_head]`` (a mean-ablation replacement)."""
        return self.run_with_cache(tokens, return_logits=False)[1].mean(dim=0)

    # -------------------------------------------------------------- ablate_many
    @torch.no_grad()
    def ablate_many(
        self,
        tokens: torch.Tensor,
        masks: torch.Tensor,
        replacement,
        position: int = -1,
        token_ids: torch.Tensor | Sequence[int] | None = None,
        chunk_tokens: int | None = None,
    ) -> torch.Tensor:
        """Logits at ``position`` for many head sets, ``[n_sets, batch, len(token_ids) or vocab]``.

        Equal (up to float rounding) to ``stack([run_with_heads_replaced(tokens, m,
        replacement)[:, position, token_ids] for m in masks])`` but much cheaper:

        - the clean run is done once and its ``hook_resid_mid`` and ``attn.hook_z`` cached per layer;
        - a set whose earliest replaced head is in layer ``l`` starts (:meth:`run_from`) at
          ``blocks.{l}.hook_resid_mid``: the clean value corrected by
          ``sum_h (replacement_h - z_h) @ W_O[h]`` for its heads in layer ``l``;
        - sets sharing a start layer are stacked along the batch dimension and run
          in chunks of at most ``chunk_tokens`` (sets x batch x seq) tokens (default:
          as many as keep the widest activation of a chunk within 256 MiB in float32);
        - runs are in position mode: only ``position``'s part of the last block, its final
          layer norm and the ``token_ids`` columns of the unembedding are computed.

        Adapters that cannot resume a run mid-model (``resumable`` False: the Hugging Face
        adapter) run every set as a full forward with its heads replaced, stacked and chunked
        the same way (:meth:`_ablate_full`).

        Runs without autograd. Pass ``token_ids`` when the metric needs only a few
        logits: the full-vocabulary output is ``n_sets x batch x vocab`` floats.
        """
        tokens = self._check_tokens(tokens)
        if not isinstance(masks, torch.Tensor) or masks.dim() != 3:
            raise ValueError(f"masks must be a BoolTensor [n_sets, n_layers, n_heads], got {describe(masks)}")
        masks = self._check_mask(masks, leading=(masks.shape[0],))
        b, s = tokens.shape
        if not -s <= position < s:
            raise ValueError(f"position {position} is out of range for sequences of length {s}")
        position = position % s
        token_ids = self._check_token_ids(token_ids)
        rep = self._check_replacement(replacement, self._z_shape(tokens), self.dtype)
        n_sets, L = masks.shape[0], self.n_layers
        if chunk_tokens is None:
            chunk_tokens = _CHUNK_ELEMENTS // max(3 * self.d_model, getattr(self, "d_mlp", 4 * self.d_model))
        per_chunk = max(1, chunk_tokens // (b * s))
        if not self.resumable:
            return self._ablate_full(tokens, masks, rep, position, token_ids, per_chunk)

        resid_mid, z_clean, final_clean = self._clean_run(tokens, position, token_ids)
        out = final_clean.new_empty((n_sets, b, final_clean.shape[-1]))
        touched = masks.any(dim=2)  # [n_sets, L]
        start = torch.where(touched.any(dim=1), touched.to(torch.int8).argmax(dim=1), L)
        out[start == L] = final_clean

        W_O = self.W_O
        for layer in range(L):
            idx = (start == layer).nonzero().flatten()
            if idx.numel() == 0:
                continue
            # Each head's change to the residual if replaced: [b, s, H, d_model].
            rep_l = rep[:, :, layer].expand(b, s, self.n_heads, self.d_head)
            head_delta = torch.einsum("bshd,hdm->bshm", rep_l - z_clean[layer], W_O[layer])
            for chunk in idx.split(per_chunk):
                out[chunk] = self._ablate_chunk(layer, masks[chunk], head_delta, resid_mid[layer], rep,
                                                position, token_ids)
        return out

    def _ablate_full(self, tokens: torch.Tensor, masks: torch.Tensor, rep: torch.Tensor, position: int,
                     token_ids: torch.Tensor | None, per_chunk: int) -> torch.Tensor:
        """:meth:`ablate_many` by full forwards: ``per_chunk`` head sets at a time, stacked along the batch."""
        b = tokens.shape[0]
        rep_at = rep[:, position : position + 1] if rep.shape[1] > 1 else rep  # the last block sees `position` only
        parts = []
        for cmask in masks.split(per_chunk):
            n, active = cmask.shape[0], cmask.any(dim=(0, 2)).tolist()
            hooks = {}
            for layer in range(self.n_layers):
                if active[layer]:
                    r = rep_at if layer == self.n_layers - 1 else rep
                    hooks[f"blocks.{layer}.attn.hook_z"] = _stacked_replacer(cmask[:, layer], r[:, :, layer], n, b)
            logits = self.run_with_hooks(tokens.repeat(n, 1), hooks, position=position, token_ids=token_ids)
            parts.append(logits.reshape(n, b, -1))
        return torch.cat(parts)

    def _clean_run(self, tokens: torch.Tensor, position: int, token_ids: torch.Tensor | None):
        """``(resid_mid per layer, z per layer, logits at position [b, k])`` of the clean run."""
        L = self.n_layers
        mids = [f"blocks.{l}.hook_resid_mid" for l in range(L)]
        zs = [f"blocks.{l}.attn.hook_z" for l in range(L)]
        last = f"blocks.{L - 1}.hook_resid_post"
        _, cache = self.run_with_cache(tokens, return_logits=False, names=[*mids, *zs, last])
        final = self.unembed(cache[last][:, position], token_ids)
        return [cache[n] for n in mids], [cache[n] for n in zs], final

    def _ablate_chunk(self, layer: int, cmask: torch.Tensor, head_delta: torch.Tensor, mid_clean: torch.Tensor,
                      rep: torch.Tensor, position: int, token_ids: torch.Tensor | None) -> torch.Tensor:
        """Logits ``[n, b, k]`` of ``n`` head sets ``cmask`` ``[n, L, H]`` whose first replaced layer is ``layer``."""
        n, L = cmask.shape[0], self.n_layers
        b, s = mid_clean.shape[:2]
        coef = cmask[:, layer].to(head_delta.dtype)  # [n, H]
        if layer == L - 1:  # only `position` is read out: skip the other positions' MLP
            mid = mid_clean[:, position].unsqueeze(0) + torch.einsum("nh,bhm->nbm", coef, head_delta[:, position])
            mid = mid.reshape(n * b, 1, self.d_model)
        else:
            mid = mid_clean.unsqueeze(0) + torch.einsum("nh,bshm->nbsm", coef, head_delta)
            mid = mid.reshape(n * b, s, self.d_model)
        rep_at = rep[:, position : position + 1] if rep.shape[1] > 1 else rep  # replacement at `position` only
        layer_active = cmask.any(dim=(0, 2)).tolist()
        hooks = {}
        for later in range(layer + 1, L):
            if layer_active[later]:  # the last block runs in position mode: its z is `position`'s only
                r = rep_at if later == L - 1 else rep
                hooks[f"blocks.{later}.attn.hook_z"] = _stacked_replacer(cmask[:, later], r[:, :, later], n, b)
        logits = self.run_from(f"blocks.{layer}.hook_resid_mid", mid, hooks, position=position, token_ids=token_ids)
        return logits.reshape(n, b, -1)

    # --------------------------------------------------------------- validation
    def _z_shape(self, tokens: torch.Tensor) -> tuple[int, ...]:
        b, s = tokens.shape
        return (b, s, self.n_layers, self.n_heads, self.d_head)

    def _check_mask(self, mask: torch.Tensor, leading: tuple[int, ...] = ()) -> torch.Tensor:
        want = (*leading, self.n_layers, self.n_heads)
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise ValueError(f"head mask must be a BoolTensor of shape {list(want)}, got {describe(mask)}")
        if mask.dim() != len(want) or (mask.shape[len(leading):] != want[len(leading):]):
            raise ValueError(f"head mask must have shape {list(want)}, got {list(mask.shape)}")
        return mask.to(self.device)

    def _check_replacement(self, replacement, z_shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """Return ``replacement`` as a 5-D tensor broadcastable to ``z_shape``."""
        rep = torch.as_tensor(replacement, device=self.device).to(dtype)
        if rep.dim() > 5:
            raise ValueError(f"replacement has {rep.dim()} dims; it must broadcast to z {list(z_shape)}")
        while rep.dim() < 5:
            rep = rep.unsqueeze(0)
        try:
            torch.broadcast_shapes(rep.shape, z_shape)
        except RuntimeError:
            raise ValueError(
                f"replacement of shape {list(torch.as_tensor(replacement).shape)} does not broadcast "
                f"to z of shape {list(z_shape)} [batch, seq, n_layers, n_heads, d_head]"
            ) from None
        return rep.expand(-1, -1, self.n_layers, -1, -1)  # index layers without copying


def _head_replacer(mask: torch.Tensor, rep: torch.Tensor) -> HookFn:
    """Hook at one layer's ``attn.hook_z``: heads with ``mask`` ``[H, 1]`` get ``rep`` (broadcast to z)."""

    def replace(z: torch.Tensor, name: str) -> torch.Tensor:
        return torch.where(mask, rep.to(z.dtype), z)

    return replace


def _head_mixer(coef: torch.Tensor, rep: torch.Tensor) -> HookFn:
    """Hook at one layer's ``attn.hook_z``: ``coef * z + (1 - coef) * rep``, ``coef`` ``[1 or b, 1, H, 1]``."""

    def mix(z: torch.Tensor, name: str) -> torch.Tensor:
        c = coef.to(z.dtype)
        return c * z + (1 - c) * rep.to(z.dtype)

    return mix


def _stacked_replacer(mask: torch.Tensor, rep: torch.Tensor, n: int, b: int) -> HookFn:
    """Hook at one layer's ``attn.hook_z`` for ``n`` head sets stacked along the batch.

    ``z`` is ``[n*b, s, H, d_head]``; ``mask`` ``[n, H]`` is each set's heads in this layer;
    ``rep`` this layer's replacement, broadcastable to ``[b, s, H, d_head]``.
    """
    m = mask[:, None, None, :, None]  # [n, 1, 1, H, 1]
    r = rep.unsqueeze(0)

    def replace(z: torch.Tensor, name: str) -> torch.Tensor:
        zz = z.reshape(n, b, *z.shape[1:])
        return torch.where(m, r.to(z.dtype), zz).reshape(z.shape)

    return replace
