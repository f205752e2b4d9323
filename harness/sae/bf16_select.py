"""Exact TopK selection with a bfloat16 prefilter: the encoder matmul in bf16, the chosen values in fp32.

A TopK SAE's training step spends most of its time in the dense encoder matmul ``pre = xc W_enc^T + b_enc``
``[N, n_latents]``, of which it keeps only the ``k`` largest per row.  On CPUs with AMX (Intel Sapphire Rapids
and later) a bf16 matmul runs about 8x faster than an fp32 one.  :func:`prefiltered_topk_relu` uses it to find
candidates, then computes the candidates' pre-activations exactly (fp32, :func:`~harness.sae.kernels.sparse_rowdot`)
and selects among them, so the result is the fp32 TopK (the same latents wherever the value is positive, the
values fp32; slots of value 0 may name other latents, which nothing reads):

1. ``a = bf16(xc) bf16(W_enc)^T + bf16(b_enc)`` as one bf16 matmul (the bias as an extra column), fp32
   accumulation, rounded to bf16;
2. per row, the ``m`` largest ``a`` (``m = k + max(2k, 32)``) are the candidates, found by a top-``m`` of the
   bf16 bit patterns read as int16 (which order the values >= 0 and put every negative value below them);
3. a rigorous per-entry error bound ``|a - pre| <= E(a) = c_i + u' |a|`` (below) proves, row by row, that no
   entry outside the candidates can be among the ``k`` largest ``pre``: outside, ``pre <= r + E(r)`` with ``r``
   the smallest candidate's ``a`` clamped at 0; ``k`` candidates have ``pre >= a_k - E(a_k)`` (``a_k`` the
   ``k``-th largest ``a``); the exact fp32 values are computed only for the candidates whose upper bound
   reaches that lower one;
4. rows where the proof fails (near-ties wider than the bound) are recomputed in fp32 in full.

The bound, with ``u = 2^-8`` (bf16's unit roundoff), augmented vectors ``x' = [xc_i, 1]``, ``w' = [w_j, b_j]``,
``dx``, ``dw`` their rounding errors to bf16 (computed exactly), ``W = max_j |w'_j|`` and ``D = max_j |dw_j|``:
inputs ``|dx| (W + D) + |x'| D`` (Cauchy-Schwarz, since ``x'.w' - bf16(x').bf16(w') = dx.bf16(w') + x'.dw``);
the fp32 accumulation of the exact bf16 products ``gamma_K (|x'| + |dx|)(W + D)`` (``gamma_K = K 2^-24 /
(1 - K 2^-24)``, any summation order); the rounding of the output to bf16 ``u / (1 - u) |a|``.  A safety
factor of 1.001 and ``1e-30`` absolute cover the terms of second order and flushed denormals.  Every step
also checks the bound where it can at no cost, on the candidates whose exact values it computes; a violation
(which would mean this machine's bf16 matmul rounds differently than assumed) raises
:class:`PrefilterBoundError`.

:func:`bf16_prefilter_supported` says whether this machine has the hardware (AMX tiles and AVX512-BF16); the
trainers use the prefilter by default only there (``selection="auto"``), so the choice is fixed per machine
and a seeded run stays deterministic on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.errors import ConfigError, HarnessError
from harness.sae.kernels import Workspace, sparse_rowdot, topk_select

#: bf16's unit roundoff (8 significant bits, round to nearest)
_U_BF16 = 2.0 ** -8
#: fp32's unit roundoff
_U_FP32 = 2.0 ** -24
#: multiplies the first-order bound (covers the second-order terms and the norms' own rounding)
_SAFETY = 1.001
#: absolute slack for denormals flushed to zero by the bf16 kernels
_TINY = 1e-30
#: the augmented matmul's inner size is padded to a multiple of this (AMX tiles take 32 bf16 values per row)
_K_ALIGN = 16


#: A TopK step with AuxK takes the fp32 selection when more than this fraction of the latents are dead: the
#: prefilter never forms the fp32 pre-activations, so AuxK needs the dead latents' own fp32 matmul, which costs
#: that fraction of the full fp32 matmul the prefilter exists to avoid (a cost argument, not a measured optimum)
MAX_DEAD_FRACTION = 0.25
#: A trainer stops using the prefilter for good once one step's rows fell back to fp32 beyond this fraction
#: (each such row costs its fp32 matmul on top of the bf16 one)
MAX_FALLBACK_FRACTION = 0.15


class PrefilterBoundError(HarnessError):
    """The bf16 prefilter's error bound failed on this machine (its bf16 matmul rounds differently)."""


@dataclass
class PrefilterStats:
    """What the prefilter did over a run: rows selected, rows recomputed in fp32 in full, and training steps
    that took the fp32 selection instead (many dead latents: see :data:`MAX_DEAD_FRACTION`)."""

    rows: int = 0
    fallback_rows: int = 0
    fp32_steps: int = 0
    last_fallback_fraction: float = 0.0  # of the last call's rows
    retired: bool = False  # set by a trainer that stopped using the prefilter

    @property
    def fallback_fraction(self) -> float:
        return self.fallback_rows / max(1, self.rows)


def bf16_prefilter_supported(device: torch.device | str = "cpu") -> bool:
    """Whether the bf16 prefilter pays off here: a CPU with AMX tiles and AVX512-BF16 (as torch reports them)."""
    if torch.device(device).type != "cpu":
        return False
    cpu = getattr(torch, "cpu", None)
    try:
        return bool(cpu._is_amx_tile_supported()) and bool(cpu._is_avx512_bf16_supported())
    except AttributeError:  # a torch without these probes
        return False


def resolve_selection(selection: str, device: torch.device | str) -> str:
    """``"auto"`` -> ``"bf16-prefilter"`` where :func:`bf16_prefilter_supported`, else ``"fp32"``; the others
    are returned as they are (a clear error for anything else)."""
    if selection == "auto":
        return "bf16-prefilter" if bf16_prefilter_supported(device) else "fp32"
    if selection not in ("fp32", "bf16-prefilter"):
        raise ConfigError(f"selection must be 'auto', 'fp32' or 'bf16-prefilter', got {selection!r}")
    if selection == "bf16-prefilter" and torch.device(device).type != "cpu":
        # GPU bf16 matmuls may reduce in bf16 (cuBLAS' reduced-precision reduction), which the bound excludes
        raise ConfigError(f"selection='bf16-prefilter' runs on the CPU only (this SAE trains on {device}); "
                          "use 'fp32' or 'auto'")
    return selection


def candidate_count(k: int, n: int) -> int:
    """``m``: how many of each row's largest approximate pre-activations are kept as candidates."""
    return min(n, k + max(2 * k, 32))


def _group(n: int, m: int) -> int | None:
    """Group width of the int16 top-``m`` prefilter: the widest of 64, 32, 16 that leaves at most half the row."""
    for g in (64, 32, 16):
        if n % g == 0 and m * g * 2 <= n:
            return g
    return None


def approx_preacts(xc: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor,
                   workspace: Workspace) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a [N, n] bf16, c [N] fp32)``: the bf16 pre-activations (in ``workspace``'s ``"pre_bf16"``) and each
    row's part ``c_i`` of the error bound ``|a - pre| <= c_i + u' |a|`` (module docstring)."""
    N, d = xc.shape
    n = W_enc.shape[0]
    K = -(-(d + 1) // _K_ALIGN) * _K_ALIGN
    dev = xc.device
    Wa = workspace.get("W_aug_bf16", (n, K), torch.bfloat16, dev)
    Wa[:, d].copy_(b_enc)
    Wa[:, d + 1 :].zero_()
    dw_norm = _copy_rounded(W_enc, Wa[:, :d], workspace)
    xa = torch.zeros(N, K, dtype=torch.bfloat16, device=dev)
    xa[:, :d].copy_(xc)
    xa[:, d] = 1.0
    a = workspace.get("pre_bf16", (N, n), torch.bfloat16, dev)
    torch.mm(xa, Wa.t(), out=a)

    # the bias column's rounding belongs to w': |dw'_j|^2 = |dw_j|^2 + (b_j - bf16(b_j))^2
    db = b_enc - Wa[:, d].float()
    dw_max = float(torch.sqrt(dw_norm.pow_(2).add_(db.pow(2))).max())
    w_max = float(torch.sqrt(torch.linalg.vector_norm(W_enc, dim=1).pow_(2).add_(b_enc.pow(2))).max())
    x_norm = torch.sqrt(torch.linalg.vector_norm(xc, dim=1).pow_(2).add_(1.0))
    dx_norm = (xc - xa[:, :d].float()).norm(dim=1)
    gamma = K * _U_FP32 / (1 - K * _U_FP32)
    w_tilde = w_max + dw_max
    c = (dx_norm * w_tilde + x_norm * dw_max + gamma * (x_norm + dx_norm) * w_tilde) * _SAFETY + _TINY
    return a, c


def _copy_rounded(W: torch.Tensor, out: torch.Tensor, workspace: Workspace, rows: int = 256) -> torch.Tensor:
    """Copy ``W`` ``[n, d]`` (fp32) into ``out`` (bf16, rounding to nearest) and return ``|W_j - bf16(W_j)|``
    ``[n]``, in blocks of ``rows`` rows small enough to stay in cache (no ``[n, d]`` fp32 temporary)."""
    n, d = W.shape
    norms = torch.empty(n, dtype=torch.float32, device=W.device)
    buf = workspace.get("round_block", (min(rows, n), d), torch.float32, W.device)
    for start in range(0, n, rows):
        w, o = W[start : start + rows], out[start : start + rows]
        o.copy_(w)
        diff = buf[: w.shape[0]]
        diff.copy_(o)
        diff.sub_(w)
        torch.linalg.vector_norm(diff, dim=1, out=norms[start : start + rows])
    return norms


def _slack(a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``E(a) = c + u / (1 - u) |a|`` (``c`` broadcast over the row)."""
    return c + (_U_BF16 / (1 - _U_BF16) * _SAFETY) * a.abs()


@torch.no_grad()
def prefiltered_topk_relu(xc: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, k: int,
                          workspace: Workspace, stats: PrefilterStats | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, indices)`` ``[N, k]`` of ``relu(topk(xc W_enc^T + b_enc))``, indices sorted within each row:
    :func:`~harness.sae.kernels.topk_relu` of the fp32 pre-activations (the same latents wherever the value is
    positive; slots of value 0 may name other latents), computed with the bf16 prefilter (module docstring).
    ``xc`` ``[N, d]``, ``W_enc`` ``[n, d]``, ``b_enc`` ``[n]``, fp32.  ``stats`` (optional) counts the rows and
    the fp32 fallbacks."""
    if not xc.dtype == W_enc.dtype == b_enc.dtype == torch.float32:
        raise ConfigError(f"the bf16 prefilter takes fp32 inputs (got {xc.dtype}, {W_enc.dtype}, {b_enc.dtype}); "
                          "use selection='fp32' for other dtypes")
    n = W_enc.shape[0]
    W, b = W_enc.detach(), b_enc.detach()
    a, c = approx_preacts(xc, W, b, workspace)
    # candidates: the m largest by the bf16 bit pattern read as int16, which orders the values >= 0 and puts every
    # negative value below them (their own order is reversed, which only matters for values that ReLU zeroes)
    m = candidate_count(k, n)
    _, cand_idx = topk_select(a.view(torch.int16), m, _group(n, m))
    cand_idx, _ = cand_idx.sort(dim=1)
    cand_a = a.gather(1, cand_idx).float()
    # proof per row: every other latent's pre <= upper (its bf16 value is below the smallest candidate's, or
    # negative), and k candidates have pre >= lower
    floor = cand_a.amin(1).clamp_min(0)
    upper = floor + _slack(floor, c)
    a_k = cand_a.topk(k, dim=1).values[:, -1]
    lower = a_k - _slack(a_k, c)
    proven = upper < lower
    # exact values only where the bound leaves a candidate a chance (the k largest always have one)
    slack = _slack(cand_a, c[:, None])
    contender = (cand_a + slack) >= lower[:, None]
    exact = sparse_rowdot(cand_idx, W, xc, contender).add_(b[cand_idx])
    # the bound, checked where the exact value is at hand (a cheap guard against a wrong rounding model); the
    # fp32 value's own error is at most c (whose accumulation term covers a d-term fp32 dot product) + rounding
    own = c[:, None] + 2 * _U_FP32 * exact.abs()
    if bool(((exact - cand_a).abs() > slack * 1.01 + own).logical_and_(contender).any()):
        raise PrefilterBoundError("the bf16 prefilter's error bound failed on this machine; train with "
                                  "selection='fp32'")
    values, pos = torch.topk(exact.masked_fill_(~contender, float("-inf")), k, dim=1, sorted=False)
    indices = cand_idx.gather(1, pos)
    redo = (~proven).nonzero().flatten()
    if redo.numel():
        values[redo], indices[redo] = topk_select(torch.addmm(b, xc[redo], W.t()), k)
    if stats is not None:
        stats.rows += xc.shape[0]
        stats.fallback_rows += int(redo.numel())
        stats.last_fallback_fraction = redo.numel() / max(1, xc.shape[0])
    indices, order = indices.sort(dim=1)
    return values.gather(1, order).clamp_min_(0), indices
