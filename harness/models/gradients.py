"""Gradients at the hook points: ``d metric / d z`` of every head, of a patched run's replacement, and of a
mixed run's per-head coefficients.

All are written on :meth:`~harness.models.forward.HookedForward.run_with_hooks`
with hooks at ``blocks.{l}.attn.hook_z``; they enable autograd themselves and
return detached tensors, and compute no parameter gradients.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from harness.models.forward import FwdHooks, HookFn, describe

#: ``metric_fn(logits [b, s, vocab]) -> scalar tensor``
MetricFn = Callable[[torch.Tensor], torch.Tensor]


class GradientsMixin:
    """Attribution gradients. Needs :class:`HookedForward` and :class:`PatchingMixin`."""

    def head_gradients(self, tokens: torch.Tensor, metric_fn: MetricFn,
                       fwd_hooks: FwdHooks | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z, d metric / d z)``, both ``[b, s, L, H, d_head]``, from one forward and one backward pass.

        ``metric_fn`` maps logits ``[b, s, vocab]`` to a scalar tensor. The gradient
        is the total derivative through every later layer (as in attribution
        patching); no parameter gradients are computed or accumulated.
        ``fwd_hooks`` (optional, as in :meth:`run_with_hooks`) run in the same pass, before
        the gradient taps at ``attn.hook_z``: e.g. to read the clean residual stream, or to
        stop the gradient through one block (GradDrop) without changing any value.
        """
        tokens = self._check_tokens(tokens)
        with torch.enable_grad():
            probe = torch.zeros(self._z_shape(tokens), dtype=self.dtype, device=self.device, requires_grad=True)
            zs: list[torch.Tensor] = [None] * self.n_layers  # type: ignore[list-item]
            hooks = [(name, fn) for name, fns in self._check_hooks(fwd_hooks).items() for fn in fns]
            hooks += [(f"blocks.{l}.attn.hook_z", _tap(zs, probe, l)) for l in range(self.n_layers)]
            metric = metric_fn(self.run_with_hooks(tokens, hooks, sparse_logit_grad=True))
            if not isinstance(metric, torch.Tensor) or metric.numel() != 1:
                raise ValueError(f"metric_fn must return a scalar tensor, got {describe(metric)}")
            (grad,) = torch.autograd.grad(metric.reshape(()), probe, allow_unused=True)
        if grad is None:
            grad = torch.zeros_like(probe)
        return torch.stack(zs, dim=2), grad.detach()

    def replacement_gradient(
        self, tokens: torch.Tensor, mask: torch.Tensor, replacement: torch.Tensor, metric_fn: MetricFn,
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

    def mix_gradient(
        self, tokens: torch.Tensor, mix: torch.Tensor, replacement, loss_fn: Callable[[torch.Tensor], torch.Tensor], *,
        position: int | None = None, token_ids: torch.Tensor | Sequence[int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, d loss / d mix)`` of :meth:`run_with_heads_mixed` (one forward, one backward).

        ``loss_fn`` maps that run's output (logits ``[b, s, vocab]``, or ``[b, len(token_ids) or vocab]`` in
        position mode) to a scalar tensor.  Returns the loss (a detached scalar) and the gradient with the
        shape of ``mix`` (``[L, H]`` or ``[b, L, H]``): what a method learning a mask over the heads chains
        into its mask parameters.  No parameter gradients are computed.
        """
        with torch.enable_grad():
            m = mix.detach().clone().requires_grad_(True)
            loss = loss_fn(self.run_with_heads_mixed(tokens, m, replacement, position=position, token_ids=token_ids))
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise ValueError(f"loss_fn must return a scalar tensor, got {describe(loss)}")
            (grad,) = torch.autograd.grad(loss.reshape(()), m, allow_unused=True)
        return loss.detach().reshape(()), torch.zeros_like(m) if grad is None else grad


def _tap(zs: list, probe: torch.Tensor, layer: int) -> HookFn:
    """Hook at ``attn.hook_z`` of ``layer``: record ``z`` and add the zero probe whose gradient is ``d metric / d z``."""

    def tap(z: torch.Tensor, name: str) -> torch.Tensor:
        zs[layer] = z.detach()
        return z + probe[:, :, layer]

    return tap
