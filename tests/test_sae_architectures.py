"""JumpReLU, BatchTopK and Matryoshka SAEs, each against an independent computation on a toy input: the
straight-through gradients against the paper's formulas written out, BatchTopK's selection against a sort of
the whole batch, the nested loss against dense prefixes; encode / save / load through the registry."""

from __future__ import annotations

import json
import math

import pytest
import torch

from harness.errors import ConfigError, HarnessError
from harness.protocols.reconstruction import SparseCodes
from harness.sae import (
    SAE,
    BatchTopKConfig,
    JumpReLUConfig,
    MatryoshkaConfig,
    architecture_of,
    batch_topk_relu,
    load_sae,
    prefix_sizes,
    sparse_encode,
    topk_sae_forward,
    train_batchtopk_sae,
    train_jumprelu_sae,
)
from harness.sae.batchtopk import BatchTopKTrainer
from harness.sae.jumprelu import JumpReLUTrainer, jumprelu, step
from harness.sae.matryoshka import MatryoshkaTrainer, check_prefixes
from sae_toys import random_weights

D, N_LAT, ROWS = 6, 12, 9


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def toy(seed: int = 0, n_lat: int = N_LAT, rows: int = ROWS) -> tuple[torch.Tensor, ...]:
    return random_weights(seed, n_lat, D, rows)


def naive_batch_topk(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Dense codes: the k * N largest relu(pre) of the batch, by sorting every (row, latent) value in Python."""
    n_rows, n = pre.shape
    cells = sorted(((float(pre[i, j]), i, j) for i in range(n_rows) for j in range(n)), reverse=True)[: k * n_rows]
    z = torch.zeros_like(pre)
    for v, i, j in cells:
        z[i, j] = max(v, 0.0)
    return z


# ====================================================================== JumpReLU
def test_jumprelu_and_step_gradients_are_the_papers_pseudo_derivatives():
    """d/dtheta JumpReLU = -(theta/eps) K((a - theta)/eps), d/dtheta H = -(1/eps) K(...), K = 1{|u| < 1/2};
    d/da JumpReLU = H(a - theta), d/da H = 0 (no STE for the input); each summed over the batch for theta."""
    eps = 0.1
    theta = torch.tensor([0.2, 0.5, 1.0], dtype=torch.float64)
    a = torch.tensor([[0.0, 0.47, 1.2], [0.23, 0.8, 0.96], [0.12, 0.5, 1.04]], dtype=torch.float64)
    g = torch.tensor([[1.0, -2.0, 0.5], [3.0, 1.5, -1.0], [0.7, 0.3, 2.0]], dtype=torch.float64)
    a1, th1 = a.clone().requires_grad_(), theta.clone().requires_grad_()
    (jumprelu(a1, th1, eps) * g).sum().backward()
    a2, th2 = a.clone().requires_grad_(), theta.clone().requires_grad_()
    (step(a2, th2, eps) * g).sum().backward()
    want_a = torch.zeros(3, 3, dtype=torch.float64)
    want_jump, want_step = [0.0] * 3, [0.0] * 3
    for b in range(3):
        for j in range(3):
            ai, tj, gij = float(a[b, j]), float(theta[j]), float(g[b, j])
            want_a[b, j] = gij if ai > tj else 0.0
            k = 1.0 if -0.5 < (ai - tj) / eps < 0.5 else 0.0
            want_jump[j] += -(tj / eps) * k * gij
            want_step[j] += -(1 / eps) * k * gij
    assert torch.equal(jumprelu(a, theta, eps), a * (a > theta)) and torch.equal(step(a, theta, eps), (a > theta).double())
    assert torch.allclose(a1.grad, want_a) and torch.allclose(th1.grad, torch.tensor(want_jump, dtype=torch.float64))
    assert a2.grad is None or torch.count_nonzero(a2.grad) == 0
    assert torch.allclose(th2.grad, torch.tensor(want_step, dtype=torch.float64))
    # in the window |a - theta| < eps / 2: (1, 0), (0, 1), (2, 1) (a = theta: no jump yet, in the kernel), (1, 2), (2, 2)
    assert want_step == pytest.approx([-10 * 3.0, -10 * (-2.0 + 0.3), -10 * (-1.0 + 2.0)])


def test_jumprelu_training_loss_gradient_in_log_threshold_by_hand():
    """The whole train step: d loss / d log_theta = theta * (sum_b -(theta/eps) K * dmse/dz + lambda/B sum_b
    -(1/eps) K), with K at relu(pre) - theta, computed here with plain tensors."""
    acts = torch.randn(64, D, generator=torch.Generator().manual_seed(1)) * 2 + 1
    t = JumpReLUTrainer(acts, N_LAT, l0_coef=0.3, bandwidth=0.5, init_threshold=0.4, epochs=1, batch_size=32, lr=1e-3,
                        seed=0)
    x_all = t.setup()
    t.step = t.ramp  # past the warm-up of lambda
    x = x_all[:32]
    loss = t.loss(x, torch.arange(32))
    loss.backward()
    with torch.no_grad():
        a = torch.relu((x - t.b_dec) @ t.W_enc.t() + t.b_enc)
        theta = t.log_theta.exp()
        K = (((a - theta) / 0.5).abs() < 0.5).float()
        assert K.sum() > 5  # some pre-activations fall in the window
        z = a * (a > theta)
        dmse_dz = -2 * (x - (z @ t.W_dec + t.b_dec)) @ t.W_dec.t() / (32 * t.d)
        want = theta * ((-(theta / 0.5) * K * dmse_dz).sum(0) + 0.3 / 32 * (-(1 / 0.5) * K).sum(0))
    assert torch.allclose(t.log_theta.grad, want, atol=1e-5, rtol=1e-4)


def test_jumprelu_encode_save_load_and_missing_threshold(tmp_path):
    W_enc, b_enc, W_dec, b_dec, x = toy(1)
    theta = torch.linspace(0.0, 1.5, N_LAT, dtype=torch.float64)
    sae = SAE(W_enc, b_enc, W_dec, b_dec, JumpReLUConfig(), extra={"threshold": theta})
    pre = (x - b_dec) @ W_enc.t() + b_enc
    codes = sae.encode(x)
    assert torch.equal(codes, pre * (pre > theta)) and (codes >= 0).all()
    back = load_sae(SAE(*(t.float() for t in (W_enc, b_enc, W_dec, b_dec)), JumpReLUConfig(),
                        extra={"threshold": theta.float()}).save(tmp_path / "j"))
    assert architecture_of(back.config).name == "jumprelu" and torch.equal(back.extra["threshold"], theta.float())
    with pytest.raises(ConfigError, match="threshold"):
        SAE(W_enc, b_enc, W_dec, b_dec, JumpReLUConfig())
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(tmp_path / "j" / "sae.safetensors"))
    del tensors["threshold"]
    save_file(tensors, str(tmp_path / "j" / "sae.safetensors"))
    with pytest.raises(HarnessError, match="lacks tensor.*threshold"):
        load_sae(tmp_path / "j")


def test_jumprelu_sparsity_follows_its_coefficient():
    g = torch.Generator().manual_seed(2)
    acts = (torch.rand(1024, 24, generator=g) < 0.1).float() @ torch.randn(24, 8, generator=g)
    l0 = [float((train_jumprelu_sae(acts, 32, l0_coef=c, bandwidth=0.05, init_threshold=0.05, epochs=2,
                                    batch_size=128)[0].encode(acts) > 0).sum(1).double().mean()) for c in (0.001, 0.1)]
    assert l0[1] < l0[0]


# ====================================================================== BatchTopK
def test_batch_topk_selection_equals_a_sort_of_the_whole_batch():
    pre = torch.randn(7, 20, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    pre[2] += 2.0  # one row takes many more than k
    pre[4] -= 5.0  # one row gets none
    for k in (1, 3, 25):
        vals, idx = batch_topk_relu(pre, k)
        z = torch.zeros_like(pre).scatter_add_(1, idx, vals)
        assert torch.equal(z, naive_batch_topk(pre, k))
        assert all(r == sorted(set(r)) for r in idx.tolist())  # distinct, sorted
        assert (z > 0).sum() == min(k * 7, int((pre > 0).sum()))
    # wide rows: the answer comes from each row's 4k candidates (above: row 2 overflows them, so the whole batch)
    wide = torch.randn(6, 200, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    for k in (2, 5):
        vals, idx = batch_topk_relu(wide, k)
        assert torch.equal(torch.zeros_like(wide).scatter_add_(1, idx, vals), naive_batch_topk(wide, k))
        assert all(r == sorted(set(r)) for r in idx.tolist())


@pytest.mark.parametrize("aux", [False, True])
def test_batch_topk_sparse_backward_equals_dense_autograd(aux):
    W_enc, b_enc, W_dec, b_dec, x = toy(4, n_lat=40, rows=16)
    params = [p.clone().requires_grad_() for p in (W_enc, b_enc, W_dec, b_dec)]
    dead = torch.arange(0, 40, 3) if aux else None
    x_hat, aux_hat, vals, idx = topk_sae_forward(x, *params, 3, None, dead, 5, batch=True)
    e = x - x_hat
    loss = e.pow(2).sum() + (0.3 * (aux_hat - e.detach()).pow(2).sum() if aux else 0.0)
    ours = torch.autograd.grad(loss, params)
    ref_params = [p.clone().requires_grad_() for p in (W_enc, b_enc, W_dec, b_dec)]
    We, be, Wd, bd = ref_params
    pre = (x - bd) @ We.t() + be
    mask = naive_batch_topk(pre.detach(), 3) > 0
    z = torch.relu(pre) * mask
    e2 = x - (z @ Wd + bd)
    loss2 = e2.pow(2).sum()
    if aux:
        big = torch.full((40,), float("-inf"), dtype=x.dtype)
        big[dead] = 0
        ta = torch.topk(pre.detach() + big, 5, 1).indices
        za = torch.zeros_like(pre).scatter(1, ta, pre.gather(1, ta).clamp_min(0))
        loss2 = loss2 + 0.3 * (za @ Wd - e2.detach()).pow(2).sum()
    ref = torch.autograd.grad(loss2, ref_params)
    assert torch.allclose(x_hat, z.detach() @ W_dec + b_dec, atol=1e-10)
    for a, b in zip(ours, ref):
        assert torch.allclose(a, b, atol=1e-8)


def test_sparse_encode_gradients_equal_dense_autograd():
    W_enc, b_enc, _, b_dec, x = toy(5)
    idx = torch.tensor([[0, 3, 7], [1, 2, 11], [4, 5, 6]] * 3)
    g = torch.randn(ROWS, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    ins = [t.clone().requires_grad_() for t in (x - b_dec, W_enc, b_enc)]
    ours = torch.autograd.grad((sparse_encode(*ins, idx) * g).sum(), ins)
    ref_ins = [t.clone().requires_grad_() for t in (x - b_dec, W_enc, b_enc)]
    pre = ref_ins[0] @ ref_ins[1].t() + ref_ins[2]
    ref = torch.autograd.grad((pre.gather(1, idx) * g).sum(), ref_ins)
    assert torch.allclose(sparse_encode(*ins, idx), pre.gather(1, idx), atol=1e-12)
    for a, b in zip(ours, ref):
        assert torch.allclose(a, b, atol=1e-10)


def test_batch_topk_threshold_is_the_mean_of_the_second_half_minima_and_encoding_is_per_sample():
    acts = torch.randn(600, D, generator=torch.Generator().manual_seed(7)) @ torch.randn(D, D, generator=torch.Generator().manual_seed(8))
    seen: list[float] = []

    class Watched(BatchTopKTrainer):
        def update(self, loss):
            super().update(loss)
            _, vals = self.selected
            seen.append((self.step, float(vals[vals > 0].min())))

    sae, stats = Watched(acts, 24, 3, auxk_coef=1 / 32, k_aux=None, dead_tokens=None, epochs=4, batch_size=100, lr=5e-3,
                         seed=0).run()
    total = stats.steps
    want = sum(v for s, v in seen if s >= total // 2) / sum(1 for s, _ in seen if s >= total // 2)
    assert sae.config.threshold == pytest.approx(want, rel=1e-6) and sae.config.k == 3
    theta = sae.config.threshold
    pre = torch.addmm(sae.b_enc, acts - sae.b_dec, sae.W_enc.t())
    codes = sae.encode(acts)
    assert theta > 0 and torch.equal(codes, pre * (pre > theta))
    assert torch.allclose(sae.encode(acts[5:6]), codes[5:6], atol=1e-5)  # one row alone: the same code
    assert 1.5 < float((codes > 0).sum(1).double().mean()) < 6  # about k on average


def test_batchtopk_config_round_trip_and_errors(tmp_path):
    W_enc, b_enc, W_dec, b_dec, _ = (t.float() for t in toy(9))
    sae = SAE(W_enc, b_enc, W_dec, b_dec, BatchTopKConfig(k=3, threshold=0.25))
    meta = json.loads((sae.save(tmp_path / "b") / "sae.json").read_text())
    assert meta["activation"] == "batchtopk" and meta["threshold"] == 0.25 and meta["k"] == 3
    assert load_sae(tmp_path / "b").config == sae.config
    with pytest.raises(ConfigError, match="inference threshold"):
        SAE(W_enc, b_enc, W_dec, b_dec, BatchTopKConfig(k=3))
    m = SAE(W_enc, b_enc, W_dec, b_dec, MatryoshkaConfig(k=3, threshold=0.1, prefixes=[3, 6, N_LAT]))
    assert m.config.prefixes == (3, 6, N_LAT)
    back = load_sae(m.save(tmp_path / "m"))
    assert back.config == m.config and torch.equal(back.encode(torch.ones(2, D)), m.encode(torch.ones(2, D)))


# ====================================================================== Matryoshka
def test_prefix_sizes_and_their_checks():
    assert prefix_sizes(256, 5) == (16, 32, 64, 128, 256) and prefix_sizes(256, 1) == (256,)
    assert prefix_sizes(4, 5) == (1, 2, 4)
    for bad in ((8, 4, 12), (4, 8), (0, 12), ()):
        with pytest.raises(ConfigError, match="increasing prefix sizes"):
            check_prefixes(bad, 12)


def test_matryoshka_nested_loss_and_gradients_equal_dense_prefixes():
    """sum_l |x - b_dec - z[:, :m_l] W_dec[:m_l]|^2 / (B d), z the BatchTopK codes, written with dense tensors."""
    acts = torch.randn(50, D, generator=torch.Generator().manual_seed(10)) * 1.5 + 0.5
    prefixes, k = (2, 5, N_LAT), 3
    t = MatryoshkaTrainer(acts, N_LAT, k, prefixes=prefixes, auxk_coef=0.0, k_aux=None, dead_tokens=None, epochs=1,
                          batch_size=50, lr=1e-3, seed=0)
    x = t.setup()[:32]
    params = [t.W_enc, t.b_enc, t.W_dec, t.b_dec]
    loss = t.loss(x, torch.arange(32))
    ours = torch.autograd.grad(loss, params)
    ref_params = [p.detach().clone().requires_grad_() for p in params]
    We, be, Wd, bd = ref_params
    pre = (x - bd) @ We.t() + be
    z = torch.relu(pre) * (naive_batch_topk(pre.detach().double(), k) > 0)
    ref_loss = sum((x - bd - z[:, :m] @ Wd[:m]).pow(2).sum() for m in prefixes) / (32 * D)
    ref = torch.autograd.grad(ref_loss, ref_params)
    assert float(loss.detach()) == pytest.approx(float(ref_loss.detach()), rel=1e-5)
    for a, b in zip(ours, ref):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    # a single prefix is BatchTopK's loss
    t1 = MatryoshkaTrainer(acts, N_LAT, k, prefixes=(N_LAT,), auxk_coef=0.0, k_aux=None, dead_tokens=None, epochs=1,
                           batch_size=50, lr=1e-3, seed=0)
    x1 = t1.setup()[:32]
    with torch.no_grad():
        x_hat = topk_sae_forward(x1, t1.W_enc, t1.b_enc, t1.W_dec, t1.b_dec, k, batch=True)[0]
        one = float(t1.loss(x1, torch.arange(32)))
    assert one == pytest.approx(float((x1 - x_hat).pow(2).sum()) / (32 * D), rel=1e-5)


def test_new_methods_train_and_encode_on_sparse_data():
    from pathlib import Path

    from harness.core import registry
    from harness.core.context import RunContext

    g = torch.Generator().manual_seed(11)
    X = (torch.rand(2048, 64, generator=g) < 0.05).float() * (1 + torch.rand(2048, 64, generator=g))
    X = X @ torch.nn.functional.normalize(torch.randn(64, 16, generator=g), dim=1)
    for name, params in (("jumprelu-sae", {}), ("batchtopk-sae", {"k": 3}), ("matryoshka-sae", {"k": 3})):
        m = registry.get_method(name).cls.create({"epochs": 3, "batch_size": 128, **params})
        m.setup(RunContext(seed=0, device=torch.device("cpu"), cache_dir=Path("/nonexistent")))
        codes = m.fit(X).encode(X[:100])
        assert not isinstance(codes, SparseCodes) and codes.shape == (100, 64) and (codes >= 0).all()
        x_hat = m.decode(codes)
        fvu = float(((X[:100] - x_hat) ** 2).sum() / ((X[:100] - X[:100].mean(0)) ** 2).sum())
        assert fvu < 0.6, (name, fvu)  # data with ~3 features per row, L0 about 3, 48 steps
        assert m.sae.info["train"]["steps"] == 3 * (2048 // 128) and math.isfinite(m.sae.info["train"]["final_loss"])
