"""A TopK sparse autoencoder forward whose backward touches only the selected latents.

:func:`topk_sae_forward` returns the reconstruction (and the AuxK
reconstruction of the residual from dead latents).  Its backward computes
every gradient from the ``k`` (and ``k_aux``) selected latents of each row:

- decoder values: ``W_dec[idx] . g`` (:func:`~harness.sae.kernels.sparse_rowdot`);
- ``W_dec``: ``S^T g`` and ``W_enc``: ``S'^T (x - b_dec)`` as embedding-bags over
  latents (:class:`~harness.sae.kernels.LatentPattern`, one sort per step);
- ``b_enc``: an ``index_add``; ``b_dec``: ``sum g - sum S' W_enc`` (one gather);

so a training step does one dense matmul (the encoder's) instead of the five
of a dense TopK SAE (encode, dense decode, and three in the backward).
"""

from __future__ import annotations

import torch

from harness.sae.kernels import LatentPattern, sparse_decode, sparse_rowdot, topk_relu, topk_select


class _TopKSAE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, W_enc, b_enc, W_dec, b_dec, k, select_scale, dead_idx, k_aux):
        xc = x - b_dec
        pre = torch.addmm(b_enc, xc, W_enc.t())
        vals, idx = topk_relu(pre, k, select_scale)
        x_hat = sparse_decode(idx, vals, W_dec, b_dec)
        if dead_idx is not None and k_aux > 0 and dead_idx.numel() > 0:
            ka = min(k_aux, dead_idx.numel())
            aux_vals, ai = topk_select(pre.index_select(1, dead_idx), ka)
            aux_idx, order = dead_idx[ai].sort(dim=1)
            aux_vals = aux_vals.gather(1, order).clamp_min_(0)
            aux_hat = sparse_decode(aux_idx, aux_vals, W_dec)
        else:
            aux_idx = aux_vals = None
            aux_hat = x_hat.new_zeros(0)
        ctx.save_for_backward(xc, W_enc, W_dec, idx, vals, aux_idx, aux_vals)
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

        grad_x = grad_We = grad_be = grad_Wd = grad_bd = None
        if need_We or need_Wd:
            pattern = LatentPattern(all_idx, n_lat)
        if need_We:
            grad_We = pattern.matmul(all_gv, xc)
        if need_Wd:
            if has_aux:
                # one bag over [g; g_aux]: main entries read row i, aux entries row n_rows + i
                ka = aux_idx.shape[1]
                w = torch.cat([vals, aux_vals], 1)
                src = torch.cat([g, g_aux], 0)
                shift = torch.cat([idx.new_zeros(n_rows, idx.shape[1]), idx.new_full((n_rows, ka), n_rows)], 1)
                rows = (torch.arange(n_rows, device=g.device)[:, None] + shift).reshape(-1)[pattern.perm]
                grad_Wd = torch.nn.functional.embedding_bag(
                    rows, src, offsets=pattern.offsets, per_sample_weights=w.reshape(-1)[pattern.perm], mode="sum"
                )
            else:
                grad_Wd = pattern.matmul(vals, g)
        if need_be:
            grad_be = torch.zeros(n_lat, dtype=g.dtype, device=g.device).index_add_(0, all_idx.reshape(-1), all_gv.reshape(-1))
        if need_x or need_bd:
            grad_xc = sparse_decode(all_idx, all_gv, W_enc)
            if need_x:
                grad_x = grad_xc
            if need_bd:
                grad_bd = g.sum(0) - grad_xc.sum(0)
        return grad_x, grad_We, grad_be, grad_Wd, grad_bd, None, None, None, None


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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_hat [N, d], aux_hat [N, d] or empty, values [N, k], indices [N, k])``.

    ``x_hat = b_dec + sum_j values_j W_dec[indices_j]`` with ``values = relu(pre)``
    at the top-``k`` latents of ``pre = (x - b_dec) W_enc^T + b_enc``;
    ``select_scale`` ``[N, n_latents]`` (> 0, no grad) makes the *selection* use
    ``relu(pre) * select_scale`` (g-SAE).  With ``dead_idx`` (latent ids) and
    ``k_aux > 0``, ``aux_hat = sum`` over the top-``k_aux`` dead latents (AuxK,
    no ``b_dec``).  Differentiable in ``x`` and all weights; the backward is sparse.
    """
    return _TopKSAE.apply(x, W_enc, b_enc, W_dec, b_dec, int(k), select_scale, dead_idx, int(k_aux))
