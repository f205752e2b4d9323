"""AtP* (Kramár, Lieberum, Shah & Nanda 2024, arXiv:2403.00745) at node level: heads are the nodes.

Attribution patching (AtP, the ``eap`` baseline) estimates the effect of patching head ``h``
(its ``z`` replaced by the corrupted run's) to first order::

    AtP(h) = sum_{batch, pos, d} (z_corr - z_clean)_h * dM/dz_h          (gradient at the clean run)

AtP* fixes two ways this misses heads (false negatives):

**QK fix** (attention saturation).  When ``h``'s output reaches a later head's query or key and that
head's softmax is saturated, the gradient through the softmax is ~0 although patching ``h`` moves the
pattern from one saturated state to another.  The paper recomputes the softmax exactly for patched
queries and keys and linearises only after the attention pattern.  The harness's nodes are head
outputs and its hook points expose no queries, keys or patterns, so the same idea is applied one
level up, through public hook points only: for every later layer ``l'`` the *exact* response of its
attention sublayer to ``h``'s direct contribution ``delta_h = (z_corr - z_clean)_h @ W_O[h]`` is
computed by a run from ``blocks.{l'}.hook_resid_pre`` (clean residual + ``delta_h``) to
``blocks.{l'}.attn.hook_z``, and replaces the linear response that AtP uses for that path::

    AtP_QK(h) = AtP(h) + sum_{l' > l(h)} [ (z_l'(r_l' + delta_h) - z_l'(r_l')) . dM/dz_l'
                                           - delta_h . J_l'^T dM/dz_l' ]

``r_l'`` is the clean ``hook_resid_pre`` of layer ``l'``, ``J_l'`` the Jacobian of its heads' ``z`` with
respect to it (``J^T g`` is one backward through that sublayer alone).  Exact: queries, keys, values,
the layer norm and the softmax of every later layer, for the path from ``h`` straight through the
residual stream into it.  Linearised (as in AtP): everything after that layer's ``z`` (so chains
``h -> l1 -> l2`` are exact at the first hop only), and paths into later attention that pass through
an MLP first.  So in a two-layer attention-only model without layer norm and a metric linear in the
logits (nothing non-linear after layer 1's attention), ``AtP_QK`` is activation patching exactly,
whatever the weights; a head whose effect runs through a saturated later head gets its true effect up
to the linearisation after that head.  ``qk_window`` limits the exact recomputation to the next
``qk_window`` layers (cheaper; farther layers keep AtP's linear term).  The paper defines the QK fix
on query and key nodes (the softmax recomputed with the patched query or key, the change of the
pattern then linearised); with head outputs as the nodes, the nearest exact unit the public hook
points offer is a later layer's whole attention sublayer, values included.

**GradDrop** (cancellation between direct and indirect paths).  The paper defines, for each layer
``l = 1..L``, the estimate with the gradient through layer ``l``'s output to the residual stream
dropped (``do(n_l^out <- n_l^out(x_clean))`` on the backward pass; the forward is unchanged), and
scores ``1/(L-1) sum_l |estimate_l|``.  Here a "layer" is one block (attention + MLP): a hook at its
``hook_resid_post`` passes the block's output on detached, plus the block input for the skip
connection.  For a head in layer ``l(h)``: dropping an earlier layer changes nothing (the plain
estimate), dropping its own layer gives 0, dropping a later layer removes the paths through it; so
one extra gradient pass per layer ``1..L-1`` is needed.  The QK-fix terms use each variant's
gradients (the exact ``z`` responses are shared).  The absolute value is taken of each variant's
estimate of the effect on the task metric (the mean over prompts), as the task's activation patching
measures it.  A one-layer model has no GradDrop (the plain ``|AtP_QK|``).

GradDrop's average over layers scales down heads whose effect runs through later layers: a head whose
effect goes entirely through one later head keeps ``(L - 2) / (L - 1)`` of it (0 in a two-layer
model, 1/2 in the three-layer planted models), and one at the start of a chain through every later
layer keeps none of what runs through that chain; ``grad_drop=False`` gives ``|AtP_QK|``.

Cost: 1 forward on the corrupted prompts; ``L`` forward + backward passes on the clean ones
(``head_gradients``; 1 without GradDrop); per later layer ``l'``, one run of its attention sublayer with
autograd (the VJPs ``J^T g`` of every gradient variant: a backward through that sublayer alone,
which the task's pass counter does not see) and the exact responses of the ``H * l'`` earlier heads
(``H * min(l', qk_window)``), stacked along the batch in chunks, each chunk one ``run_from`` that
stops at that layer's ``z``.  In all ``H L (L-1) / 2`` attention-sublayer evaluations: about
``H (L-1) / 2`` times the attention share of a forward pass, against activation patching's
``H (L+1) / 2`` forward passes (``ablate_many``, which resumes mid-model).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from harness.core.registry import register_method
from harness.models.base import HookedModel
from harness.protocols.circuits import CircuitData, CircuitMethod

#: Largest stacked input of one exact-response run (sets x batch x seq x 3 d_model elements): 256 MiB in float32.
_CHUNK_ELEMENTS = 2**26


@torch.no_grad()  # the gradient passes enable autograd themselves
def atp_star_estimates(model: HookedModel, data: CircuitData, qk_fix: bool = True, grad_drop: bool = True,
                       qk_window: int | None = None) -> tuple[list[int | None], np.ndarray]:
    """Signed AtP* estimates of each head's effect ``m(clean) - m(head patched)``, one per gradient variant.

    Returns ``(drops, est)``: ``drops[j]`` is the block whose output's gradient variant ``j`` drops
    (``None`` = no drop; with ``grad_drop``, blocks ``1..L-1`` follow), ``est`` float64 ``[len(drops), L, H]``.
    ``est[0]`` is ``AtP_QK`` (``AtP`` itself when ``qk_fix`` is False); in a variant that drops block ``k``,
    heads of layer ``k`` are 0 and heads of later layers equal ``est[0]``.
    """
    L, H = model.n_layers, model.n_heads
    window = _check_window(qk_window)
    drops: list[int | None] = [None] + (list(range(1, L)) if grad_drop else [])
    z_clean, resid_pre, grads = _gradient_variants(model, data, drops)  # grads [K, b, s, L, H, dh]
    z_corr = model.run_with_cache(data.corrupted, return_logits=False)[1].to(z_clean.dtype)
    diff = z_corr - z_clean
    delta_m = torch.einsum("bslhd,kbslhd->klh", diff, grads).to(torch.float64)  # AtP per variant
    if qk_fix and L > 1:
        delta_m += _qk_corrections(model, diff, resid_pre, grads, window)
    for j, k in enumerate(drops):
        if k is not None:
            delta_m[j, k] = 0.0  # the do() freezes layer k's own heads' output: no gradient reaches them
    return drops, (-delta_m).cpu().numpy()  # the harness's sign: m(clean) - m(patched)


def atp_star_scores(model: HookedModel, data: CircuitData, qk_fix: bool = True, grad_drop: bool = True,
                    qk_window: int | None = None) -> np.ndarray:
    """AtP* head scores ``[L, H]`` float64 (non-negative; see the module docstring).

    With ``grad_drop`` (and ``L > 1``): ``1/(L-1) sum_{l=0..L-1} |estimate with block l's output gradient
    dropped|``, where for a head in layer ``l(h)`` the ``l(h)`` variants dropping earlier blocks equal the
    plain estimate and the one dropping its own block is 0.  Otherwise ``|AtP_QK|``.
    """
    drops, est = atp_star_estimates(model, data, qk_fix, grad_drop, qk_window)
    L = model.n_layers
    if len(drops) == 1:
        return np.abs(est[0])
    layer = np.arange(L)[:, None]
    total = layer * np.abs(est[0])  # blocks 0..l(h)-1 dropped: the plain estimate
    for j, k in enumerate(drops[1:], start=1):
        total += np.where(k > layer, np.abs(est[j]), 0.0)  # later blocks; own block contributes 0
    return total / (L - 1)


# ------------------------------------------------------------------ gradients
def _check_window(qk_window) -> int | None:
    if qk_window is None:
        return None
    if isinstance(qk_window, bool) or not isinstance(qk_window, int) or qk_window < 1:
        raise ValueError(f"qk_window must be None (every later layer) or an integer >= 1, got {qk_window!r}")
    return qk_window


def _gradient_variants(model: HookedModel, data: CircuitData, drops: list[int | None]):
    """``(z_clean, resid_pre, grads)``: the clean ``z`` ``[b, s, L, H, dh]``, the clean ``hook_resid_pre`` of
    every layer, and ``dM/dz`` of every variant stacked ``[K, b, s, L, H, dh]`` (one ``head_gradients`` each)."""
    L = model.n_layers
    resid_pre: list[torch.Tensor] = [None] * L  # type: ignore[list-item]

    def keep(layer: int):
        def store(act: torch.Tensor, name: str) -> None:
            resid_pre[layer] = act.detach()
        return store

    read = {f"blocks.{l}.hook_resid_pre": keep(l) for l in range(L)}
    z_clean, first = model.head_gradients(data.clean, data.metric.from_logits, fwd_hooks=read)
    grads = [first]
    for k in drops[1:]:
        grads.append(model.head_gradients(data.clean, data.metric.from_logits, fwd_hooks=_drop_block(k))[1])
    return z_clean, resid_pre, torch.stack(grads)


def _drop_block(k: int) -> dict[str, Callable]:
    """Hooks that stop the gradient through block ``k``'s output (attention + MLP) but not its skip connection.

    The values are unchanged exactly: ``post.detach() + (pre - pre.detach())`` adds an exact zero."""
    seen: dict[str, torch.Tensor] = {}

    def read_input(act: torch.Tensor, name: str) -> None:
        seen["pre"] = act

    def detach_branches(act: torch.Tensor, name: str) -> torch.Tensor:
        pre = seen.pop("pre")
        return act.detach() + (pre - pre.detach())

    return {f"blocks.{k}.hook_resid_pre": read_input, f"blocks.{k}.hook_resid_post": detach_branches}


# ---------------------------------------------------------------- the QK fix
def _qk_corrections(model: HookedModel, diff: torch.Tensor, resid_pre: list[torch.Tensor], grads: torch.Tensor,
                    window: int | None) -> torch.Tensor:
    """``[K, L, H]`` float64: for each head, the sum over later layers ``l'`` (within ``window``) of the exact
    minus the linear response of layer ``l'``'s heads to the head's direct contribution, dotted with each
    variant's ``dM/dz_l'``."""
    K, L, H = grads.shape[0], model.n_layers, model.n_heads
    W_O = model.W_O.to(diff.dtype)
    out = torch.zeros(K, L, H, dtype=torch.float64, device=diff.device)
    for later in range(1, L):
        first = 0 if window is None else max(0, later - window)
        g = grads[:, :, :, later]  # [K, b, s, H, dh]
        z0, vjp = _sublayer_vjp(model, later, resid_pre[later], g)  # vjp [K, b, s, d_model]
        # delta_h . J^T g = (z_corr - z_clean)_h . (W_O[h] J^T g), every earlier head at once
        linear = torch.einsum("bslhd,lhdm,kbsm->klh", diff[:, :, first:later], W_O[first:later], vjp)
        heads = [(l, h) for l in range(first, later) for h in range(H)]
        exact = _exact_responses(model, later, resid_pre[later], diff, heads, z0, g)  # [n, K]
        out[:, first:later] += (exact.T.reshape(K, later - first, H) - linear).to(torch.float64)
    return out


def _sublayer_vjp(model: HookedModel, layer: int, resid: torch.Tensor, g: torch.Tensor):
    """``(z, J^T g_k for each k)``: layer ``layer``'s clean ``z`` ``[b, s, H, dh]`` recomputed from its
    ``hook_resid_pre`` and the vector-Jacobian products of the variants' ``g`` ``[K, b, s, H, dh]``,
    ``[K, b, s, d_model]`` (a backward through that attention sublayer alone)."""
    with torch.enable_grad():
        r = resid.detach().requires_grad_(True)
        z = model.run_from(f"blocks.{layer}.hook_resid_pre", r, stop_at=f"blocks.{layer}.attn.hook_z")
        vjps = [torch.autograd.grad(z, r, grad_outputs=g[k].to(z.dtype), retain_graph=k + 1 < len(g))[0]
                for k in range(len(g))]
    return z.detach(), torch.stack(vjps)


@torch.no_grad()
def _exact_responses(model: HookedModel, layer: int, resid: torch.Tensor, diff: torch.Tensor,
                     heads: list[tuple[int, int]], z0: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``[n, K]``: ``(z(resid + delta_h) - z(resid)) . g_k`` for each of the ``n`` earlier ``heads``, where
    ``delta_h = diff_h @ W_O[h]`` is the head's patched change to the residual stream and ``z`` layer
    ``layer``'s heads are recomputed exactly (runs from its ``hook_resid_pre``, heads stacked in chunks)."""
    b, s, d = resid.shape
    per_chunk = max(1, _CHUNK_ELEMENTS // (b * s * 3 * d))
    start, stop = f"blocks.{layer}.hook_resid_pre", f"blocks.{layer}.attn.hook_z"
    W_O = model.W_O.to(diff.dtype)
    parts = []
    for i in range(0, len(heads), per_chunk):
        ls, hs = (list(t) for t in zip(*heads[i : i + per_chunk]))
        delta = torch.einsum("bsnd,ndm->nbsm", diff[:, :, ls, hs], W_O[ls, hs])  # [m, b, s, d_model]
        m = delta.shape[0]
        z = model.run_from(start, (resid.unsqueeze(0) + delta).reshape(m * b, s, d), stop_at=stop)
        dz = z.reshape(m, b, s, *z.shape[2:]) - z0.unsqueeze(0)
        parts.append(torch.einsum("nbshd,kbshd->nk", dz, g.to(dz.dtype)))
    return torch.cat(parts)


# ------------------------------------------------------------------- method
@register_method(
    "atp-star",
    version="1",
    description="AtP* (Kramar, Lieberum, Shah & Nanda 2024, arXiv:2403.00745) at node level: attribution "
    "patching whose paths into later layers' attention (queries, keys, values, softmax) are recomputed "
    "exactly from each head's patched output (QK fix) and linearised after, with GradDrop "
    "(1/(L-1) sum over blocks of |estimate with that block's output gradient dropped|)",
)
class AtPStar(CircuitMethod):
    """AtP* at node level (see :mod:`harness.methods.atp_star`).

    ``qk_fix``: recompute later layers' attention exactly for each head's patched output (else plain AtP
    paths); ``grad_drop``: average ``|estimate|`` over the gradient variants that drop one block's output
    (else ``|estimate|``); ``qk_window``: how many later layers get the exact recomputation (None: all).
    """

    selftest_params = {"qk_window": 1}

    def __init__(self, qk_fix: bool = True, grad_drop: bool = True, qk_window: int | None = None):
        self.qk_fix = qk_fix
        self.grad_drop = grad_drop
        self.qk_window = qk_window

    def score_heads(self, model: HookedModel, data: CircuitData) -> np.ndarray:
        return atp_star_scores(model, data, self.qk_fix, self.grad_drop, self.qk_window)
