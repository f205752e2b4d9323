"""The in-context learner's network: a small GPT that regresses in context.

Sequences are ``(x_1, y_1, ..., x_n, y_n, x_q)`` with ``y = w . x + noise``,
``w ~ N(0, I_d)``, ``x ~ N(0, I_d)``.  A linear read-in maps tokens to the
residual stream, learned positions are added, the pre-LN blocks of
:mod:`harness.models.gpt` (imported, unchanged; attention run with an
explicit mask where needed) process them, and a linear read-out at every
query predicts ``y / sqrt(d)`` from the examples before it -- so one pass
scores every prefix length ``k = 0..n``, and the training loss (MSE in these
units) *is* the normalised error ``squared error / d``.

Default token encoding ("paired", see :class:`InContextRegressor`): one token
``[x_i, y_i / sqrt(d), 1]`` per example and one query token ``[x, 0, 0]`` per
prefix.  Garg et al.'s interleaved encoding (separate x and y tokens) is
kept as an option; on this CPU budget it stalls on the initial plateau (see
``harness/tasks/icl/README.md``).

:meth:`InContextRegressor.predict_prefixes` answers many queries per prefix in
one pass: query tokens take the place of the query after ``k`` examples and
attend to what that query would see and to themselves only -- exactly what a
separate sequence ``(x_1, y_1, ..., x_k, y_k, x_q)`` would give.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from harness.embedded.recipe import from_known_fields
from harness.models.gpt import Block, GPTConfig, gpt2_init_


@dataclass(frozen=True)
class ICLArch:
    """Sizes of the in-context learner.  ``n_points``: most in-context examples it reads."""

    d: int
    n_points: int
    n_layers: int = 3
    n_heads: int = 2
    d_model: int = 64
    d_mlp: int = 256
    encoding: str = "paired"  # or "interleaved" (see InContextRegressor)
    init_read_in: float = 0.02  # std of the read-in weights at initialisation

    @property
    def n_ctx(self) -> int:
        """Position slots: ``2 n_points + 1`` (``n_points`` examples + ``n_points + 1`` queries, or interleaved tokens)."""
        return 2 * self.n_points + 1

    def gpt_config(self) -> GPTConfig:
        return GPTConfig(n_layers=self.n_layers, n_heads=self.n_heads, d_model=self.d_model,
                         d_mlp=self.d_mlp, vocab_size=1, n_ctx=self.n_ctx, layer_norm=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ICLArch":
        return from_known_fields(cls, data)




# ---------------------------------------------------------------- the model
class InContextRegressor(nn.Module):
    """Linear read-in -> learned positions -> GPT blocks -> final LayerNorm -> linear read-out.

    Two token encodings (``arch.encoding``), both in ``d + 2`` channels:

    - ``"paired"`` (default): one *context* token per example ``[x_i, y_i /
      sqrt(d), 1]`` and one *query* token per prefix ``k`` ``[x_q, 0, 0]``.
      Context tokens attend causally to earlier context tokens; query token
      ``k`` attends to the first ``k`` context tokens and to itself.  A
      training sequence of ``P`` points is ``[c_1 .. c_{P-1}, q_0 .. q_{P-1}]``
      with ``q_k`` holding ``x_{k+1}``.  Positions: context ``i`` -> ``i``,
      query ``k`` -> ``n_points + k``.
    - ``"interleaved"`` (Garg et al.): ``x_1, y_1, ..., x_P`` with x tokens
      ``[x, 0, 0]`` and y tokens ``[0, y / sqrt(d), 1]``, plain causal
      attention, predictions read at the x positions.

    Either way the prediction for ``x_{k+1}`` depends exactly on ``(x_1, y_1,
    ..., x_k, y_k, x_{k+1})``.
    """

    def __init__(self, arch: ICLArch):
        super().__init__()
        if arch.encoding not in ("paired", "interleaved"):
            raise ValueError(f"unknown encoding {arch.encoding!r}; use 'paired' or 'interleaved'")
        self.arch = arch
        config = arch.gpt_config()
        self.read_in = nn.Linear(arch.d + 2, arch.d_model)
        self.pos_embed = nn.Embedding(arch.n_ctx, arch.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(arch.n_layers))
        self.ln_f = nn.LayerNorm(arch.d_model)
        self.read_out = nn.Linear(arch.d_model, 1)
        self.reset_parameters()

    @property
    def d(self) -> int:
        return self.arch.d

    @property
    def y_scale(self) -> float:
        """Labels enter and leave the model divided by ``sqrt(d)`` (unit variance when noiseless)."""
        return 1.0 / math.sqrt(self.arch.d)

    def reset_parameters(self) -> None:
        """GPT-2 initialisation (as :class:`harness.models.gpt.GPT`), read-in at ``arch.init_read_in``."""
        gpt2_init_(self, self.arch.n_layers, {"read_in.weight": self.arch.init_read_in})

    # ---------------------------------------------------------- encoding
    def _query_tokens(self, xq: torch.Tensor) -> torch.Tensor:
        return F.pad(xq, (0, 2))  # [x, 0, 0]

    def _context_tokens(self, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        one = torch.ones_like(ys)
        return torch.cat([xs, (ys * self.y_scale)[..., None], one[..., None]], dim=-1)  # [x, y, 1]

    def _check(self, xs: torch.Tensor, ys: torch.Tensor) -> tuple[int, int, int]:
        B, P, d = xs.shape
        if d != self.arch.d:
            raise ValueError(f"the model reads d = {self.arch.d} inputs, got {d}")
        if ys.shape[1] not in (P - 1, P):
            raise ValueError(f"ys must have P or P - 1 = {P - 1} entries, got {ys.shape[1]}")
        if P - 1 > self.arch.n_points:
            raise ValueError(f"{P - 1} examples exceed the model's n_points = {self.arch.n_points}")
        return B, P, d

    def _sequence(self, xs: torch.Tensor, ys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Embedded training sequence ``[B, S, D]``, its attention mask ``[S, S]`` (True = attend), query indices."""
        B, P, d = self._check(xs, ys)
        ys = ys[:, : P - 1]
        dev = xs.device
        if self.arch.encoding == "interleaved":
            S = 2 * P - 1
            tokens = xs.new_zeros(B, 2 * P, d + 2)
            tokens[:, 0::2] = self._query_tokens(xs)
            tokens[:, 1::2][:, : P - 1] = F.pad(self._context_tokens(xs[:, : P - 1], ys), (0, 0))
            tokens[:, 1::2, :d] = 0.0  # y tokens carry only [0, y, 1]
            tokens = tokens[:, :S]
            pos = torch.arange(S, device=dev)
            mask = torch.ones(S, S, dtype=torch.bool, device=dev).tril()
            return self.read_in(tokens) + self.pos_embed(pos), mask, torch.arange(0, S, 2, device=dev)
        n = P - 1
        tokens = torch.cat([self._context_tokens(xs[:, :n], ys), self._query_tokens(xs)], dim=1)  # [B, n + P, d + 2]
        pos = torch.cat([torch.arange(n, device=dev), self.arch.n_points + torch.arange(P, device=dev)])
        S = n + P
        i = torch.arange(S, device=dev)
        is_ctx = i < n
        qk = i - n  # query index k for query tokens
        mask = (is_ctx[:, None] & is_ctx[None, :] & (i[None, :] <= i[:, None]))  # context: causal over context
        mask |= (~is_ctx[:, None]) & is_ctx[None, :] & (i[None, :] < qk[:, None])  # query k: first k contexts
        mask |= torch.eye(S, dtype=torch.bool, device=dev)  # and itself
        return self.read_in(tokens) + self.pos_embed(pos), mask, torch.arange(n, S, device=dev)

    def _run(self, h: torch.Tensor, mask: torch.Tensor, keep: bool = False):
        hs = [h]
        causal = self.arch.encoding == "interleaved"
        for block in self.blocks:
            h = _masked_block(block, h, None if causal else mask)
            if keep:
                hs.append(h)
        return hs if keep else h

    def forward(self, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """Prediction of ``y_i`` at every point ``i`` from the examples before it: ``[B, P]`` (label units).

        ``xs [B, P, d]``, ``ys [B, P - 1]`` (or ``[B, P]``; the last label is never read).
        """
        h, mask, qidx = self._sequence(xs, ys)
        h = self._run(h, mask)
        return self.read_out(self.ln_f(h[:, qidx]))[..., 0] / self.y_scale

    def residuals_at(self, xs: torch.Tensor, ys: torch.Tensor, x_query: torch.Tensor,
                     position: str = "query") -> torch.Tensor:
        """Residual stream after the read-in (layer 0) and after each block: ``[L + 1, B, d_model]``.

        Read on the sequence of the ``n`` examples ``xs [B, n, d]``, ``ys [B, n]``
        and the query ``x_query [B, d]``, at ``position``: ``"query"`` (the
        query token after all examples), ``"example"`` (the token of the last
        example, ``(x_n, y_n)``; its y token in the interleaved encoding) or
        ``"mean"`` (the mean over every token before the query).
        """
        n = xs.shape[1]
        h, mask, qidx = self._sequence(torch.cat([xs, x_query[:, None]], dim=1), ys)
        if position == "query":
            idx = int(qidx[-1])
        elif position in ("example", "mean"):
            if n < 1:
                raise ValueError(f"position {position!r} needs at least one example")
            interleaved = self.arch.encoding == "interleaved"
            if position == "example":
                idx = 2 * n - 1 if interleaved else n - 1
            else:  # every token before the query
                idx = slice(0, 2 * n if interleaved else n)
        else:
            raise ValueError(f"unknown position {position!r}; use 'query', 'example' or 'mean'")
        hs = self._run(h, mask, keep=True)
        if isinstance(idx, slice):
            return torch.stack([hl[:, idx].mean(1) for hl in hs])
        return torch.stack([hl[:, idx] for hl in hs])

    # ---------------------------------------------------------- many queries per prefix
    def predict_prefixes(self, xs: torch.Tensor, ys: torch.Tensor, x_query: torch.Tensor) -> torch.Tensor:
        """Predictions ``[B, n + 1, m]`` at ``m`` queries for every prefix ``k = 0..n`` of the ``n`` examples.

        Query token ``(k, j)`` takes the place of the query after ``k``
        examples and attends to what that query would see and to itself, so
        its prediction equals the model's on ``(x_1, y_1, ..., x_k, y_k, x_query_j)``.
        """
        B, n, d = xs.shape
        self._check(xs, ys[:, :n])
        m = x_query.shape[1]
        dev = xs.device
        k = torch.arange(n + 1, device=dev).repeat_interleave(m)  # [(n+1) m], order (k, j)
        q = self.read_in(self._query_tokens(x_query).repeat(1, n + 1, 1))
        if self.arch.encoding == "interleaved":
            tokens = xs.new_zeros(B, 2 * n, d + 2)
            tokens[:, 0::2] = self._query_tokens(xs)
            tokens[:, 1::2, d:] = self._context_tokens(xs, ys[:, :n])[..., d:]
            ctx = self.read_in(tokens) + self.pos_embed.weight[: 2 * n]
            q = q + self.pos_embed.weight[2 * k]
            visible = torch.arange(2 * n, device=dev)[None, :] < (2 * k)[:, None]
        else:
            ctx = self.read_in(self._context_tokens(xs, ys[:, :n])) + self.pos_embed.weight[:n]
            q = q + self.pos_embed.weight[self.arch.n_points + k]
            visible = torch.arange(n, device=dev)[None, :] < k[:, None]
        for block in self.blocks:
            ctx, q = _block_with_queries(block, ctx, q, visible)
        out = self.read_out(self.ln_f(q))[..., 0] / self.y_scale  # [B, (n+1) m]
        return out.view(B, n + 1, m)


def _masked_block(block: Block, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """A GPT block with an explicit attention mask (``None``: causal, the block's own forward)."""
    if mask is None:
        return block(h)
    attn = block.attn
    B, S, D = h.shape
    q, k, v = attn.qkv(block.ln1(h)).view(B, S, 3, attn.n_heads, attn.d_head).permute(2, 0, 3, 1, 4)
    z = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    h = h + attn.out(z.transpose(1, 2).flatten(2))
    return block.forward_mlp(h)


def _block_with_queries(block: Block, ctx: torch.Tensor, q: torch.Tensor, visible: torch.Tensor):
    """One block over causal context tokens and query tokens that see ``visible`` context plus themselves."""
    attn = block.attn
    H, dh = attn.n_heads, attn.d_head
    B, C, D = ctx.shape
    Q = q.shape[1]
    qkv_c = attn.qkv(block.ln1(ctx)).view(B, C, 3, H, dh).permute(2, 0, 3, 1, 4)  # [3, B, H, C, dh]
    qkv_q = attn.qkv(block.ln1(q)).view(B, Q, 3, H, dh).permute(2, 0, 3, 1, 4)  # [3, B, H, Q, dh]
    z_c = F.scaled_dot_product_attention(qkv_c[0], qkv_c[1], qkv_c[2], is_causal=True)
    qq, kq, vq = qkv_q[0], qkv_q[1], qkv_q[2]
    scale = 1.0 / math.sqrt(dh)
    s_ctx = (qq @ qkv_c[1].transpose(-1, -2)) * scale  # [B, H, Q, C]
    s_ctx = s_ctx.masked_fill(~visible, float("-inf"))
    s_self = (qq * kq).sum(-1, keepdim=True) * scale  # [B, H, Q, 1]
    p = torch.softmax(torch.cat([s_ctx, s_self], dim=-1), dim=-1)
    z_q = p[..., :C] @ qkv_c[2] + p[..., C:] * vq
    ctx = ctx + attn.out(z_c.transpose(1, 2).flatten(2))
    q = q + attn.out(z_q.transpose(1, 2).flatten(2))
    return block.forward_mlp(ctx), block.forward_mlp(q)
