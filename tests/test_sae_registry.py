"""The SAE architecture registry: each architecture against an independent computation on a toy input,
the registry's lookups and errors, the on-disk round trip, and the shared training loop against loops
written out here."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from harness.core.seeding import torch_threads
from harness.errors import ConfigError, DuplicateNameError, HarnessError
from harness.protocols.reconstruction import SparseCodes
from harness.sae import (
    SAE,
    Architecture,
    ArgmaxConfig,
    DiscreteConfig,
    ReLUConfig,
    SAEConfig,
    TopKConfig,
    architecture_names,
    architecture_of,
    get_architecture,
    load_sae,
    register_architecture,
    train_discrete_sae,
    train_relu_sae,
)
from harness.sae.discrete import PlainAdam
from harness.sae.training import Trainer
from sae_toys import random_weights

D, N_LAT, ROWS = 6, 10, 9


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    with torch_threads(1):
        yield


def toy(config: SAEConfig, seed: int = 0) -> tuple[SAE, torch.Tensor]:
    """Random float64 weights and inputs (float64: the reference computations below agree to ~1e-12)."""
    W_enc, b_enc, W_dec, b_dec, x = random_weights(seed, N_LAT, D, ROWS)
    return SAE(W_enc, b_enc, W_dec, b_dec, config), x


def pre_loop(sae: SAE, x: torch.Tensor, centre: bool = True) -> torch.Tensor:
    """``pre[i, j] = sum_c (x[i, c] - b_dec[c]) W_enc[j, c] + b_enc[j]``, one dot product at a time."""
    out = torch.empty(x.shape[0], sae.n_latents, dtype=x.dtype)
    for i in range(x.shape[0]):
        xc = x[i] - sae.b_dec if centre else x[i]
        for j in range(sae.n_latents):
            out[i, j] = sum(float(xc[c]) * float(sae.W_enc[j, c]) for c in range(x.shape[1])) + float(sae.b_enc[j])
    return out


def decode_loop(sae: SAE, dense: torch.Tensor) -> torch.Tensor:
    return torch.stack([sae.b_dec + sum(dense[i, j] * sae.W_dec[j] for j in range(sae.n_latents))
                        for i in range(dense.shape[0])])


def as_dense(codes) -> torch.Tensor:
    return codes.to_dense() if isinstance(codes, SparseCodes) else codes


# ====================================================================== architectures vs independent code
def test_builtin_architectures_registered_with_their_configs():
    assert architecture_names()[:4] == ("topk", "relu", "argmax", "discrete")
    for name, cfg in (("topk", TopKConfig(k=2)), ("relu", ReLUConfig()), ("argmax", ArgmaxConfig()),
                      ("discrete", DiscreteConfig())):
        assert get_architecture(name).config_cls is type(cfg) and architecture_of(cfg).name == name
        assert type(cfg).architecture == name


@pytest.mark.parametrize("centre", [True, False])
def test_relu_codes_and_decode(centre):
    sae, x = toy(ReLUConfig(apply_b_dec_to_input=centre))
    z = pre_loop(sae, x, centre).clamp_min(0)
    codes = sae.encode(x)
    assert isinstance(codes, torch.Tensor) and torch.allclose(codes, z, atol=1e-12)
    assert torch.allclose(sae.decode(codes), decode_loop(sae, z), atol=1e-12)


def test_topk_codes_are_the_k_largest_relu_preactivations():
    sae, x = toy(TopKConfig(k=3))
    pre = pre_loop(sae, x)
    codes = sae.encode(x)
    assert isinstance(codes, SparseCodes) and codes.indices.shape == (ROWS, 3)
    for i in range(ROWS):
        order = sorted(range(N_LAT), key=lambda j: -float(pre[i, j]))[:3]
        assert codes.indices[i].tolist() == sorted(order)  # indices sorted within a row
        assert torch.allclose(codes.values[i], pre[i, sorted(order)].clamp_min(0), atol=1e-12)
    assert torch.allclose(sae.decode(codes), decode_loop(sae, as_dense(codes)), atol=1e-12)


def test_gsae_selects_by_gradient_scaled_relu_but_keeps_relu_values():
    beta, gscale = 2.0, 0.5
    sae, x = toy(TopKConfig(k=2, grad_beta=beta, grad_scale=gscale))
    g = torch.randn(ROWS, D, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    pre = pre_loop(sae, x)
    unit = [sae.W_dec[j] / sae.W_dec[j].norm() for j in range(N_LAT)]
    codes = sae.encode(x, g)
    for i in range(ROWS):
        score = [max(float(pre[i, j]), 0.0) * (1 + beta * abs(float(gscale * g[i] @ unit[j]))) for j in range(N_LAT)]
        chosen = sorted(sorted(range(N_LAT), key=lambda j: -score[j])[:2])
        assert codes.indices[i].tolist() == chosen
        assert torch.allclose(codes.values[i], pre[i, chosen].clamp_min(0), atol=1e-12)
    plain = sae.replace(grad_beta=0.0)
    assert plain.config.k == 2 and torch.equal(plain.W_enc, sae.W_enc)
    assert torch.equal(plain.encode(x).indices, toy(TopKConfig(k=2))[0].encode(x).indices)
    with pytest.raises(HarnessError, match="gradients"):
        sae.encode(x)


def test_argmax_code_is_the_largest_relu_latent():
    sae, x = toy(ArgmaxConfig())
    z = pre_loop(sae, x).clamp_min(0)
    assert (z.max(1).values > 0).all()
    codes = sae.encode(x)
    assert codes.indices.shape == (ROWS, 1)
    assert codes.indices[:, 0].tolist() == [int(z[i].argmax()) for i in range(ROWS)]
    assert torch.allclose(codes.values[:, 0], z.max(1).values, atol=1e-12)
    assert torch.allclose(sae.decode(codes), decode_loop(sae, as_dense(codes)), atol=1e-12)


@pytest.mark.parametrize("shift", [0.0, -100.0])
def test_discrete_code_is_the_argmax_of_the_preactivation_even_when_negative(shift):
    sae, x = toy(DiscreteConfig())
    sae = dataclasses.replace(sae, b_enc=sae.b_enc + shift)  # shift -100: every pre-activation negative
    pre = pre_loop(sae, x)
    codes = sae.encode(x)
    assert codes.indices[:, 0].tolist() == [int(pre[i].argmax()) for i in range(ROWS)]
    assert torch.allclose(codes.values[:, 0], pre.max(1).values.clamp_min(0), atol=1e-12)
    x_hat, f = sae.arch.forward(sae, x)
    assert torch.allclose(f, pre.clamp_min(0), atol=1e-12)
    assert torch.allclose(x_hat, decode_loop(sae, pre.clamp_min(0)), atol=1e-12)


# ====================================================================== registry
def test_registry_errors():
    with pytest.raises(ConfigError, match="activation must be one of"):
        get_architecture("gelu")
    with pytest.raises(DuplicateNameError):
        register_architecture("topk", TopKConfig)(type("Again", (Architecture,), {}))
    with pytest.raises(ConfigError, match="1 <= k <= n_latents"):
        toy(TopKConfig(k=N_LAT + 1))
    with pytest.raises(ConfigError, match="1 <= k"):
        toy(TopKConfig())
    with pytest.raises(ConfigError, match="inconsistent SAE shapes"):
        SAE(torch.zeros(3, 2), torch.zeros(3), torch.zeros(3, 4), torch.zeros(4), ReLUConfig())
    with pytest.raises(ConfigError, match="relu / argmax"):
        train_relu_sae(torch.randn(20, 3), 4, config=TopKConfig(k=1))


def test_a_new_architecture_plugs_in(tmp_path):
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class ThresholdConfig(SAEConfig):
        threshold: float = 0.5
        saved = ("threshold",)

    @register_architecture("test-threshold", ThresholdConfig)
    class Threshold(Architecture):
        def encode(self, sae, x, grads=None):
            pre = torch.addmm(sae.b_enc, self.centred(sae, x), sae.W_enc.t())
            return pre * (pre > sae.config.threshold)

    try:
        sae, x = toy(ThresholdConfig(threshold=0.2))
        pre = pre_loop(sae, x)
        assert torch.allclose(sae.encode(x), pre * (pre > 0.2), atol=1e-12)
        back = load_sae(sae.save(tmp_path / "t"))
        assert back.config == ThresholdConfig(threshold=0.2)
    finally:
        from harness.sae import registry

        registry._ARCHITECTURES.pop("test-threshold")


@pytest.mark.parametrize("config", [TopKConfig(k=3), ReLUConfig(apply_b_dec_to_input=False), ArgmaxConfig(),
                                    DiscreteConfig()], ids=lambda c: type(c).architecture)
def test_save_load_round_trip(tmp_path, config):
    sae, x = toy(config)
    sae = SAE(*(t.float() for t in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec)), config)
    meta = json.loads((sae.save(tmp_path / "s") / "sae.json").read_text())
    assert meta["activation"] == type(config).architecture and meta["n_latents"] == N_LAT
    assert ("k" in meta) == isinstance(config, TopKConfig)
    back = load_sae(tmp_path / "s")
    assert back.config == config and back.info["path"] == str(tmp_path / "s")
    a, b = as_dense(sae.encode(x.float())), as_dense(back.encode(x.float()))
    assert torch.equal(a, b)
    if isinstance(config, TopKConfig):
        assert load_sae(tmp_path / "s", k=1).config.k == 1
    else:
        assert load_sae(tmp_path / "s", k=1).config == config  # k means nothing here: ignored


# ====================================================================== training
def test_batches_cover_each_row_once_per_epoch():
    for drop_last, sizes in ((True, [4, 4]), (False, [4, 4, 2])):
        t = Trainer(torch.zeros(10, 2), 3, epochs=1, batch_size=4, lr=0.1, seed=0)
        t.drop_last = drop_last
        batches = list(t.batches(10))
        assert [len(b) for b in batches] == sizes
        assert len(set(torch.cat(batches).tolist())) == sum(sizes)
    t = Trainer(torch.zeros(3, 2), 3, epochs=1, batch_size=4, lr=0.1, seed=0)
    assert [len(b) for b in t.batches(3)] == [3]  # fewer rows than a batch: one short batch


def _relu_reference(acts, n_latents, l1_coef, epochs, batch_size, lr, seed):
    """The ReLU-SAE recipe written out in one loop (normalise, init, Adam + schedule, unit decoder rows)."""
    N, d = acts.shape
    gen = torch.Generator().manual_seed(seed)
    mean = acts.mean(0)
    s = math.sqrt(d / (acts - mean).pow(2).sum(1).mean().item())
    x_all = acts * s
    W_dec = torch.randn(n_latents, d, generator=gen)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    W_enc = W_dec.clone().requires_grad_()
    W_dec.requires_grad_()
    b_enc = torch.zeros(n_latents, requires_grad=True)
    b_dec = (mean * s).clone().requires_grad_()
    opt = torch.optim.Adam([W_enc, b_enc, W_dec, b_dec], lr=lr, fused=True)
    steps = max(1, N // batch_size)
    total, step = epochs * steps, 0
    warmup, ramp, decay = max(1, total // 20), max(1, total // 10), int(0.8 * total)
    for _ in range(epochs):
        perm = torch.randperm(N, generator=gen)
        for b in range(steps):
            x = x_all[perm[b * batch_size : (b + 1) * batch_size]]
            z = torch.relu(torch.addmm(b_enc, x - b_dec, W_enc.t()))
            x_hat = torch.addmm(b_dec, z, W_dec)
            loss = (x - x_hat).pow(2).sum(1).mean() / d
            loss = loss + l1_coef * min(1.0, (step + 1) / ramp) * z.sum(1).mean() / math.sqrt(d)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            with torch.no_grad():
                W_dec.grad -= (W_dec.grad * W_dec).sum(1, keepdim=True) * W_dec
            rate = lr * (step + 1) / warmup if step < warmup else (
                lr * max(0.0, (total - step) / max(1, total - decay)) if step >= decay else lr)
            opt.param_groups[0]["lr"] = rate
            opt.step()
            with torch.no_grad():
                W_dec /= W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
            step += 1
    return W_enc.detach() * s, b_enc.detach(), W_dec.detach() / s, b_dec.detach() / s


def test_relu_trainer_equals_the_recipe_written_out():
    g = torch.Generator().manual_seed(3)
    acts = torch.randn(300, 8, generator=g) @ torch.randn(8, 8, generator=g) + 2
    sae, stats = train_relu_sae(acts, 24, l1_coef=0.1, epochs=3, batch_size=64, lr=1e-2, seed=5)
    ref = _relu_reference(acts, 24, 0.1, 3, 64, 1e-2, 5)
    for got, want in zip((sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec), ref):
        assert torch.equal(got, want)
    assert stats.steps == 3 * (300 // 64) and stats.tokens == stats.steps * 64


def test_discrete_trainer_equals_the_loop_written_out():
    x = torch.randn(150, 5, generator=torch.Generator().manual_seed(4))
    sae, stats = train_discrete_sae(x, 12, l1=0.03, epochs=4, batch_size=64, lr=1e-2, seed=2)
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(12, 5, generator=gen)
    w = w / w.norm(dim=1, keepdim=True)
    W_enc = (w.T.clone() * min(1.0, 2.0 * 5 / 12)).requires_grad_()
    W_dec, b_enc, b_dec = w.requires_grad_(), torch.zeros(12, requires_grad=True), x.mean(0).clone().requires_grad_()
    opt = PlainAdam([W_dec, W_enc, b_enc, b_dec], lr=1e-2)
    for _ in range(4):
        perm = torch.randperm(150, generator=gen)
        for start in range(0, 150, 64):
            xb = x[perm[start : start + 64]]
            f = torch.relu((xb - b_dec) @ W_enc + b_enc)
            loss = (xb - (f @ W_dec + b_dec)).pow(2).sum(-1).mean() + 0.03 * f.abs().sum(-1).mean()
            opt.step(torch.autograd.grad(loss, opt.params))
            with torch.no_grad():
                W_dec.div_(W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))
    assert torch.equal(sae.W_enc, W_enc.detach().t()) and torch.equal(sae.W_dec, W_dec.detach())
    assert torch.equal(sae.b_enc, b_enc.detach()) and torch.equal(sae.b_dec, b_dec.detach())
    assert stats.steps == 4 * 3 and stats.tokens == 4 * 150


def test_plain_adam_matches_the_adam_formula():
    p = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ref, m, v = p.clone(), torch.zeros_like(p), torch.zeros_like(p)
    opt = PlainAdam([p], lr=1e-2)
    for t in range(1, 6):
        g = torch.sin(p * t)
        gr = torch.sin(ref * t)
        opt.step([g])
        m = 0.9 * m + 0.1 * gr
        v = 0.999 * v + 0.001 * gr * gr
        ref = ref - 1e-2 * (m / (1 - 0.9**t)) / ((v / (1 - 0.999**t)).sqrt() + 1e-8)
    assert torch.allclose(p, ref, atol=1e-12)
