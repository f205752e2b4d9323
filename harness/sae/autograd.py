"""A TopK sparse autoencoder forward whose backward touches only the selected latents.

:func:`topk_sae_forward` returns the reconstruction (and the AuxK
reconstruction of the residual from dead latents).  Its backward computes
every gradient from the ``k`` (and ``k_aux``) selected latents of each row:

- decoder values: ``W_dec[idx] . g`` (:func:`~harness.sae.kernels.sparse_rowdot`);
- ``W_dec``: ``S^T g`` and ``W_enc``: ``S'^T (x - b_dec)`` as embedding-bags over
  latents (:class:`~harness.sae.kernels.LatentPattern`, one sort per step);
- ``b_enc``: an ``index_add``; ``b_dec``: ``sum g - grad_b_enc W_enc`` (the row sum of ``S' W_enc`` is the
  per-latent sum of the entries times ``W_enc``: one mat-vec, no gather);

so a training step does one dense matmul (the encoder's) instead of the five
of a dense TopK SAE (encode, dense decode, and three in the backward); with the
bf16 prefilter (``prefilter=``, :mod:`harness.sae.bf16_select`) that one matmul
runs in bf16 and only the candidates' pre-activations in fp32, with the same selection.  With
``batch=True`` the selection is BatchTopK's (:func:`~harness.sae.kernels.batch_topk_relu`:
the ``k * N`` largest of the batch, padded per row with value-0 slots, which get
no gradient).

:func:`sparse_encode` is the encoder half on its own, for architectures whose
loss needs the selected values themselves (Matryoshka's nested decodes): the
pre-activations at given latents, with the same sparse backward.
"""

from __future__ import annotations

import torch

from harness.sae.bf16_select import PrefilterStats, prefiltered_topk_relu
from harness.sae.kernels import (
    MMAP_THRESHOLD_BYTES,
    LatentPattern,
    Workspace,
    batch_topk_relu,
    dead_columns_topk_relu,
    dead_topk_relu,
    encoder_preacts,
    sparse_decode,
    sparse_rowdot,
    topk_relu,
)


def _encoder_grads(idx: torch.Tensor, gv: torch.Tensor, xc: torch.Tensor, W_enc: torch.Tensor, need_xc: bool,
                   need_We: bool, need_be: bool, pattern: LatentPattern | None = None,
                   out_We: torch.Tensor | None = None):
    """Gradients of ``sum gv[i, j] * pre[i, idx[i, j]]`` (``pre = xc W_enc^T + b_enc``) with respect to
    ``xc`` ``[N, d]``, ``W_enc`` ``[n, d]`` (into ``out_We`` when given) and ``b_enc`` ``[n]`` (None where not
    needed), from the entries only."""
    n_lat = W_enc.shape[0]
    grad_xc = sparse_decode(idx, gv, W_enc) if need_xc else None
    grad_We = (pattern or LatentPattern(idx, n_lat)).matmul(gv, xc, out_We) if need_We else None
    grad_be = None
    if need_be:
        grad_be = torch.zeros(n_lat, dtype=gv.dtype, device=gv.device).index_add_(0, idx.reshape(-1), gv.reshape(-1))
    return grad_xc, grad_We, grad_be


class _TopKSAE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, W_enc, b_enc, W_dec, b_dec, k, select_scale, dead_idx, k_aux, batch, workspace, prefilter):
        xc = x - b_dec
        if prefilter is not None and not batch and select_scale is None:
            pre = None  # the bf16 prefilter's selection never forms the fp32 pre-activations
            vals, idx = prefiltered_topk_relu(xc, W_enc, b_enc, k, workspace, prefilter)
        else:
            pre = encoder_preacts(xc, W_enc, b_enc, workspace)  # not kept: the backward needs only the selection
            vals, idx = batch_topk_relu(pre, k) if batch else topk_relu(pre, k, select_scale)
        x_hat = sparse_decode(idx, vals, W_dec, b_dec)
        if dead_idx is not None and k_aux > 0 and dead_idx.numel() > 0:
            aux_vals, aux_idx = dead_topk_relu(pre, dead_idx, k_aux) if pre is not None else \
                _dead_topk_exact(xc, W_enc, b_enc, dead_idx, k_aux)
            aux_hat = sparse_decode(aux_idx, aux_vals, W_dec)
        else:
            aux_idx = aux_vals = None
            aux_hat = x_hat.new_zeros(0)
        ctx.save_for_backward(xc, W_enc, W_dec, idx, vals, aux_idx, aux_vals)
        ctx.workspace = workspace
        ctx.mark_non_differentiable(idx, vals)
        return x_hat, aux_hat, vals, idx

    @staticmethod
    def backward(ctx, g, g_aux, _gv, _gi):
        xc, W_enc, W_dec, idx, vals, aux_idx, aux_vals = ctx.saved_tensors
        n_rows, n_lat = xc.shape[0], W_enc.shape[0]
        need_x, need_We, need_be, need_Wd, need_bd = ctx.needs_input_grad[:5]
        has_aux = aux_idx is not None and g_aux is not None and g_aux.numel() > 0

        # gradient at the selected latents' values, through the ReLU
        gv = sparse_rowdot(idx, W_dec, g).mul_(vals > 0)
        if has_aux:
            gva = sparse_rowdot(aux_idx, W_dec, g_aux).mul_(aux_vals > 0)
            all_idx = torch.cat([idx, aux_idx], 1)
            all_gv = torch.cat([gv, gva], 1)
        else:
            all_idx, all_gv = idx, gv

        grad_x = grad_Wd = grad_bd = None
        pattern = LatentPattern(all_idx, n_lat) if need_We or need_Wd else None
        # b_dec's gradient needs only the row sum of grad_xc, which is (sum of gv per latent) . W_enc: b_enc's
        # gradient times W_enc, one mat-vec instead of a sparse decode over every entry (training: x needs none)
        latent_sums = need_be or (need_bd and not need_x)
        grad_xc, grad_We, grad_be = _encoder_grads(all_idx, all_gv, xc, W_enc, need_x, need_We, latent_sums,
                                                   pattern, _weight_grad_buffer(ctx, "grad_W_enc", W_enc))
        if need_Wd:
            out = _weight_grad_buffer(ctx, "grad_W_dec", W_dec)
            if has_aux:
                # one bag over [g; g_aux]: main entries read row i, aux entries row n_rows + i
                ka = aux_idx.shape[1]
                w = torch.cat([vals, aux_vals], 1)
                src = torch.cat([g, g_aux], 0)
                shift = torch.cat([idx.new_zeros(n_rows, idx.shape[1]), idx.new_full((n_rows, ka), n_rows)], 1)
                rows = (torch.arange(n_rows, device=g.device)[:, None] + shift).reshape(-1)[pattern.perm]
                grad_Wd = pattern.bag(rows, w.reshape(-1)[pattern.perm], src, out)
            else:
                grad_Wd = pattern.matmul(vals, g, out)
        if need_x:
            grad_x = grad_xc
        if need_bd:
            grad_bd = g.sum(0) - (grad_xc.sum(0) if need_x else grad_be @ W_enc)
        return (grad_x, grad_We, grad_be if need_be else None, grad_Wd, grad_bd) + (None,) * 7


def _dead_topk_exact(xc: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, dead_idx: torch.Tensor,
                     k_aux: int) -> tuple[torch.Tensor, torch.Tensor]:
    """AuxK's selection from the dead latents' fp32 pre-activations alone (one matmul over ``dead_idx``)."""
    return dead_columns_topk_relu(torch.addmm(b_enc[dead_idx], xc, W_enc[dead_idx].t()), dead_idx, k_aux)


def _weight_grad_buffer(ctx, name: str, W: torch.Tensor) -> torch.Tensor | None:
    """Memory for the gradient of the weight ``W`` ``[n, d]``: the workspace's (reused from the last step once that
    step's ``.grad`` is gone) for a gradient above glibc's mmap threshold, else None (fresh memory: smaller blocks
    come back from the heap at no cost, and one embedding-bag beats the blocked write into a given tensor)."""
    workspace = ctx.workspace
    if workspace is None or W.numel() * W.element_size() < MMAP_THRESHOLD_BYTES:
        return None
    return workspace.get_unshared(name, tuple(W.shape), W.dtype, W.device)


def topk_sae_forward(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    W_dec: torch.Tensor,
    b_dec: torch.Tensor,
    k: int,
    select_scale: torch.Tensor | None = None,
    dead_idx: torch.Tensor | None = None,
    k_aux: int = 0,
    batch: bool = False,
    workspace: Workspace | None = None,
    prefilter: PrefilterStats | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_hat [N, d], aux_hat [N, d] or empty, values [N, k], indices [N, k])``.

    ``x_hat = b_dec + sum_j values_j W_dec[indices_j]`` with ``values = relu(pre)``
    at the top-``k`` latents of ``pre = (x - b_dec) W_enc^T + b_enc``;
    ``select_scale`` ``[N, n_latents]`` (> 0, no grad) makes the *selection* use
    ``relu(pre) * select_scale`` (g-SAE).  With ``dead_idx`` (latent ids) and
    ``k_aux > 0``, ``aux_hat = sum`` over the top-``k_aux`` dead latents (AuxK,
    no ``b_dec``).  ``batch``: BatchTopK's selection instead (``k * N`` over the batch; ``values`` and
    ``indices`` are then ``[N, m]`` with value-0 slots; ``select_scale`` is not used).  Differentiable in ``x``
    and all weights; the backward is sparse.  ``workspace``: the ``[N, n_latents]`` pre-activations, and the
    ``W_enc`` / ``W_dec`` gradients once the previous ones are no longer held, go into its buffers instead of
    fresh memory (a training loop passes the same one every step).  ``prefilter`` (with a ``workspace``): select
    plain TopK with the bf16 prefilter (:mod:`harness.sae.bf16_select`: the same latents, no fp32 matmul),
    counting into these stats; AuxK then takes the dead latents' fp32 pre-activations from their own matmul.
    """
    if prefilter is not None and workspace is None:
        workspace = Workspace()
    return _TopKSAE.apply(x, W_enc, b_enc, W_dec, b_dec, int(k), select_scale, dead_idx, int(k_aux), bool(batch),
                          workspace, prefilter)


class _SparseEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xc, W_enc, b_enc, idx):
        ctx.save_for_backward(xc, W_enc, idx)
        return sparse_rowdot(idx, W_enc, xc) + b_enc[idx]

    @staticmethod
    def backward(ctx, gv):
        xc, W_enc, idx = ctx.saved_tensors
        grad_xc, grad_We, grad_be = _encoder_grads(idx, gv.contiguous(), xc, W_enc, *ctx.needs_input_grad[:3])
        return grad_xc, grad_We, grad_be, None


def sparse_encode(xc: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``pre[i, idx[i, j]] = xc[i] . W_enc[idx[i, j]] + b_enc[idx[i, j]]`` ``[N, m]`` for ``xc`` ``[N, d]`` and
    latent ids ``idx`` ``[N, m]`` (sorted within each row); the backward touches only those entries."""
    return _SparseEncode.apply(xc, W_enc, b_enc, idx)
