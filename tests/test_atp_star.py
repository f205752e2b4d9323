"""AtP* (harness/methods/atp_star.py) against independent computations on tiny models.

- where the model is nearly linear, AtP* ~ EAP ~ activation patching;
- without its fixes it is EAP exactly; in a two-layer attention-only model without layer norm (where
  everything after the last attention layer is linear) its QK-fixed estimate is activation patching
  exactly, whatever the weights; in three such layers its GradDrop score is, exactly, the mean over
  blocks of |activation patching with that block frozen at its clean output|;
- a hand-built attention-saturation trap: an upstream head switches a later head's attention
  between two saturated patterns; EAP scores it ~0, activation patching and AtP*'s QK fix 4;
- the passes it uses, its parameters, float32 models and the Hugging Face adapter.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.baselines import circuits as bc
from harness.core import registry
from harness.methods.atp_star import AtPStar, atp_star_estimates, atp_star_scores
from harness.models.gpt import GPT, GPTConfig, HookedGPT
from harness.models.tokenizer import WordTokenizer
from harness.protocols.circuits import CircuitData, LastTokenMetric, PassCounter
from test_circuits_methods import make_data, make_model


def act_patch(model, data) -> np.ndarray:
    """Signed single-head resample patching, one full run per head (the baselines' reference loop)."""
    return bc.act_patch_loop(model, data, bc.patch_replacement(model, data, "resample"))


@torch.no_grad()
def act_patch_frozen(model, data, frozen: int) -> np.ndarray:
    """``m(clean) - m(head patched)`` with every head of layer ``frozen`` kept at its clean ``z``
    (in an attention-only model, block ``frozen``'s output fixed at its clean value)."""
    L, H = model.n_layers, model.n_heads
    _, z_clean = model.run_with_cache(data.clean, return_logits=False)
    _, z_corr = model.run_with_cache(data.corrupted, return_logits=False)
    m_clean = float(data.metric.from_logits(model.logits(data.clean)))
    out = np.zeros((L, H))
    for layer in range(L):
        for head in range(H):
            if layer == frozen:
                continue  # the head itself is frozen: no effect
            mask = torch.zeros(L, H, dtype=torch.bool)
            mask[layer, head] = True
            mask[frozen] = True
            rep = z_clean.clone()
            rep[:, :, layer, head] = z_corr[:, :, layer, head]
            out[layer, head] = m_clean - float(data.metric.from_logits(model.run_with_heads_replaced(data.clean, mask, rep)))
    return out


# ------------------------------------------------------------ the plain case
def test_nearly_linear_model_agrees_with_eap_and_activation_patching():
    model = make_model(std=0.02)  # GPT-2-sized weights: every effect is small, the model nearly linear
    data = make_data(model)
    act, eap = act_patch(model, data), bc.eap_scores(model, data)
    _, est = atp_star_estimates(model, data, grad_drop=False)
    scale = np.abs(act).max()
    for got in (est[0], eap):
        assert np.abs(got - act).max() < 0.1 * scale
        assert np.corrcoef(got.ravel(), act.ravel())[0, 1] > 0.99
    np.testing.assert_allclose(atp_star_scores(model, data, grad_drop=False), np.abs(est[0]))


def test_without_fixes_it_is_eap(model64, data64):
    _, est = atp_star_estimates(model64, data64, qk_fix=False, grad_drop=False)
    np.testing.assert_allclose(est[0], bc.eap_scores(model64, data64), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("std", [0.3, 1.0])
def test_two_attention_layers_qk_fix_is_activation_patching_exactly(std):
    """After layer 1's attention everything is linear (no MLP, no layer norm, logit difference), and the QK
    fix recomputes layer 1's attention exactly for each layer-0 head: AtP_QK = activation patching."""
    model = make_model(d_mlp=0, layer_norm=False, n_layers=2, std=std)
    data = make_data(model)
    act, eap = act_patch(model, data), bc.eap_scores(model, data)
    _, est = atp_star_estimates(model, data, grad_drop=False)
    np.testing.assert_allclose(est[0], act, rtol=1e-9, atol=1e-9 * np.abs(act).max())
    assert np.abs(eap - act).max() > 0.05 * np.abs(act).max()  # the weights are large: EAP is not exact


def test_graddrop_is_the_mean_of_frozen_block_patching_in_three_attention_layers():
    """Three attention-only layers without layer norm: each GradDrop variant drops one block, which leaves one
    hop of attention between any head and the logits, computed exactly; so AtP* of head h is exactly
    ``1/(L-1) sum_{k != l(h)} |m(clean) - m(h patched, block k frozen at clean)|``."""
    model = make_model(d_mlp=0, layer_norm=False, n_layers=3, std=0.3)
    data = make_data(model)
    L = model.n_layers
    frozen = [act_patch_frozen(model, data, k) for k in range(L)]
    want = sum(np.abs(f) for f in frozen) / (L - 1)  # frozen[l(h)] is 0 for h's own layer
    np.testing.assert_allclose(atp_star_scores(model, data), want, rtol=1e-9, atol=1e-12)
    drops, est = atp_star_estimates(model, data)
    assert drops == [None, 1, 2]
    for j, k in enumerate(drops[1:], start=1):
        np.testing.assert_allclose(est[j, :k], frozen[k][:k], rtol=1e-9, atol=1e-12)  # earlier heads: exact
        assert np.all(est[j, k] == 0)  # its own layer: no gradient reaches it
        np.testing.assert_allclose(est[j, k + 1:], est[0, k + 1:])  # later heads: unaffected


def test_graddrop_keeps_last_layer_heads_and_averages(model64, data64):
    """Last-layer heads: every variant but their own is the plain estimate, so the score is |estimate|;
    for the others, the score is the formula over the variants."""
    drops, est = atp_star_estimates(model64, data64)
    scores = atp_star_scores(model64, data64)
    L = model64.n_layers
    np.testing.assert_allclose(scores[L - 1], np.abs(est[0, L - 1]))
    for layer in range(L - 1):
        parts = [np.abs(est[0, layer])] * layer + [np.abs(est[j, layer]) for j, k in enumerate(drops) if k and k > layer]
        np.testing.assert_allclose(scores[layer], sum(parts) / (L - 1))


def test_qk_window():
    model = make_model(n_layers=3)
    data = make_data(model)
    full = atp_star_estimates(model, data)[1]
    np.testing.assert_allclose(atp_star_estimates(model, data, qk_window=2)[1], full, rtol=1e-12, atol=1e-14)
    near = atp_star_estimates(model, data, qk_window=1)[1]
    np.testing.assert_allclose(near[:, 1:], full[:, 1:], rtol=1e-12, atol=1e-14)  # layers 1, 2: one later layer
    assert not np.allclose(near[0, 0], full[0, 0])  # layer 0 heads lose the exact term of layer 2
    plain = atp_star_estimates(model, data, qk_fix=False)[1]
    assert not np.allclose(near[0, 0], plain[0, 0])
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="qk_window"):
            atp_star_estimates(model, data, qk_window=bad)


# ----------------------------------------------------- the saturation trap
def saturation_model(n_layers: int = 2, sharpness: float = 40.0) -> tuple[HookedGPT, CircuitData]:
    """A hand-built attention-only GPT (no layer norm) where head A (layer L-2, head 0) decides where head B
    (layer L-1, head 0) looks, through B's query, and B's softmax is saturated either way.

    Residual basis: 0 P, 1 Q (token identities), 2 FLAG (+1 for C, -1 for D), 3 SIG (A's output),
    4 POS0, 5 POS1 (position markers), 6 ONE, 7 OUT.  Prompt ``P Q C`` (corrupted ``P Q D``), metric
    logit(T1) - logit(T2) = 2 OUT at the last position.  A attends uniformly and writes 3 * mean(FLAG) =
    +-1 to SIG at the last position; B's query is ``sharpness * SIG``, its keys +1 at position 0 and
    -1 at position 1 (scores +-sharpness / 2 = +-20: saturated), its value reads P or Q, written as
    +-1 to OUT.  Clean: B reads P, metric +2; with A patched: B reads Q, metric -2.  Every other head
    and layer is zero.
    """
    P, Q, FLAG, SIG, POS0, POS1, ONE, OUT = range(8)
    d = 8
    cfg = GPTConfig(n_layers=n_layers, n_heads=2, d_model=d, d_mlp=0, vocab_size=6, n_ctx=4, layer_norm=False)
    gpt = GPT(cfg).to(torch.float64)
    with torch.no_grad():
        for p in gpt.parameters():
            p.zero_()
        emb = gpt.embed.weight  # tokens: 0 P, 1 Q, 2 C, 3 D, 4 T1, 5 T2
        emb[0, P] = emb[1, Q] = emb[2, FLAG] = 1.0
        emb[3, FLAG] = -1.0
        emb[:, ONE] = 1.0
        gpt.pos_embed.weight[0, POS0] = gpt.pos_embed.weight[1, POS1] = 1.0
        a, b = gpt.blocks[n_layers - 2].attn, gpt.blocks[n_layers - 1].attn
        a.qkv.weight[2 * d + 0, FLAG] = 1.0  # A: q = k = 0 (uniform), v[0] = FLAG
        a.out.weight[SIG, 0] = 3.0
        b.qkv.weight[0, SIG] = sharpness  # B: q[0] = sharpness * SIG
        b.qkv.weight[d + 0, POS0], b.qkv.weight[d + 0, POS1] = 1.0, -1.0  # k[0] = POS0 - POS1
        b.qkv.weight[2 * d + 0, P] = b.qkv.weight[2 * d + 1, Q] = 1.0  # v = (P, Q)
        b.out.weight[OUT, 0], b.out.weight[OUT, 1] = 1.0, -1.0
        gpt.unembed.weight[4, OUT], gpt.unembed.weight[5, OUT] = 1.0, -1.0
    model = HookedGPT(gpt.eval(), WordTokenizer(["P", "Q", "C", "D", "T1", "T2"]), model_id="saturation")
    clean, corrupted = torch.tensor([[0, 1, 2]] * 2), torch.tensor([[0, 1, 3]] * 2)
    metric = LastTokenMetric(torch.tensor([4, 5]), lambda last: last[..., 0] - last[..., 1], "logit_diff")
    return model, CircuitData(model, clean, corrupted, metric, "saturation")


@pytest.mark.parametrize("n_layers", [2, 3, 4])
def test_saturation_trap(n_layers):
    model, data = saturation_model(n_layers)
    a, b = (n_layers - 2, 0), (n_layers - 1, 0)
    act, eap = act_patch(model, data), bc.eap_scores(model, data)
    _, est = atp_star_estimates(model, data)
    assert act[a] == pytest.approx(4.0, abs=1e-6) and act[b] == pytest.approx(4.0, abs=1e-6)
    assert abs(eap[a]) < 1e-6 and eap[b] == pytest.approx(4.0, abs=1e-6)  # EAP misses A: the softmax is flat
    np.testing.assert_allclose(est[0], act, atol=1e-9)  # the QK fix: A's true effect, and B's
    # GradDrop: A's effect runs through B's block alone, so the variants dropping A's block and B's block are
    # 0 and the L - 2 others are the full estimate: AtP*(A) = (L - 2) / (L - 1) * 4
    scores = atp_star_scores(model, data)
    assert scores[a] == pytest.approx(4.0 * (n_layers - 2) / (n_layers - 1), abs=1e-6)
    assert scores[b] == pytest.approx(4.0, abs=1e-6)
    assert atp_star_scores(model, data, qk_fix=False)[a] < 1e-6  # GradDrop alone does not fix saturation
    others = np.ones_like(act, dtype=bool)
    others[a] = others[b] = False
    assert np.all(scores[others] == 0) and np.all(act[others] == 0)


# ------------------------------------------------------ passes, method, dtype
def test_passes(model64, data64):
    """1 corrupted forward; L gradient passes; per later layer one sublayer run for the VJPs and one chunk."""
    counted = PassCounter(model64)
    atp_star_scores(counted, data64)
    L = model64.n_layers
    assert (counted.forward, counted.backward) == (1 + L + 2 * (L - 1), L)
    counted = PassCounter(model64)
    atp_star_scores(counted, data64, qk_fix=False, grad_drop=False)
    assert (counted.forward, counted.backward) == (2, 1)  # EAP's


def test_registered_method(model64, data64):
    entry = registry.get_method("atp-star")
    assert entry.cls is AtPStar and not entry.baseline and "2403.00745" in entry.cls.description
    m = AtPStar.create({})
    assert m.get_params() == {"qk_fix": True, "grad_drop": True, "qk_window": None}
    np.testing.assert_array_equal(m.score_heads(model64, data64), atp_star_scores(model64, data64))


def test_float32_model():
    model = make_model(dtype=torch.float32, n_layers=3)
    data = make_data(model)
    s32 = atp_star_scores(model, data)
    s64 = atp_star_scores(make_model(dtype=torch.float64, n_layers=3), data)
    assert s32.dtype == np.float64 and np.isfinite(s32).all()
    np.testing.assert_allclose(s32, s64, rtol=1e-3, atol=1e-4 * np.abs(s64).max())


@pytest.fixture(scope="module")
def model64():
    return make_model()


@pytest.fixture(scope="module")
def data64(model64):
    return make_data(model64)


# ------------------------------------------------------- Hugging Face adapter
def _hf_gradient_with_block_dropped(hf, tokens, metric_fn, drop: int) -> torch.Tensor:
    """``dM/dz`` of layer 0's heads ``[b, s, H * d_head]`` with block ``drop``'s output gradient dropped, by
    plain PyTorch hooks on the transformers modules (independent of the adapter)."""
    from test_models_hf_causal import attention_modules, out_proj

    base = hf.base_model
    layers = base.h if hasattr(base, "h") else base.layers
    b, s = tokens.shape
    probe = torch.zeros(b, s, hf.config.hidden_size, dtype=torch.float64, requires_grad=True)

    def add_probe(module, args):
        return (args[0] + probe, *args[1:])

    def detach(module, args, kwargs, output):
        pre = args[0] if args else kwargs["hidden_states"]
        out = output[0] if isinstance(output, tuple) else output
        new = out.detach() + (pre - pre.detach())
        return (new, *output[1:]) if isinstance(output, tuple) else new

    handles = [out_proj(attention_modules(hf)[0]).register_forward_pre_hook(add_probe),
               layers[drop].register_forward_hook(detach, with_kwargs=True)]
    try:
        (grad,) = torch.autograd.grad(metric_fn(hf(tokens).logits), probe)
    finally:
        for h in handles:
            h.remove()
    return grad


@pytest.mark.parametrize("family", ["gpt2", "neox", "llama"])
def test_hugging_face_adapter(family):
    pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    from harness.models import HFCausalLM
    from test_models_hf_causal import WORDS, make_hf, make_tokenizer

    hf = make_hf(family=family)
    model = HFCausalLM(hf, make_tokenizer(), model_id=f"tiny-{family}")
    g = torch.Generator().manual_seed(3)
    clean = torch.randint(0, len(WORDS), (6, 7), generator=g)
    corrupted = clean.clone()
    corrupted[:, 1:3] = torch.randint(0, len(WORDS), (6, 2), generator=g)
    metric = LastTokenMetric(torch.tensor([2, 3]), lambda last: last[..., 0] - last[..., 1], "logit_diff")
    data = CircuitData(model, clean, corrupted, metric, "hf")
    L, H = model.n_layers, model.n_heads
    _, plain = atp_star_estimates(model, data, qk_fix=False, grad_drop=False)
    np.testing.assert_allclose(plain[0], bc.eap_scores(model, data), rtol=1e-10, atol=1e-12)
    # GradDrop's hook: layer 0's estimate with block 1 dropped, against plain PyTorch hooks on the modules
    drops, est = atp_star_estimates(model, data, qk_fix=False)
    assert drops == [None, 1]
    with torch.no_grad():
        z_clean = model.run_with_cache(clean, return_logits=False)[1][:, :, 0]
        z_corr = model.run_with_cache(corrupted, return_logits=False)[1][:, :, 0]
    grad = _hf_gradient_with_block_dropped(hf, clean, metric.from_logits, 1).reshape(z_clean.shape)
    want = -torch.einsum("bshd,bshd->h", z_corr - z_clean, grad).numpy()
    np.testing.assert_allclose(est[1, 0], want, rtol=1e-8, atol=1e-12)
    assert not np.allclose(est[1, 0], est[0, 0])  # dropping block 1 changes layer 0's estimate
    # the QK fix runs on the adapter; last-layer heads have no later layer and keep |estimate|
    drops, est = atp_star_estimates(model, data)
    scores = atp_star_scores(model, data)
    assert np.isfinite(scores).all() and scores.shape == (L, H)
    np.testing.assert_allclose(est[0, L - 1], plain[0, L - 1], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(scores[L - 1], np.abs(est[0, L - 1]), rtol=1e-10, atol=1e-12)
    assert not np.allclose(est[0, 0], plain[0, 0])
