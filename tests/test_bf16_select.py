"""The bf16 prefilter for TopK selection (harness.sae.bf16_select): the fp32 TopK, proven row by row."""

from __future__ import annotations

import pytest
import torch

import harness.sae.bf16_select as bf16_select
from harness.errors import ConfigError
from harness.sae.autograd import topk_sae_forward
from harness.sae.bf16_select import (
    PrefilterBoundError,
    PrefilterStats,
    prefiltered_topk_relu,
    resolve_selection,
)
from harness.sae.kernels import Workspace, sparse_rowdot, topk_relu
from harness.sae.topk import TopKTrainer, train_topk_sae


def _problem(case: str, N: int = 96, d: int = 48, n: int = 2048, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, d, generator=g)
    W = torch.randn(n, d, generator=g) / d ** 0.5
    b = 0.1 * torch.randn(n, generator=g)
    if case == "large bias":
        b = 3 * torch.randn(n, generator=g)
    elif case == "huge scale":
        x, W = x * 1e3, W * 1e2
    elif case == "tiny scale":
        x, W, b = x * 1e-3, W * 1e-2, b * 1e-5
    elif case == "few positive":  # most rows have fewer than k positive pre-activations
        b = b - 4.0
    elif case == "zero rows":
        x[::3] = 0
    elif case == "tied latents":  # pairs of identical latents: exact ties everywhere
        W[1::2], b[1::2] = W[0::2], b[0::2]
    return x, W, b


def _assert_same_topk(values, indices, x, W, b, k):
    """``(values, indices)`` is a valid fp32 TopK (ties may pick other latents): its sorted values equal
    topk_relu's, each positive value is the pre-activation of the latent it names, latents are distinct."""
    pre = torch.addmm(b, x, W.t())
    ref_vals, _ = topk_relu(pre, k)
    scale = 1e-5 * (x.norm(dim=1, keepdim=True) * W.norm(dim=1).max() + b.abs().max())
    assert torch.all((values.sort(1).values - ref_vals.sort(1).values).abs() <= scale)
    active = values > 0
    assert torch.all(((values - pre.gather(1, indices)).abs() <= scale)[active])
    assert torch.all(indices[:, 1:] > indices[:, :-1])  # sorted and distinct


@pytest.mark.parametrize("case", ["random", "large bias", "huge scale", "tiny scale", "few positive", "zero rows",
                                  "tied latents"])
@pytest.mark.parametrize("k", [1, 8, 32])
def test_prefilter_selects_the_fp32_topk(case, k):
    x, W, b = _problem(case)
    stats = PrefilterStats()
    values, indices = prefiltered_topk_relu(x, W, b, k, Workspace(), stats)
    assert values.shape == indices.shape == (x.shape[0], k)
    _assert_same_topk(values, indices, x, W, b, k)
    assert stats.rows == x.shape[0] and 0 <= stats.fallback_rows <= x.shape[0]
    if case == "random":
        assert stats.fallback_rows < x.shape[0] // 4  # the prefilter settles most rows itself


def test_rows_the_bound_cannot_settle_are_recomputed_in_fp32(monkeypatch):
    """With as many candidates as k the proof never holds: every row takes the fp32 path, still exact."""
    monkeypatch.setattr(bf16_select, "candidate_count", lambda k, n: k)
    x, W, b = _problem("random")
    stats = PrefilterStats()
    values, indices = prefiltered_topk_relu(x, W, b, 8, Workspace(), stats)
    _assert_same_topk(values, indices, x, W, b, 8)
    assert stats.fallback_rows == x.shape[0] and stats.fallback_fraction == 1.0


def test_a_bound_too_small_is_caught(monkeypatch):
    """The per-step check compares the exact candidates with the bound: shrunk a thousandfold, it fails loudly."""
    monkeypatch.setattr(bf16_select, "_SAFETY", 1e-3)
    x, W, b = _problem("random")
    with pytest.raises(PrefilterBoundError, match="selection='fp32'"):
        prefiltered_topk_relu(x, W, b, 8, Workspace())


def test_prefilter_takes_fp32_only():
    x, W, b = _problem("random")
    with pytest.raises(ConfigError, match="fp32 inputs"):
        prefiltered_topk_relu(x.double(), W.double(), b.double(), 8, Workspace())


def test_masked_rowdot_computes_only_the_masked_entries():
    g = torch.Generator().manual_seed(3)
    W, x = torch.randn(50, 6, generator=g), torch.randn(7, 6, generator=g)
    idx = torch.stack([torch.randperm(50, generator=g)[:9] for _ in range(7)]).sort(1).values
    mask = torch.rand(7, 9, generator=g) > 0.4
    full = sparse_rowdot(idx, W, x)
    assert torch.allclose(full, (W[idx] * x[:, None]).sum(-1), atol=1e-5)
    masked = sparse_rowdot(idx, W, x, mask)
    assert torch.equal(masked[~mask], torch.zeros(int((~mask).sum())))
    assert torch.allclose(masked[mask], full[mask], atol=1e-6)


def test_resolve_selection():
    assert resolve_selection("fp32", "cpu") == "fp32"
    assert resolve_selection("bf16-prefilter", "cpu") == "bf16-prefilter"
    assert resolve_selection("auto", "cuda") == "fp32"
    assert resolve_selection("auto", "cpu") in ("fp32", "bf16-prefilter")
    with pytest.raises(ConfigError, match="'auto', 'fp32' or 'bf16-prefilter'"):
        resolve_selection("fast", "cpu")
    with pytest.raises(ConfigError, match="CPU only"):
        resolve_selection("bf16-prefilter", "cuda")


@pytest.mark.parametrize("aux", [False, True])
def test_forward_and_gradients_equal_the_fp32_path(aux):
    """One TopK forward / backward (with AuxK from the dead latents' own matmul) with and without the prefilter:
    the same reconstruction, selection and gradients up to fp32 rounding."""
    g = torch.Generator().manual_seed(4)
    N, d, n, k = 64, 32, 1024, 8
    x = torch.randn(N, d, generator=g)
    base = [torch.randn(n, d, generator=g) / d ** 0.5, 0.1 * torch.randn(n, generator=g),
            torch.randn(n, d, generator=g) / d ** 0.5, torch.randn(d, generator=g)]
    dead = torch.arange(0, n, 5) if aux else None
    runs = []
    for prefilter in (None, PrefilterStats()):
        params = [p.clone().requires_grad_() for p in base]
        x_hat, aux_hat, vals, idx = topk_sae_forward(x, *params, k, None, dead, 12, workspace=Workspace(),
                                                     prefilter=prefilter)
        loss = (x - x_hat).pow(2).sum() + ((aux_hat - x).pow(2).sum() if aux else 0.0)
        runs.append((idx, vals, x_hat, aux_hat) + torch.autograd.grad(loss, params))
    assert torch.equal(runs[0][0], runs[1][0])
    for a, b in zip(runs[0][1:], runs[1][1:]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)


def test_trainer_records_its_selection():
    """``selection`` reaches the trainer's stats; auto keeps fp32 for small SAEs, g-SAE refuses the prefilter."""
    g = torch.Generator().manual_seed(5)
    acts = torch.randn(512, 16, generator=g)
    _, stats = train_topk_sae(acts, 64, 4, epochs=1, batch_size=128, selection="bf16-prefilter")
    assert stats.selection == "bf16-prefilter" and 0 <= stats.fallback_rows <= 512
    _, stats = train_topk_sae(acts, 64, 4, epochs=1, batch_size=128)
    assert stats.selection == "fp32"  # 64 latents of width 16: far below PREFILTER_MIN_D_IN x PREFILTER_MIN_LATENTS
    trainer = TopKTrainer(acts, 64, 4, grads=torch.randn(512, 16, generator=g), grad_beta=1.0, auxk_coef=0.0,
                          k_aux=None, dead_tokens=None, selection="bf16-prefilter", epochs=1, batch_size=128,
                          lr=1e-3, seed=0)
    with pytest.raises(ConfigError, match="plain TopK only"):
        trainer.run()


def test_trainer_retires_the_prefilter_when_rows_keep_falling_back(monkeypatch):
    """A step whose rows fall back beyond MAX_FALLBACK_FRACTION sends every later step to fp32 (counted)."""
    monkeypatch.setattr(bf16_select, "candidate_count", lambda k, n: k)  # every row falls back
    g = torch.Generator().manual_seed(6)
    acts = torch.randn(512, 16, generator=g)
    _, stats = train_topk_sae(acts, 64, 4, epochs=2, batch_size=128, selection="bf16-prefilter")
    assert stats.steps == 8 and stats.fallback_rows == 128 and stats.fp32_steps == 7


def test_trainer_takes_fp32_steps_while_many_latents_are_dead():
    """With more than MAX_DEAD_FRACTION of the latents dead, AuxK steps skip the prefilter."""
    g = torch.Generator().manual_seed(7)
    acts = torch.randn(256, 8, generator=g)
    # k = 1 of 512 latents on 256 rows: most latents never fire, so after dead_tokens most are dead
    _, stats = train_topk_sae(acts, 512, 1, epochs=3, batch_size=64, selection="bf16-prefilter", dead_tokens=64)
    assert stats.dead_fraction > 0.25 and 0 < stats.fp32_steps < stats.steps
