"""The hooked-model interface every circuit method uses (DESIGN.md section 1, "Models").

Vocabulary (shapes use ``b`` = batch, ``s`` = sequence, ``L`` = layers, ``H`` = heads):

- ``tokens``: LongTensor ``[b, s]``.
- ``z``: each attention head's output *before* the output projection,
  ``[b, s, L, H, d_head]``. Head ``h`` of layer ``l`` adds
  ``z[..., l, h, :] @ W_O[l, h]`` to the residual stream (plus, once per layer,
  the output-projection bias ``b_O[l]``).
- a head *mask* is a BoolTensor ``[L, H]`` (True = replace that head); a
  *replacement* is anything broadcastable to ``z`` (a scalar, ``[s, L, H, d_head]``
  from :meth:`HookedModel.mean_z`, or the full ``z`` of a corrupted run).

Adapters implement a handful of protected primitives (``_embed``, ``_block``,
``_mlp``, ``_ln_final``, ``_W_U``, ``W_O``, ...); every public operation, including the
batched :meth:`HookedModel.ablate_many`, is written once here on top of them.

Gradient policy: :meth:`logits`, :meth:`run_with_cache` and
:meth:`run_with_heads_replaced` follow the caller's grad mode (so a training
loss can include ablated runs; wrap them in ``torch.no_grad()`` for analysis);
:meth:`ablate_many` and :meth:`mean_z` always run without autograd;
:meth:`head_gradients` enables autograd itself and returns detached tensors.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, Sequence

import torch

#: ``z_fn(layer, z) -> z``: applied to the per-head output ``z`` ``[b, s, H, d_head]``
#: of each layer at its replaceable point (between attention and ``W_O``).
ZFn = Callable[[int, torch.Tensor], torch.Tensor]

# Default bound on one ablate_many chunk: elements of its widest activation (the MLP hidden
# layer or the fused QKV output): 2**26 floats = 256 MiB in float32. Larger chunks are
# faster (fewer, bigger matmuls), up to memory.
_CHUNK_ELEMENTS = 2**26


class HookedModel(ABC):
    """A transformer whose attention heads can be read, replaced and differentiated.

    Attributes: ``n_layers``, ``n_heads``, ``d_model``, ``d_head``, ``d_mlp`` (0 if
    attention-only), ``device``, ``model_id`` (a short human-readable id recorded
    in result records).
    """

    n_layers: int
    n_heads: int
    d_model: int
    d_head: int
    d_mlp: int
    device: torch.device
    model_id: str

    # ------------------------------------------------------------------ tokens
    @abstractmethod
    def _encode(self, prompt: str) -> list[int]:
        """Token ids of one prompt (no special tokens added)."""

    @abstractmethod
    def _decode_one(self, token: int) -> str:
        """The string of a single token id."""

    @abstractmethod
    def token_id(self, word: str) -> int | None:
        """The id of ``word`` if it is exactly one token, else None.

        For GPT-2 BPE the leading space matters (``" Mary"`` vs ``"Mary"``).
        """

    def to_tokens(self, prompts: Sequence[str]) -> torch.Tensor:
        """Tokenise prompts into a LongTensor ``[batch, seq]`` on :attr:`device`.

        All prompts must tokenise to the same length (no padding is ever added,
        so position ``-1`` is the last real token of every prompt); otherwise
        ValueError names the first prompt whose length differs.
        """
        if isinstance(prompts, str):
            raise TypeError("to_tokens expects a list of prompts, not a single string")
        if len(prompts) == 0:
            raise ValueError("to_tokens needs at least one prompt")
        ids = [self._encode(p) for p in prompts]
        n = len(ids[0])
        if n == 0:
            raise ValueError(f"prompt {prompts[0]!r} tokenises to zero tokens")
        for prompt, row in zip(prompts, ids):
            if len(row) != n:
                raise ValueError(
                    f"all prompts must tokenise to the same length: {prompts[0]!r} has {n} tokens "
                    f"but {prompt!r} has {len(row)}"
                )
        return torch.tensor(ids, dtype=torch.long, device=self.device)

    def to_str_tokens(self, tokens: torch.Tensor | Sequence[int] | str) -> list:
        """Token strings: a string or 1-D ids -> ``list[str]``; 2-D ids -> ``list[list[str]]``."""
        if isinstance(tokens, str):
            tokens = self._encode(tokens)
        if isinstance(tokens, torch.Tensor):
            if tokens.dim() == 2:
                return [self.to_str_tokens(row) for row in tokens]
            tokens = tokens.tolist()
        return [self._decode_one(int(t)) for t in tokens]

    # --------------------------------------------------------- adapter primitives
    @property
    @abstractmethod
    def W_O(self) -> torch.Tensor:
        """Output projection per head, ``[L, H, d_head, d_model]``."""

    @property
    @abstractmethod
    def b_O(self) -> torch.Tensor:
        """Output-projection bias per layer, ``[L, d_model]`` (zeros if none)."""

    @abstractmethod
    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Residual stream entering layer 0, ``[b, s, d_model]``."""

    def _block(self, layer: int, resid: torch.Tensor, z_fn: ZFn | None) -> torch.Tensor:
        """Run one whole block (attention with ``z_fn`` at its z point, then MLP)."""
        return self._mlp(layer, self._attn(layer, resid, z_fn))

    @abstractmethod
    def _attn(self, layer: int, resid: torch.Tensor, z_fn: ZFn | None) -> torch.Tensor:
        """The attention half of a block: returns ``resid + attn_out`` (the "mid" residual)."""

    @abstractmethod
    def _mlp(self, layer: int, resid_mid: torch.Tensor) -> torch.Tensor:
        """The MLP half of a block: ``resid_mid + mlp(...)`` (identity when attention-only)."""

    @abstractmethod
    def _ln_final(self, resid: torch.Tensor) -> torch.Tensor:
        """The final layer norm (identity if the model has none)."""

    @property
    @abstractmethod
    def _W_U(self) -> torch.Tensor:
        """Unembedding in ``nn.Linear`` layout, ``[vocab, d_model]`` (one row per token)."""

    @property
    def _b_U(self) -> torch.Tensor | None:
        """Unembedding bias ``[vocab]``, or None."""
        return None

    def _normed_final(self, tokens: torch.Tensor, z_fn: ZFn | None) -> torch.Tensor:
        """Full run up to the final layer norm, ``[b, s, d_model]``, with ``z_fn`` at every z point."""
        resid = self._embed(tokens)
        for layer in range(self.n_layers):
            resid = self._block(layer, resid, z_fn)
        return self._ln_final(resid)

    def _unembed(self, resid: torch.Tensor, token_ids: torch.Tensor | None) -> torch.Tensor:
        """Final layer norm then unembedding, restricted to the ``token_ids`` columns if given.

        ``resid`` is ``[..., d_model]``; returns ``[..., len(token_ids) or vocab]``.
        """
        w, bias = self._W_U, self._b_U
        if token_ids is not None:
            w, bias = w[token_ids], (None if bias is None else bias[token_ids])
        return torch.nn.functional.linear(self._ln_final(resid), w, bias)

    def _block_at(
        self, layer: int, resid: torch.Tensor, z_fn: ZFn | None, position: int, z_fn_at: ZFn | None
    ) -> torch.Tensor:
        """Run the *last* block but return only ``position``'s residual, ``[b, d_model]``.

        ``z_fn`` applies to a full-sequence ``z``; ``z_fn_at`` to ``z`` computed for the
        single query ``position`` (``[b, 1, H, d_head]``). Adapters may override this
        to skip the work that the other positions would need.
        """
        return self._block(layer, resid, z_fn)[:, position]

    def _forward(self, tokens: torch.Tensor, z_fn: ZFn | None, row_sparse_grad: bool = False) -> torch.Tensor:
        """Full run to logits ``[b, s, vocab]`` with ``z_fn`` at every layer's z point.

        With ``row_sparse_grad`` the unembedding's backward only computes the rows
        (positions) whose logit gradient is non-zero and never a weight gradient
        (exact; used by :meth:`head_gradients`, whose metrics usually read one position).
        """
        h = self._normed_final(tokens, z_fn)
        if row_sparse_grad and h.requires_grad:
            return _RowSparseUnembed.apply(h, self._W_U.detach(), None if self._b_U is None else self._b_U.detach())
        return torch.nn.functional.linear(h, self._W_U, self._b_U)

    # --------------------------------------------------------------- validation
    def _check_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2:
            raise ValueError(f"tokens must be a LongTensor [batch, seq], got {_describe(tokens)}")
        if tokens.dtype != torch.long:
            raise ValueError(f"tokens must have dtype torch.long, got {tokens.dtype}")
        return tokens.to(self.device)

    def _z_shape(self, tokens: torch.Tensor) -> tuple[int, ...]:
        b, s = tokens.shape
        return (b, s, self.n_layers, self.n_heads, self.d_head)

    def _check_mask(self, mask: torch.Tensor, leading: tuple[int, ...] = ()) -> torch.Tensor:
        want = (*leading, self.n_layers, self.n_heads)
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise ValueError(f"head mask must be a BoolTensor of shape {list(want)}, got {_describe(mask)}")
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

    @property
    def _dtype(self) -> torch.dtype:
        return self._W_U.dtype  # a parameter (W_O stacks a copy of every layer's weights); adapters share one dtype

    # ------------------------------------------------------------------ running
    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits ``[batch, seq, vocab]``."""
        return self._forward(self._check_tokens(tokens), None)

    def run_with_cache(
        self, tokens: torch.Tensor, return_logits: bool = True
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """``(logits [b, s, vocab], z [b, s, L, H, d_head])`` of one run.

        With ``return_logits=False`` the unembedding is skipped and ``(None, z)`` returned
        (cheaper when only ``z`` is needed, e.g. a corrupted run for patching).
        """
        tokens = self._check_tokens(tokens)
        zs: list[torch.Tensor] = [None] * self.n_layers  # type: ignore[list-item]

        def record(layer: int, z: torch.Tensor) -> torch.Tensor:
            zs[layer] = z
            return z

        if return_logits:
            logits = self._forward(tokens, record)
        else:
            self._normed_final(tokens, record)
            logits = None
        return logits, torch.stack(zs, dim=2)

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
        """Logits of a run where heads with ``mask[l, h]`` True get ``z`` = ``replacement``.

        Zero ablation: ``replacement=0.``; mean ablation: ``mean_z(reference_tokens)``;
        resample ablation / activation patching: the ``z`` of a corrupted run.
        Differentiable (follows the caller's grad mode).
        """
        tokens = self._check_tokens(tokens)
        mask = self._check_mask(mask)
        rep = self._check_replacement(replacement, self._z_shape(tokens), self._dtype)
        layer_masks = [mask[l] for l in range(self.n_layers)]
        active = [bool(m.any()) for m in layer_masks]

        def replace(layer: int, z: torch.Tensor) -> torch.Tensor:
            if not active[layer]:
                return z
            m = layer_masks[layer][:, None]  # [H, 1] broadcasts over [b, s, H, d_head]
            return torch.where(m, rep[:, :, layer].to(z.dtype), z)

        return self._forward(tokens, replace)

    @torch.no_grad()
    def mean_z(self, tokens: torch.Tensor) -> torch.Tensor:
        """Mean ``z`` over a reference batch, ``[seq, L, H, d_head]`` (a mean-ablation replacement)."""
        return self.run_with_cache(tokens, return_logits=False)[1].mean(dim=0)

    def head_gradients(
        self, tokens: torch.Tensor, metric_fn: Callable[[torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z, d metric / d z)`` from one forward and one backward pass.

        ``metric_fn`` maps logits ``[b, s, vocab]`` to a scalar tensor. The gradient
        is the total derivative through every later layer (as in attribution
        patching); no parameter gradients are computed or accumulated.
        """
        tokens = self._check_tokens(tokens)
        with torch.enable_grad():
            probe = torch.zeros(self._z_shape(tokens), dtype=self._dtype, device=self.device, requires_grad=True)
            zs: list[torch.Tensor] = [None] * self.n_layers  # type: ignore[list-item]

            def tap(layer: int, z: torch.Tensor) -> torch.Tensor:
                zs[layer] = z.detach()
                return z + probe[:, :, layer]

            metric = metric_fn(self._forward(tokens, tap, row_sparse_grad=True))
            if not isinstance(metric, torch.Tensor) or metric.numel() != 1:
                raise ValueError(f"metric_fn must return a scalar tensor, got {_describe(metric)}")
            (grad,) = torch.autograd.grad(metric.reshape(()), probe, allow_unused=True)
        if grad is None:
            grad = torch.zeros_like(probe)
        return torch.stack(zs, dim=2), grad.detach()

    def replacement_gradient(
        self, tokens: torch.Tensor, mask: torch.Tensor, replacement: torch.Tensor,
        metric_fn: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """``d metric / d replacement`` of :meth:`run_with_heads_replaced` (one forward, one backward).

        ``replacement`` has the full ``z`` shape ``[batch, seq, L, H, d_head]``; the gradient has the same
        shape (zero outside the heads in ``mask``).  ``metric_fn`` maps logits to a scalar tensor.
        """
        rep = replacement.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            metric = metric_fn(self.run_with_heads_replaced(tokens, mask, rep))
            (grad,) = torch.autograd.grad(metric.reshape(()), rep)
        return grad

    # -------------------------------------------------------------- ablate_many
    @torch.no_grad()
    def ablate_many(
        self,
        tokens: torch.Tensor,
        masks: torch.Tensor,
        replacement,
        position: int = -1,
        token_ids: torch.Tensor | None = None,
        chunk_tokens: int | None = None,
    ) -> torch.Tensor:
        """Logits at ``position`` for many head sets, ``[n_sets, batch, len(token_ids) or vocab]``.

        Equal (up to float rounding) to ``stack([run_with_heads_replaced(tokens, m,
        replacement)[:, position, token_ids] for m in masks])`` but much cheaper:

        - the clean run is done once and its residual stream cached per layer;
        - a set whose earliest replaced head is in layer ``l`` starts from the
          clean residual after layer ``l``'s attention, corrected by
          ``sum_h (replacement_h - z_h) @ W_O[h]`` for its heads in layer ``l``,
          and then runs only layers ``l`` (MLP), ``l+1``, ...;
        - sets sharing a start layer are stacked along the batch dimension and run
          in chunks of at most ``chunk_tokens`` (sets x batch x seq) tokens (default:
          as many as keep the widest activation of a chunk within 256 MiB in float32);
        - only ``position``'s final layer norm and the ``token_ids`` columns of the
          unembedding are computed (adapters may also skip other positions'
          work in the last block).

        Runs without autograd. Pass ``token_ids`` when the metric needs only a few
        logits: the full-vocabulary output is ``n_sets x batch x vocab`` floats.
        """
        tokens = self._check_tokens(tokens)
        if not isinstance(masks, torch.Tensor) or masks.dim() != 3:
            raise ValueError(f"masks must be a BoolTensor [n_sets, n_layers, n_heads], got {_describe(masks)}")
        masks = self._check_mask(masks, leading=(masks.shape[0],))
        b, s = tokens.shape
        if not -s <= position < s:
            raise ValueError(f"position {position} is out of range for sequences of length {s}")
        position = position % s
        if token_ids is not None:
            token_ids = torch.as_tensor(token_ids, dtype=torch.long, device=self.device).reshape(-1)
        z_shape = self._z_shape(tokens)
        rep = self._check_replacement(replacement, z_shape, self._dtype)
        rep_at = rep[:, position : position + 1] if rep.shape[1] > 1 else rep  # replacement at `position` only
        n_sets, L = masks.shape[0], self.n_layers
        if chunk_tokens is None:
            chunk_tokens = _CHUNK_ELEMENTS // max(3 * self.d_model, getattr(self, "d_mlp", 4 * self.d_model))
        per_chunk = max(1, chunk_tokens // (b * s))

        # Clean run: residual after each layer's attention ("mid") and z per layer.
        resid_mid: list[torch.Tensor] = []
        z_clean: list[torch.Tensor] = []
        resid = self._embed(tokens)

        def record(layer: int, z: torch.Tensor) -> torch.Tensor:
            z_clean.append(z)
            return z

        for layer in range(L):
            mid = self._attn(layer, resid, record)
            resid_mid.append(mid)
            resid = self._mlp(layer, mid)
        final_clean = self._unembed(resid[:, position], token_ids)  # [b, k]

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
                n = chunk.numel()
                cmask = masks[chunk]  # [n, L, H]
                coef = cmask[:, layer].to(head_delta.dtype)  # [n, H]
                if layer == L - 1:  # only `position` is read out: skip the other positions' MLP
                    mid = resid_mid[layer][:, position].unsqueeze(0) + torch.einsum(
                        "nh,bhm->nbm", coef, head_delta[:, position]
                    )
                    x_last = self._mlp(layer, mid.reshape(n * b, 1, self.d_model))[:, 0]
                else:
                    mid = resid_mid[layer].unsqueeze(0) + torch.einsum("nh,bshm->nbsm", coef, head_delta)
                    x = self._mlp(layer, mid.reshape(n * b, s, self.d_model))
                    z_fn = _stacked_replacer(cmask, rep, n, b)
                    for later in range(layer + 1, L - 1):
                        x = self._block(later, x, z_fn)
                    z_fn_at = _stacked_replacer(cmask, rep_at, n, b)
                    x_last = self._block_at(L - 1, x, z_fn, position, z_fn_at)
                out[chunk] = self._unembed(x_last, token_ids).reshape(n, b, -1)
        return out


def _stacked_replacer(cmask: torch.Tensor, rep: torch.Tensor, n: int, b: int) -> ZFn:
    """z_fn for ``n`` head sets stacked along the batch: ``z`` is ``[n*b, s, H, d_head]``."""
    layer_active = cmask.any(dim=(0, 2)).tolist()

    def replace(layer: int, z: torch.Tensor) -> torch.Tensor:
        if not layer_active[layer]:
            return z
        zz = z.reshape(n, b, *z.shape[1:])
        m = cmask[:, layer][:, None, None, :, None]  # [n, 1, 1, H, 1]
        return torch.where(m, rep[:, :, layer].unsqueeze(0).to(z.dtype), zz).reshape(z.shape)

    return replace


class _RowSparseUnembed(torch.autograd.Function):
    """``h @ W.T + b`` whose backward computes ``d h`` only for rows with a non-zero logit gradient."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(w)
        return torch.nn.functional.linear(h, w, bias)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (w,) = ctx.saved_tensors
        flat = grad_out.reshape(-1, grad_out.shape[-1])
        rows = flat.ne(0).any(dim=1).nonzero().flatten()
        grad_h = flat.new_zeros((flat.shape[0], w.shape[1]))
        if rows.numel():
            grad_h[rows] = flat[rows] @ w
        return grad_h.reshape(*grad_out.shape[:-1], w.shape[1]), None, None


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor of shape {list(x.shape)} and dtype {x.dtype}"
    return f"{type(x).__name__}"
