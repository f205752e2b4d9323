"""The forward template of every hooked model, with named hook points (TransformerLens-style names).

Shapes use ``b`` = batch, ``s`` = sequence, ``L`` = layers, ``H`` = heads. In
execution order, the hook points are:

- ``hook_embed``: token + positional embedding, ``[b, s, d_model]`` (TransformerLens
  splits it into ``hook_embed`` and ``hook_pos_embed``; here it is one point);
- per layer ``l`` (``blocks.{l}.`` prefix):
  ``hook_resid_pre`` (residual entering the block, ``[b, s, d_model]``),
  ``attn.hook_z`` (each head's output before ``W_O``, ``[b, s, H, d_head]``),
  ``hook_resid_mid`` (residual after attention, ``[b, s, d_model]``),
  ``hook_resid_post`` (residual after the MLP, ``[b, s, d_model]``; equal to
  ``hook_resid_mid`` in attention-only models);
- ``ln_final.hook_normalized``: the final layer norm's output, ``[b, s, d_model]``.

A hook is ``fn(act, name) -> act | None``: it reads the activation and may
return a tensor of the same shape to replace it (None keeps it). Runs follow
the caller's grad mode, so a replacement can be differentiated.

*Position mode* (``position=p``): only the query position ``p`` is computed in
the last block, so its ``attn.hook_z``, ``hook_resid_mid`` and
``hook_resid_post`` carry that position only (``s`` = 1), and
``ln_final.hook_normalized`` and the output have no sequence dimension
(``[b, d_model]``, ``[b, vocab]``).

Adapters implement ``_run`` (one run between two hook points), ``_ln_final``, ``_W_U``,
``_b_U``, ``W_O`` and ``b_O``: either through per-layer primitives
(:class:`~harness.models.layered.LayeredForward`, ``resumable``: :meth:`run_from` skips the
layers before its start) or by hooking a model's own forward
(:class:`~harness.models.hf_causal.HFCausalLM`, where :meth:`run_from` recomputes them).
"""

from __future__ import annotations

import difflib
from abc import ABC, abstractmethod
from functools import lru_cache
from typing import Callable, Iterable, Mapping, Sequence, Union

import torch

#: ``z_fn(layer, z) -> z``: the adapters' replaceable point inside attention, on ``z`` ``[b, s, H, d_head]``.
ZFn = Callable[[int, torch.Tensor], torch.Tensor]
#: ``fn(act, name) -> act | None``: a forward hook at a named hook point.
HookFn = Callable[[torch.Tensor, str], Union[torch.Tensor, None]]
#: ``{name: fn or [fn, ...]}`` or ``[(name, fn), ...]`` (hooks at one point run in the given order).
FwdHooks = Union[Mapping[str, Union[HookFn, Sequence[HookFn]]], Sequence[tuple[str, HookFn]]]

_BLOCK_POINTS = ("hook_resid_pre", "attn.hook_z", "hook_resid_mid", "hook_resid_post")


@lru_cache(maxsize=None)
def point_names(n_layers: int) -> tuple[str, ...]:
    """Every hook point of an ``n_layers`` model, in execution order."""
    names = ["hook_embed"]
    for layer in range(n_layers):
        names += [f"blocks.{layer}.{p}" for p in _BLOCK_POINTS]
    names.append("ln_final.hook_normalized")
    return tuple(names)


@lru_cache(maxsize=None)
def _point_index(n_layers: int) -> dict[str, int]:
    return {name: i for i, name in enumerate(point_names(n_layers))}


def describe(x) -> str:
    """A short description of a value for error messages."""
    if isinstance(x, torch.Tensor):
        return f"tensor of shape {list(x.shape)} and dtype {x.dtype}"
    return f"{type(x).__name__}"


class HookedForward(ABC):
    """Running the model: the forward template, its hook points and the public ways to run it."""

    n_layers: int
    n_heads: int
    d_model: int
    d_head: int
    device: torch.device
    #: Whether :meth:`run_from` skips the layers before its start (per-layer adapters) or recomputes
    #: them (adapters over a model's full forward); callers that resume often choose by it.
    resumable: bool = False

    # ------------------------------------------------------- adapter primitives
    @property
    @abstractmethod
    def W_O(self) -> torch.Tensor:
        """Output projection per head, ``[L, H, d_head, d_model]``."""

    @property
    @abstractmethod
    def b_O(self) -> torch.Tensor:
        """Output-projection bias per layer, ``[L, d_model]`` (zeros if none)."""

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

    # ------------------------------------------------------------ public facts
    def hook_points(self) -> list[str]:
        """Names of every hook point, in execution order (see the module docstring)."""
        return list(point_names(self.n_layers))

    @property
    def vocab_size(self) -> int:
        """Number of logits per position."""
        return int(self._W_U.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        """The parameters' dtype (adapters keep one dtype)."""
        return self._W_U.dtype

    def unembed(self, resid: torch.Tensor, token_ids: torch.Tensor | Sequence[int] | None = None) -> torch.Tensor:
        """Final layer norm then unembedding: ``[..., d_model]`` -> ``[..., len(token_ids) or vocab]``."""
        return self._logits(self._ln_final(resid), self._check_token_ids(token_ids), False)

    # --------------------------------------------------------------- running
    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits ``[batch, seq, vocab]``."""
        return self.run_with_hooks(tokens)

    def run_with_hooks(
        self,
        tokens: torch.Tensor,
        fwd_hooks: FwdHooks | None = None,
        *,
        stop_at: str | None = None,
        position: int | None = None,
        token_ids: torch.Tensor | Sequence[int] | None = None,
        sparse_logit_grad: bool = False,
    ) -> torch.Tensor:
        """Run ``tokens`` ``[b, s]`` with ``fwd_hooks`` at named hook points.

        Returns logits ``[b, s, len(token_ids) or vocab]`` (``[b, ...]`` in position
        mode), or, with ``stop_at``, the activation at that hook point (after its
        hooks) without running the rest. ``sparse_logit_grad``: the unembedding's
        backward computes only the rows (positions) with a non-zero logit gradient
        and no weight gradient (exact; cheaper when a metric reads few positions).
        """
        tokens = self._check_tokens(tokens)
        if position is not None:
            position = _check_position(position, tokens.shape[1])
        return self._run(tokens, self._check_hooks(fwd_hooks), -1, self._stop_index(stop_at), position,
                         self._check_token_ids(token_ids), sparse_logit_grad)

    def run_from(
        self,
        start_at: str,
        act: torch.Tensor,
        fwd_hooks: FwdHooks | None = None,
        *,
        stop_at: str | None = None,
        position: int | None = None,
        token_ids: torch.Tensor | Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Continue a run from ``act``, the activation at hook point ``start_at``.

        ``start_at`` is any point except ``attn.hook_z`` (a head's output needs the
        residual it is added to: start at that block's ``hook_resid_pre`` and replace
        ``attn.hook_z`` with a hook). Hooks at ``start_at`` itself run on ``act``.
        Returns what :meth:`run_with_hooks` returns. In position mode an ``act``
        given at the last block's ``hook_resid_mid`` / ``hook_resid_post`` is that
        position only, ``[b, 1, d_model]``.
        """
        index = _point_index(self.n_layers)
        if start_at not in index or start_at.endswith("attn.hook_z"):
            raise ValueError(f"cannot start a run at {start_at!r}; use a residual point "
                             f"(e.g. 'blocks.0.hook_resid_pre'){_suggest(start_at, index)}")
        begin, end = index[start_at], self._stop_index(stop_at)
        if end is not None and end < begin:
            raise ValueError(f"stop_at {stop_at!r} comes before start_at {start_at!r}")
        if position is not None and begin <= index[f"blocks.{self.n_layers - 1}.hook_resid_pre"]:
            position = _check_position(position, act.shape[1])  # later starts hold the position only
        return self._run(act, self._check_hooks(fwd_hooks), begin, end, position,
                         self._check_token_ids(token_ids), False)

    def run_with_cache(
        self, tokens: torch.Tensor, return_logits: bool = True, names: Iterable[str] | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | dict[str, torch.Tensor]]:
        """``(logits [b, s, vocab], z [b, s, L, H, d_head])`` of one run.

        With ``names``, the second item is ``{name: activation}`` at those hook points
        instead of ``z``. With ``return_logits=False`` the run stops after the last
        point it must read and ``(None, ...)`` is returned (cheaper, e.g. a
        corrupted run for patching).
        """
        if names is None:
            wanted = [f"blocks.{l}.attn.hook_z" for l in range(self.n_layers)]
        else:
            wanted = list(names)
            self._check_hooks({name: [] for name in wanted})
        cache: dict[str, torch.Tensor] = {}

        def store(act: torch.Tensor, name: str) -> None:
            cache[name] = act

        hooks = {name: store for name in wanted}
        if return_logits:
            logits = self.run_with_hooks(tokens, hooks)
        else:
            index = _point_index(self.n_layers)
            logits = None
            if wanted:
                self.run_with_hooks(tokens, hooks, stop_at=max(wanted, key=index.__getitem__))
        if names is None:
            return logits, torch.stack([cache[name] for name in wanted], dim=2)
        return logits, cache

    # ------------------------------------------------------------- the template
    @abstractmethod
    def _run(self, x: torch.Tensor, hooks: dict[str, list[HookFn]], begin: int, end: int | None,
             position: int | None, token_ids: torch.Tensor | None, sparse_logit_grad: bool) -> torch.Tensor:
        """Run from hook point ``begin`` (-1 = tokens ``x``) to point ``end`` (None = logits), firing ``hooks``.

        Hooks at points before ``begin`` never fire. Position mode and ``token_ids`` as in
        :meth:`run_with_hooks`. Implemented by :class:`~harness.models.layered.LayeredForward` (the per-layer
        template) and by adapters that hook a model's own forward."""

    def _logits(self, h: torch.Tensor, token_ids: torch.Tensor | None, sparse_grad: bool) -> torch.Tensor:
        """Unembedding of the normalised residual ``h``, restricted to the ``token_ids`` columns if given."""
        w, bias = self._W_U, self._b_U
        if token_ids is not None:
            w, bias = w[token_ids], (None if bias is None else bias[token_ids])
        if sparse_grad and h.requires_grad:
            return _RowSparseUnembed.apply(h, w.detach(), None if bias is None else bias.detach())
        return torch.nn.functional.linear(h, w, bias)

    # ------------------------------------------------------------- validation
    def _check_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2:
            raise ValueError(f"tokens must be a LongTensor [batch, seq], got {describe(tokens)}")
        if tokens.dtype != torch.long:
            raise ValueError(f"tokens must have dtype torch.long, got {tokens.dtype}")
        return tokens.to(self.device)

    def _check_token_ids(self, token_ids) -> torch.Tensor | None:
        if token_ids is None:
            return None
        return torch.as_tensor(token_ids, dtype=torch.long, device=self.device).reshape(-1)

    def _check_hooks(self, fwd_hooks: FwdHooks | None) -> dict[str, list[HookFn]]:
        """``fwd_hooks`` as ``{name: [fn, ...]}``; unknown names raise ValueError with the closest names."""
        if not fwd_hooks:
            return {}
        pairs = fwd_hooks.items() if isinstance(fwd_hooks, Mapping) else fwd_hooks
        index = _point_index(self.n_layers)
        hooks: dict[str, list[HookFn]] = {}
        for name, fns in pairs:
            if name not in index:
                raise ValueError(f"unknown hook point {name!r}{_suggest(name, index)}; see hook_points()")
            fns = [fns] if callable(fns) else list(fns)
            if not all(callable(fn) for fn in fns):
                raise ValueError(f"hooks at {name!r} must be callables fn(act, name)")
            hooks.setdefault(name, []).extend(fns)
        return hooks

    def _stop_index(self, stop_at: str | None) -> int | None:
        if stop_at is None:
            return None
        index = _point_index(self.n_layers)
        if stop_at not in index:
            raise ValueError(f"unknown hook point {stop_at!r}{_suggest(stop_at, index)}; see hook_points()")
        return index[stop_at]


def _fire(hooks: dict[str, list[HookFn]], name: str, act: torch.Tensor) -> torch.Tensor:
    """Apply the hooks at ``name`` to ``act`` in order."""
    for fn in hooks.get(name, ()):
        out = fn(act, name)
        if out is not None:
            if not isinstance(out, torch.Tensor) or out.shape != act.shape:
                raise ValueError(f"the hook at {name!r} must return None or a tensor of shape "
                                 f"{list(act.shape)}, got {describe(out)}")
            act = out
    return act


def _check_position(position: int, s: int) -> int:
    if not -s <= position < s:
        raise ValueError(f"position {position} is out of range for sequences of length {s}")
    return position % s


def _suggest(name: str, index: Mapping[str, int]) -> str:
    close = difflib.get_close_matches(str(name), list(index), n=3)
    return f" (did you mean {', '.join(map(repr, close))}?)" if close else ""


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
