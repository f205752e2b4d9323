"""The per-layer forward template: adapters that expose their blocks' halves as primitives.

:class:`LayeredForward` implements :meth:`~harness.models.forward.HookedForward._run` by calling
the adapter's primitives in sequence (``_embed``, then per layer ``_attn`` / ``_attn_at`` and
``_mlp``, then ``_ln_final``), firing the named hook points between them. Because every block
is a separate call, a run can start from any cached residual (:meth:`run_from` at cost of the
remaining layers only, ``resumable`` is True) and position mode computes only the read-out
position of the last block. The harness's own GPT uses it; adapters that can only hook a
model's full forward (Hugging Face models) implement ``_run`` themselves.
"""

from __future__ import annotations

from abc import abstractmethod

import torch

from harness.models.forward import HookedForward, HookFn, ZFn, _fire, point_names


class LayeredForward(HookedForward):
    """The forward template over per-layer primitives (see the module docstring)."""

    #: A run can start at any residual point without recomputing earlier layers.
    resumable = True

    @abstractmethod
    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Residual stream entering layer 0, ``[b, s, d_model]``."""

    @abstractmethod
    def _attn(self, layer: int, resid: torch.Tensor, z_fn: ZFn | None) -> torch.Tensor:
        """The attention half of a block with ``z_fn`` at its z point: ``resid + attn_out`` (the "mid" residual)."""

    def _attn_at(self, layer: int, resid: torch.Tensor, z_fn: ZFn | None, position: int) -> torch.Tensor:
        """The attention half for the single query ``position`` (>= 0): ``[b, 1, d_model]``.

        ``z_fn`` sees ``z`` of that position only, ``[b, 1, H, d_head]``. This default
        computes every position; adapters override it to skip that work.
        """
        p = position

        def at(l: int, z: torch.Tensor) -> torch.Tensor:
            return torch.cat([z[:, :p], z_fn(l, z[:, p : p + 1]), z[:, p + 1 :]], dim=1)

        return self._attn(layer, resid, None if z_fn is None else at)[:, p : p + 1]

    @abstractmethod
    def _mlp(self, layer: int, resid_mid: torch.Tensor) -> torch.Tensor:
        """The MLP half of a block: ``resid_mid + mlp(...)`` (identity when attention-only)."""


    def _run(self, x: torch.Tensor, hooks: dict[str, list[HookFn]], begin: int, end: int | None,
             position: int | None, token_ids: torch.Tensor | None, sparse_logit_grad: bool) -> torch.Tensor:
        """The forward template: from point ``begin`` (-1 = tokens ``x``) to point ``end`` (None = logits)."""
        names = point_names(self.n_layers)
        if begin < 0:
            x, begin = self._embed(x), 0
        if begin == 0:
            x = _fire(hooks, names[0], x)
            if end == 0:
                return x
        for layer in range(self.n_layers):
            i = 1 + 4 * layer  # index of blocks.{layer}.hook_resid_pre
            if begin <= i:
                x = _fire(hooks, names[i], x)
                if end == i:
                    return x
                seen: list[torch.Tensor] = []
                z_fn = _z_fn(hooks, names[i + 1], seen if end == i + 1 else None)
                if position is not None and layer == self.n_layers - 1:
                    x = self._attn_at(layer, x, z_fn, position % x.shape[1])
                else:
                    x = self._attn(layer, x, z_fn)
                if end == i + 1:
                    return seen[0]
            if begin <= i + 2:
                x = _fire(hooks, names[i + 2], x)
                if end == i + 2:
                    return x
                x = self._mlp(layer, x)
            if begin <= i + 3:
                x = _fire(hooks, names[i + 3], x)
                if end == i + 3:
                    return x
        n = len(names) - 1  # ln_final.hook_normalized
        if begin < n:
            x = self._ln_final(x[:, 0] if position is not None else x)
        x = _fire(hooks, names[n], x)
        if end == n:
            return x
        return self._logits(x, token_ids, sparse_logit_grad)



def _z_fn(hooks: dict[str, list[HookFn]], name: str, seen: list | None) -> ZFn | None:
    """The adapter-level ``z_fn`` running the hooks at ``name`` (None when there is nothing to do)."""
    if not hooks.get(name) and seen is None:
        return None

    def z_fn(layer: int, z: torch.Tensor) -> torch.Tensor:
        z = _fire(hooks, name, z)
        if seen is not None:
            seen.append(z)
        return z

    return z_fn
