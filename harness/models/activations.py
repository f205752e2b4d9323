"""Read and replace one layer's activation of a :class:`~harness.models.base.HookedModel`.

The reconstruction tasks' two sites (``hook``) of block ``layer``, each one named
hook point:

- ``"resid"``: ``blocks.{layer}.hook_resid_post``, the residual stream *after*
  block ``layer`` (attention + MLP), ``[b, s, d_model]``;
- ``"z"``: ``blocks.{layer}.attn.hook_z`` flattened, the concatenated per-head
  outputs before the output projection (Kissane et al.), ``[b, s, n_heads * d_head]``
  (head ``h`` is columns ``h * d_head : (h + 1) * d_head``).

Written with the public hook-point API only (``run_with_hooks``, ``run_from``),
as an example of it. Runs follow the caller's grad mode except :func:`acts_and_grads`.
"""

from __future__ import annotations

from typing import Callable

import torch

from harness.models.base import HookedModel

HOOKS = ("resid", "z")


def check_hook(model: HookedModel, layer: int, hook: str) -> None:
    """ValueError unless ``hook`` is one of :data:`HOOKS` and ``layer`` is a layer of ``model``."""
    if hook not in HOOKS:
        raise ValueError(f"unknown hook {hook!r}; use one of {', '.join(HOOKS)}")
    if not 0 <= layer < model.n_layers:
        raise ValueError(f"layer {layer} is outside [0, {model.n_layers})")


def hook_dim(model: HookedModel, hook: str) -> int:
    """Width of the activation at ``hook``."""
    return model.d_model if hook == "resid" else model.n_heads * model.d_head


def hook_point(layer: int, hook: str) -> str:
    """The hook-point name of (``layer``, ``hook``)."""
    return f"blocks.{layer}.hook_resid_post" if hook == "resid" else f"blocks.{layer}.attn.hook_z"


def resid_before(model: HookedModel, tokens: torch.Tensor, layer: int) -> torch.Tensor:
    """The residual stream entering block ``layer`` (``blocks.{layer}.hook_resid_pre``), ``[b, s, d_model]``."""
    return model.run_with_hooks(tokens, stop_at=f"blocks.{layer}.hook_resid_pre")


def gather(model: HookedModel, tokens: torch.Tensor, layer: int, hook: str,
           resid_pre: torch.Tensor | None = None) -> torch.Tensor:
    """The activation at (``layer``, ``hook``) of a clean run, ``[b, s, width]``.

    ``resid_pre``: the residual entering ``layer`` if already computed.
    """
    check_hook(model, layer, hook)
    name = hook_point(layer, hook)
    if resid_pre is None:
        act = model.run_with_hooks(tokens, stop_at=name)
    else:
        act = model.run_from(f"blocks.{layer}.hook_resid_pre", resid_pre, stop_at=name)
    return act if hook == "resid" else act.reshape(*act.shape[:2], -1)


def run_from(model: HookedModel, tokens: torch.Tensor, layer: int, hook: str, act: torch.Tensor,
             resid_pre: torch.Tensor | None = None, token_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Logits ``[b, s, vocab]`` of a run whose activation at (``layer``, ``hook``) is ``act``.

    ``act`` ``[b, s, width]`` replaces the activation at every position (splice
    in a reconstruction, zeros for zero-ablation, ...).  For ``"z"`` the
    residual entering ``layer`` is needed: pass ``resid_pre`` to skip
    recomputing it.  Differentiable in ``act`` (follows the caller's grad mode).
    """
    check_hook(model, layer, hook)
    b, s = tokens.shape
    width = hook_dim(model, hook)
    if act.shape != (b, s, width):
        raise ValueError(f"{hook} replacement must be [{b}, {s}, {width}], got {list(act.shape)}")
    if hook == "resid":
        return model.run_from(hook_point(layer, hook), act, token_ids=token_ids)
    z_new = act.reshape(b, s, model.n_heads, model.d_head)

    def replace(z: torch.Tensor, name: str) -> torch.Tensor:
        return z_new.to(z.dtype)

    hooks = {hook_point(layer, hook): replace}
    if resid_pre is None:
        return model.run_with_hooks(tokens, hooks, token_ids=token_ids)
    return model.run_from(f"blocks.{layer}.hook_resid_pre", resid_pre, hooks, token_ids=token_ids)


def acts_and_grads(
    model: HookedModel,
    tokens: torch.Tensor,
    layer: int,
    hook: str,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(act, d loss / d act)`` at (``layer``, ``hook``), both ``[b, s, width]``, detached.

    ``loss_fn(logits, tokens) -> scalar``; default: the *sum* over positions of
    the next-token cross-entropy, so row ``t`` of the gradient is how the total
    loss of the sequence moves with the activation at ``t``.  Only the
    activation is differentiated (no parameter gradients).
    """
    from harness.metrics.reconstruction import next_token_cross_entropy

    if loss_fn is None:
        def loss_fn(logits, toks):
            return next_token_cross_entropy(logits, toks).sum()

    tokens = tokens.to(model.device)  # the loss reads the tokens next to the logits
    with torch.no_grad():
        x = resid_before(model, tokens, layer)
        act = gather(model, tokens, layer, hook, resid_pre=x)
    with torch.enable_grad():
        leaf = act.detach().clone().requires_grad_(True)
        loss = loss_fn(run_from(model, tokens, layer, hook, leaf, resid_pre=x), tokens)
        (grad,) = torch.autograd.grad(loss, leaf)
    return act.detach(), grad.detach()
