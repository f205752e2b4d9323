"""Read and replace activations of a :class:`~harness.models.base.HookedModel` at a hook point.

Hook points (``hook``) of block ``layer``:

- ``"resid"``: the residual stream *after* block ``layer`` (attention + MLP),
  ``[b, s, d_model]``;
- ``"z"``: the concatenated per-head outputs of block ``layer``'s attention
  before the output projection (Kissane et al.), ``[b, s, n_heads * d_head]``
  (head ``h`` is columns ``h * d_head : (h + 1) * d_head``).

Everything is written with the adapter primitives (``_embed``, ``_attn``,
``_mlp``, ``_block``, ``_unembed``), so it works for every adapter.  Runs
follow the caller's grad mode except :func:`acts_and_grads`.
"""

from __future__ import annotations

from typing import Callable

import torch

from harness.models.base import HookedModel

HOOKS = ("resid", "z")


def _check(model: HookedModel, layer: int, hook: str) -> None:
    if hook not in HOOKS:
        raise ValueError(f"unknown hook {hook!r}; use one of {', '.join(HOOKS)}")
    if not 0 <= layer < model.n_layers:
        raise ValueError(f"layer {layer} is outside [0, {model.n_layers})")


def hook_dim(model: HookedModel, hook: str) -> int:
    """Width of the activation at ``hook``."""
    return model.d_model if hook == "resid" else model.n_heads * model.d_head


def resid_before(model: HookedModel, tokens: torch.Tensor, layer: int) -> torch.Tensor:
    """The residual stream entering block ``layer``, ``[b, s, d_model]``."""
    x = model._embed(model._check_tokens(tokens))
    for l in range(layer):
        x = model._block(l, x, None)
    return x


def gather(model: HookedModel, tokens: torch.Tensor, layer: int, hook: str,
           resid_pre: torch.Tensor | None = None) -> torch.Tensor:
    """The activation at (``layer``, ``hook``) of a clean run, ``[b, s, width]``.

    ``resid_pre``: the residual entering ``layer`` if already computed.
    """
    _check(model, layer, hook)
    x = resid_before(model, tokens, layer) if resid_pre is None else resid_pre
    if hook == "resid":
        return model._block(layer, x, None)
    out: list[torch.Tensor] = []

    def record(l: int, z: torch.Tensor) -> torch.Tensor:
        out.append(z)
        return z

    model._attn(layer, x, record)
    z = out[0]
    return z.reshape(*z.shape[:2], -1)


def run_from(model: HookedModel, tokens: torch.Tensor, layer: int, hook: str, act: torch.Tensor,
             resid_pre: torch.Tensor | None = None, token_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Logits ``[b, s, vocab]`` of a run whose activation at (``layer``, ``hook``) is ``act``.

    ``act`` ``[b, s, width]`` replaces the activation at every position (splice
    in a reconstruction, zeros for zero-ablation, ...).  For ``"z"`` the
    residual entering ``layer`` is needed: pass ``resid_pre`` to skip
    recomputing it.  Differentiable in ``act`` (follows the caller's grad mode).
    """
    _check(model, layer, hook)
    b, s = tokens.shape
    if hook == "resid":
        if act.shape != (b, s, model.d_model):
            raise ValueError(f"resid replacement must be [{b}, {s}, {model.d_model}], got {list(act.shape)}")
        x = act
    else:
        width = model.n_heads * model.d_head
        if act.shape != (b, s, width):
            raise ValueError(f"z replacement must be [{b}, {s}, {width}], got {list(act.shape)}")
        x = resid_before(model, tokens, layer) if resid_pre is None else resid_pre
        z_new = act.reshape(b, s, model.n_heads, model.d_head)

        def replace(l: int, z: torch.Tensor) -> torch.Tensor:
            return z_new.to(z.dtype)

        x = model._mlp(layer, model._attn(layer, x, replace))
    for l in range(layer + 1, model.n_layers):
        x = model._block(l, x, None)
    return model._unembed(x, token_ids)


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

    with torch.no_grad():
        x = resid_before(model, tokens, layer)
        act = gather(model, tokens, layer, hook, resid_pre=x)
    with torch.enable_grad():
        leaf = act.detach().clone().requires_grad_(True)
        loss = loss_fn(run_from(model, tokens, layer, hook, leaf, resid_pre=x), tokens)
        (grad,) = torch.autograd.grad(loss, leaf)
    return act.detach(), grad.detach()
