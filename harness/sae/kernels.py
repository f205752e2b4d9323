"""SAE kernels shared by methods and baselines (DESIGN.md section 3).

- :func:`topk_select`: exact row-wise top-k, with a group-max prefilter for
  wide rows (only the ``k`` groups holding the ``k`` largest group maxima can
  hold the top-k, so the full-width ``topk`` runs on ``k * group`` columns),
  applied again to those candidates in sub-groups of ``group / 8``.
- :func:`batch_topk_relu`: BatchTopK's selection, the ``k * N`` largest ``relu(pre)`` of the whole
  batch, laid out per row as ``[N, m]`` (``m`` the most any row got; other slots hold value 0).
- :func:`dead_topk_relu`: AuxK's selection, the top ``k_aux`` of the dead latents of each row.
- :func:`threshold_encode`: JumpReLU codes ``pre * (pre > threshold)`` (a per-latent or one global threshold).
- :func:`topk_encode`: inference encode ``relu(topk((x - b_dec) W_enc^T + b_enc))``
  in row chunks (one dense matmul per chunk into a reused buffer, then
  :func:`topk_select`), optionally with a per-latent selection scale (g-SAE).
- :func:`sparse_decode`: ``b_dec + sum_j values[:, j] W_dec[indices[:, j]]`` as
  one ``F.embedding_bag`` gather (no ``[N, n_latents]`` tensor).
- :func:`sparse_rowdot`: ``out[i, j] = W[indices[i, j]] . g[i]`` (sampled dense
  matmul), the gradient of a sparse decode with respect to its values.
- :func:`sparse_transpose_matmul`: ``S^T M`` for ``S`` with the pattern
  ``indices`` and the given values, ``[n_latents, d]``, as an embedding-bag
  over latents (the gradient of a sparse decode / encode with respect to the
  weights), without materialising ``[N * k, d]``.
- :class:`Workspace`: scratch tensors a training loop reuses from step to step
  (the ``[B, n_latents]`` pre-activations, the large weight gradients), because on CPU a fresh tensor of
  more than 32 MiB is new memory from the OS and first touching it costs as
  much as a pass of arithmetic over it.

Weights are stored latent-major: ``W_enc`` and ``W_dec`` are both
``[n_latents, d]`` (``W_enc`` like ``nn.Linear.weight``).
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

#: glibc's largest mmap threshold: a fresh tensor above it is new memory from the OS, page-faulted in on first touch
MMAP_THRESHOLD_BYTES = 32 << 20

#: bytes of one block of :meth:`LatentPattern.bag`'s output written into a given tensor (stays in L2)
_BAG_BLOCK_BYTES = 1 << 20

#: BatchTopK's exact prefilter keeps each row's ``_BATCH_CANDIDATES * k`` largest (:func:`batch_topk_relu`)
_BATCH_CANDIDATES = 4

#: the top-k prefilter is used when a row has at least ``_GROUPED_MIN_FACTOR * k * 16`` columns;
#: its group width is about ``n / (8 k)`` (16 to 64), so ``k * group ~ n / 8`` candidates remain.
_GROUPED_MIN_FACTOR = 8


class Workspace:
    """Named scratch tensors reused across calls (one training loop; not thread-safe).

    glibc serves allocations above 32 MiB (:data:`MMAP_THRESHOLD_BYTES`) with a fresh ``mmap`` and unmaps them on
    free, so every new ``[2048, 32768]`` fp32 tensor page-faults 256 MiB in again
    (about 0.15 s on this CPU, a quarter of the encoder matmul).  A buffer from
    :meth:`get` keeps its memory; its contents are whatever the last user left.
    """

    def __init__(self) -> None:
        self._flat: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """An uninitialised contiguous tensor of ``shape`` on the storage kept under ``name`` (grown when short)."""
        numel = math.prod(shape)
        flat = self._flat.get(name)
        if flat is None or flat.numel() < numel or flat.dtype != dtype or flat.device != torch.device(device):
            flat = self._flat[name] = torch.empty(numel, dtype=dtype, device=device)
        return flat[:numel].view(shape)

    def get_unshared(self, name: str, shape: tuple[int, ...], dtype: torch.dtype,
                     device: torch.device) -> torch.Tensor:
        """Like :meth:`get`, for a tensor the caller hands on (a gradient that autograd keeps as ``.grad``): the
        kept storage is reused only once no tensor from an earlier call uses it; otherwise it is left to its
        holder and fresh memory is kept instead."""
        flat = self._flat.get(name)
        if flat is not None and _storage_shared(flat):
            del self._flat[name]
        return self.get(name, shape, dtype, device)


def _storage_shared(t: torch.Tensor) -> bool:
    """Whether a tensor other than ``t`` uses ``t``'s storage (True when this torch cannot tell)."""
    use_count = getattr(torch._C, "_storage_Use_Count", None)
    if use_count is None:
        return True
    return use_count(t.untyped_storage()._cdata) > 2  # t's own reference and the temporary storage object's


def encoder_preacts(xc: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor,
                    workspace: Workspace | None = None) -> torch.Tensor:
    """``pre = xc W_enc^T + b_enc`` ``[N, n_latents]`` (one ``addmm``), into ``workspace``'s ``"pre"`` when given."""
    if workspace is None:
        return torch.addmm(b_enc, xc, W_enc.t())
    out = workspace.get("pre", (xc.shape[0], W_enc.shape[0]), W_enc.dtype, W_enc.device)
    return torch.addmm(b_enc, xc, W_enc.t(), out=out)


def _auto_group(n: int, k: int) -> int | None:
    if n < _GROUPED_MIN_FACTOR * k * 16:
        return None
    g = 16
    while g < 64 and g * 2 * k * 8 <= n:
        g *= 2
    return g if n % g == 0 else None



def topk_select(scores: torch.Tensor, k: int, group: int | None = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise top-``k`` of ``scores`` ``[N, n]``: ``(values [N, k], indices [N, k])``, unsorted.

    Exact (the same set of values as ``torch.topk``; among tied values the chosen
    indices may differ).  For wide rows a group-max prefilter shrinks the work of
    the full ``topk`` (and, for ``group >= 32``, a second one within its ``k * group``
    candidates): ``group=-1`` picks the group width automatically, ``None``
    disables the prefilter, a positive width forces it.
    """
    n_rows, n = scores.shape
    if k > n:
        raise ValueError(f"k = {k} exceeds the number of columns {n}")
    if group == -1:
        group = _auto_group(n, k)
    if not group or n % group or k * group >= n:
        return torch.topk(scores, k, dim=1, sorted=False)
    n_groups = n // group
    grouped = scores.view(n_rows, n_groups, group)
    gmax = grouped.amax(dim=2)  # [N, n_groups]
    _, gidx = torch.topk(gmax, k, dim=1, sorted=False)  # the k groups with the largest maxima
    flat_groups = (gidx + torch.arange(n_rows, device=scores.device)[:, None] * n_groups).flatten()
    cand = grouped.reshape(n_rows * n_groups, group).index_select(0, flat_groups).view(n_rows, k * group)
    # the same argument within the candidates (torch.topk costs ~10 ns per element on CPU, amax ~1)
    values, cidx = topk_select(cand, k, group // 8 if group >= 32 else None)
    indices = torch.gather(gidx, 1, cidx // group) * group + cidx % group
    return values, indices


def topk_relu(pre: torch.Tensor, k: int, scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, indices)`` ``[N, k]`` of ``relu(topk(pre))``, indices sorted within each row.

    ``scale`` ``[N, n]`` (optional, positive): latents are *selected* by
    ``relu(pre) * scale`` but keep their value ``relu(pre)`` (gradient-TopK).
    """
    if scale is None:
        vals, idx = topk_select(pre, k)
    else:
        _, idx = topk_select(pre.clamp_min(0).mul_(scale), k)
        vals = pre.gather(1, idx)
    idx, order = idx.sort(dim=1)
    return vals.gather(1, order).clamp_min_(0), idx


def batch_topk_relu(pre: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, indices)`` ``[N, m]`` of the ``k * N`` largest ``relu(pre)`` of ``pre`` ``[N, n]`` taken together.

    Row ``i`` holds its ``c_i`` selected latents (its own ``c_i`` largest, as any batch selection is) and
    ``m - c_i`` slots of other latents with value 0 (inactive, as in :class:`SparseCodes`), ``m = max c_i``;
    indices are distinct and sorted within each row.  Among tied values the choice is ``torch.topk``'s.

    Exact prefilter: the batch's largest are first looked for among each row's ``_BATCH_CANDIDATES * k``
    largest; that is the answer when every row's smallest candidate is below the smallest value taken (no row
    can hold more), else the whole batch is searched.
    """
    n_rows, n = pre.shape
    total = min(int(k) * n_rows, n_rows * n)
    width = min(n, _BATCH_CANDIDATES * int(k))
    cand, cand_idx = topk_select(pre, width) if width < n else (pre, None)
    top = torch.topk(cand.reshape(-1), total, sorted=False)
    if cand_idx is not None and not bool((cand.amin(1) < top.values.min()).all()):
        cand, cand_idx = pre, None  # some row may hold more than its candidates
        top = torch.topk(pre.reshape(-1), total, sorted=False)
    chosen = torch.zeros(cand.numel(), dtype=torch.bool, device=pre.device)
    chosen[top.indices] = True
    chosen = chosen.view(cand.shape)
    m = max(1, int(chosen.sum(1).max()))
    vals, pos = topk_select(cand.masked_fill(~chosen, float("-inf")), m)
    idx = pos if cand_idx is None else cand_idx.gather(1, pos)
    idx, order = idx.sort(dim=1)
    vals = vals.gather(1, order)
    return vals.masked_fill_(vals == float("-inf"), 0.0).clamp_min_(0), idx


def dead_topk_relu(pre: torch.Tensor, dead_idx: torch.Tensor, k_aux: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, indices)`` ``[N, min(k_aux, n_dead)]``: ``relu`` of the largest ``pre`` among the latents
    ``dead_idx`` in each row (AuxK), indices sorted within each row."""
    return dead_columns_topk_relu(pre.index_select(1, dead_idx), dead_idx, k_aux)


def dead_columns_topk_relu(pre_dead: torch.Tensor, dead_idx: torch.Tensor,
                           k_aux: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`dead_topk_relu` given only the dead latents' pre-activations ``pre_dead`` ``[N, n_dead]``."""
    values, which = topk_select(pre_dead, min(int(k_aux), dead_idx.numel()))
    indices, order = dead_idx[which].sort(dim=1)
    return values.gather(1, order).clamp_min_(0), indices


def threshold_encode(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, threshold: torch.Tensor | float,
                     b_dec: torch.Tensor | None = None) -> torch.Tensor:
    """JumpReLU codes ``[N, n_latents]``: ``pre`` where ``pre > threshold`` else 0, ``pre = (x - b_dec) W_enc^T + b_enc``.

    ``threshold``: ``[n_latents]`` (JumpReLU) or one number (BatchTopK at inference); >= 0, so codes are >= 0.
    """
    pre = torch.addmm(b_enc, x if b_dec is None else x - b_dec, W_enc.t())
    return pre.masked_fill_(pre <= threshold, 0.0)


@torch.no_grad()
def topk_encode(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    k: int,
    b_dec: torch.Tensor | None = None,
    select_scale_fn=None,
    chunk_rows: int = 512,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, indices)`` of ``relu(topk(pre))`` with ``pre = (x - b_dec) W_enc^T + b_enc``.

    ``select_scale_fn(rows: slice) -> [rows, n] positive scale`` (optional): latents
    are *selected* by ``relu(pre) * scale`` but keep their value ``relu(pre)``
    (gradient-TopK).  Indices are sorted within each row.
    """
    n, _ = x.shape
    n_lat = W_enc.shape[0]
    values = torch.empty(n, k, dtype=W_enc.dtype, device=x.device)
    indices = torch.empty(n, k, dtype=torch.long, device=x.device)
    buf = torch.empty(min(chunk_rows, n), n_lat, dtype=W_enc.dtype, device=x.device)
    Wt = W_enc.t()
    for i in range(0, n, chunk_rows):
        xs = x[i : i + chunk_rows]
        if b_dec is not None:
            xs = xs - b_dec
        pre = buf[: xs.shape[0]]
        torch.addmm(b_enc, xs, Wt, out=pre)
        scale = None if select_scale_fn is None else select_scale_fn(slice(i, i + xs.shape[0]))
        values[i : i + xs.shape[0]], indices[i : i + xs.shape[0]] = topk_relu(pre, k, scale)
    return values, indices


def sparse_decode(
    indices: torch.Tensor, values: torch.Tensor, W_dec: torch.Tensor, b_dec: torch.Tensor | None = None
) -> torch.Tensor:
    """``[N, d]`` = ``b_dec + sum_j values[:, j] * W_dec[indices[:, j]]`` via ``F.embedding_bag``."""
    out = F.embedding_bag(indices, W_dec, per_sample_weights=values.to(W_dec.dtype), mode="sum")
    if b_dec is not None:
        out = out + b_dec
    return out


def dense_decode(
    indices: torch.Tensor, values: torch.Tensor, W_dec: torch.Tensor, b_dec: torch.Tensor | None = None
) -> torch.Tensor:
    """The same as :func:`sparse_decode` via a dense ``[N, n_latents]`` code and a matmul (reference)."""
    dense = torch.zeros(indices.shape[0], W_dec.shape[0], dtype=W_dec.dtype, device=W_dec.device)
    dense.scatter_add_(1, indices, values.to(W_dec.dtype))
    out = dense @ W_dec
    return out if b_dec is None else out + b_dec


def sparse_rowdot(indices: torch.Tensor, W: torch.Tensor, g: torch.Tensor,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
    """``out[i, j] = W[indices[i, j]] . g[i]``, ``[N, k]`` (rows of ``indices`` must be sorted); with ``mask``
    ``[N, k]`` (bool) only the entries where it is True are computed, the others are 0."""
    n_rows, k = indices.shape
    if k == 0:
        return g.new_zeros(n_rows, 0)
    if mask is None:
        crow = torch.arange(0, n_rows * k + 1, k, device=indices.device, dtype=torch.long)
        cols = indices.reshape(-1)
    else:
        crow = torch.zeros(n_rows + 1, dtype=torch.long, device=indices.device)
        torch.cumsum(mask.sum(1), 0, out=crow[1:])
        cols = indices[mask]
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore")
        pattern = torch.sparse_csr_tensor(
            crow, cols, torch.ones(cols.numel(), dtype=g.dtype, device=g.device),
            size=(n_rows, W.shape[0]), check_invariants=False,
        )
    values = torch.sparse.sampled_addmm(pattern, g.contiguous(), W.t(), beta=0.0).values()
    if mask is None:
        return values.view(n_rows, k)
    return g.new_zeros(n_rows, k).masked_scatter_(mask, values)


class LatentPattern:
    """The transpose of a sparse pattern ``indices [N, k]``, grouped by latent (for ``S^T M``).

    ``row_ids`` are the source rows in latent order and ``offsets`` the start of
    each latent's bag; built once per step and reused for several products.
    """

    def __init__(self, indices: torch.Tensor, n_latents: int):
        flat = indices.reshape(-1)
        self.perm = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=n_latents)
        self.offsets = torch.zeros(n_latents, dtype=torch.long, device=indices.device)
        torch.cumsum(counts[:-1], 0, out=self.offsets[1:])
        self.row_ids = self.perm // indices.shape[1]
        self.n_latents = n_latents

    def matmul(self, weights: torch.Tensor, M: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``S^T M`` ``[n_latents, d]`` where ``S[i, indices[i, j]] += weights[i, j]`` (into ``out`` when given)."""
        return self.bag(self.row_ids, weights.reshape(-1)[self.perm], M, out)

    def bag(self, rows: torch.Tensor, weights: torch.Tensor, M: torch.Tensor,
            out: torch.Tensor | None = None) -> torch.Tensor:
        """``[n_latents, d]``: latent ``j``'s row is ``sum weights[e] M[rows[e]]`` over its entries ``e`` (latent
        order: ``rows``, ``weights`` ``[nnz]``); one embedding-bag, or into ``out`` in blocks of latents (each
        block's bags are the same sums in the same order, so the result is identical)."""
        weights = weights.to(M.dtype)
        if out is None:
            return F.embedding_bag(rows, M, offsets=self.offsets, per_sample_weights=weights, mode="sum")
        step = max(1, _BAG_BLOCK_BYTES // (M.shape[1] * M.element_size()))
        bounds = torch.cat([self.offsets[::step], self.offsets.new_tensor([rows.numel()])]).tolist()
        for block, start in enumerate(range(0, self.n_latents, step)):
            a, b = bounds[block], bounds[block + 1]
            out[start : start + step] = F.embedding_bag(rows[a:b], M, offsets=self.offsets[start : start + step] - a,
                                                        per_sample_weights=weights[a:b], mode="sum")
        return out


def sparse_transpose_matmul(indices: torch.Tensor, weights: torch.Tensor, M: torch.Tensor, n_latents: int) -> torch.Tensor:
    """``S^T M`` ``[n_latents, d]`` with ``S [N, n_latents]`` holding ``weights`` at ``indices``."""
    return LatentPattern(indices, n_latents).matmul(weights, M)
