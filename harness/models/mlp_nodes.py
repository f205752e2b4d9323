"""MLPs as circuit nodes: read, replace and differentiate each block's MLP output on the hook points.

A block's MLP output is ``hook_resid_post - hook_resid_mid`` (what the MLP adds to the residual stream,
``[b, s, d_model]``; for a parallel-residual block too, whose MLP reads ``hook_resid_pre`` but adds into the
same sum).  Everything here runs :meth:`~harness.models.forward.HookedForward.run_with_hooks` with hooks at
those two points, so it works for every adapter; attention-only models (``d_mlp == 0``) have no MLP nodes
and get a :class:`~harness.errors.HarnessError`.

- :meth:`MLPNodesMixin.mlp_outputs`: ``[b, s, L, d_model]`` of one run;
- :meth:`MLPNodesMixin.run_with_mlp_replaced`: logits of a run where one layer's MLP output is replaced
  (resample: the corrupted run's, mean: a per-position mean);
- :meth:`MLPNodesMixin.mlp_gradients`: ``(outputs, d metric / d outputs)`` from one forward and one backward;
- :meth:`MLPNodesMixin.mlp_replacement_gradient`: the gradient with respect to a replaced MLP output.
"""

from __future__ import annotations

from typing import Callable

import torch

from harness.errors import HarnessError
from harness.models.forward import HookFn, describe


class MLPNodesMixin:
    """MLP outputs as nodes.  Needs :class:`~harness.models.forward.HookedForward`."""

    def _check_mlps(self) -> None:
        if not int(getattr(self, "d_mlp", 0) or 0):
            raise HarnessError("this model has no MLPs (attention-only): it has no MLP nodes to score")

    def _mlp_points(self, layer: int) -> tuple[str, str]:
        return f"blocks.{layer}.hook_resid_mid", f"blocks.{layer}.hook_resid_post"

    def mlp_outputs(self, tokens: torch.Tensor) -> torch.Tensor:
        """Each block's MLP output ``[b, s, L, d_model]`` on ``tokens`` ``[b, s]`` (one forward, no logits)."""
        self._check_mlps()
        names = [p for l in range(self.n_layers) for p in self._mlp_points(l)]
        _, cache = self.run_with_cache(tokens, return_logits=False, names=names)
        return torch.stack([cache[post] - cache[mid] for mid, post in map(self._mlp_points, range(self.n_layers))],
                           dim=2)

    def run_with_mlp_replaced(self, tokens: torch.Tensor, layer: int, replacement: torch.Tensor) -> torch.Tensor:
        """Logits ``[b, s, vocab]`` of a run where layer ``layer``'s MLP output is ``replacement`` (broadcastable
        to ``[b, s, d_model]``: a corrupted run's outputs of that layer, or a per-position mean ``[s, d_model]``).
        Follows the caller's grad mode."""
        self._check_mlps()
        if not 0 <= int(layer) < self.n_layers:
            raise ValueError(f"layer must lie in [0, {self.n_layers}), got {layer}")
        mid_name, post_name = self._mlp_points(int(layer))
        mid: list[torch.Tensor] = []

        def keep_mid(act: torch.Tensor, name: str) -> None:
            mid.append(act)

        def replace_post(act: torch.Tensor, name: str) -> torch.Tensor:
            rep = replacement.to(act.dtype)
            if rep.shape[-2:] != act.shape[-2:]:
                raise ValueError(f"replacement must end in [seq, d_model] = {list(act.shape[-2:])}, got "
                                 f"{describe(replacement)}")
            return mid[-1] + rep

        return self.run_with_hooks(tokens, {mid_name: keep_mid, post_name: replace_post})

    def mlp_gradients(self, tokens: torch.Tensor,
                      metric_fn: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(outputs, d metric / d outputs)``, both ``[b, s, L, d_model]``, from one forward and one backward
        pass (the total derivative through every later layer, as in attribution patching).  ``metric_fn`` maps
        logits ``[b, s, vocab]`` to a scalar tensor; no parameter gradients are computed."""
        self._check_mlps()
        tokens = self._check_tokens(tokens)
        with torch.enable_grad():
            probes: list[torch.Tensor] = []
            outs: list[torch.Tensor] = [None] * self.n_layers  # type: ignore[list-item]
            hooks: list[tuple[str, HookFn]] = []
            for layer in range(self.n_layers):
                mid_name, post_name = self._mlp_points(layer)
                hooks += [(mid_name, _keep(outs, layer)), (post_name, _tap(outs, probes, layer))]
            metric = metric_fn(self.run_with_hooks(tokens, hooks))
            if not isinstance(metric, torch.Tensor) or metric.numel() != 1:
                raise ValueError(f"metric_fn must return a scalar tensor, got {describe(metric)}")
            grads = torch.autograd.grad(metric.reshape(()), probes, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(probes, grads)]
        return torch.stack(outs, dim=2), torch.stack(grads, dim=2).detach()

    def mlp_replacement_gradient(self, tokens: torch.Tensor, layer: int, replacement: torch.Tensor,
                                 metric_fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``d metric / d replacement`` of :meth:`run_with_mlp_replaced` (one forward, one backward), the shape
        of ``replacement``; no parameter gradients are computed."""
        rep = replacement.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            metric = metric_fn(self.run_with_mlp_replaced(tokens, layer, rep))
            if not isinstance(metric, torch.Tensor) or metric.numel() != 1:
                raise ValueError(f"metric_fn must return a scalar tensor, got {describe(metric)}")
            (grad,) = torch.autograd.grad(metric.reshape(()), rep)
        return grad


def _keep(outs: list, layer: int) -> HookFn:
    """Hook at ``hook_resid_mid``: remember it (the MLP output is taken at ``hook_resid_post``)."""

    def keep(act: torch.Tensor, name: str) -> None:
        outs[layer] = act

    return keep


def _tap(outs: list, probes: list, layer: int) -> HookFn:
    """Hook at ``hook_resid_post``: record the MLP output and add a zero probe whose gradient is d metric / d it."""

    def tap(act: torch.Tensor, name: str) -> torch.Tensor:
        outs[layer] = (act - outs[layer]).detach()
        probe = torch.zeros_like(act, requires_grad=True)
        probes.append(probe)
        return act + probe

    return tap
