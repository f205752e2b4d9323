"""HookedGPT (our own small GPT): hooked path, head results, ablation, gradients, save/load."""

from __future__ import annotations

import json

import pytest
import torch

from harness.errors import HarnessError
from harness.models import GPT, GPTConfig, HookedGPT, WordTokenizer, load_gpt, load_model, save_gpt

VOCAB = [f"w{i}" for i in range(40)] + ["When", "Mary", "John", "went", "to", "the", "store", "gave", "a", "drink"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one thread is fastest and immune to oversubscription on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_model(dtype=torch.float64, seed=0, **overrides) -> HookedGPT:
    torch.manual_seed(seed)
    cfg = dict(n_layers=3, n_heads=4, d_model=32, d_mlp=64, vocab_size=len(VOCAB), n_ctx=16, layer_norm=True)
    cfg.update(overrides)
    gpt = GPT(GPTConfig(**cfg)).to(dtype)
    with torch.no_grad():  # non-zero biases so that b_O and friends are really tested
        for name, p in gpt.named_parameters():
            if name.endswith("bias"):
                p.normal_(std=0.05)
    return HookedGPT(gpt, WordTokenizer(VOCAB), model_id="test-gpt")


@pytest.fixture
def model() -> HookedGPT:
    return make_model()


def rand_tokens(model, b=5, s=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.vocab_size, (b, s), generator=g)


# ------------------------------------------------------------------ tokenizer
def test_word_tokenizer_roundtrip_and_errors():
    tok = WordTokenizer(VOCAB)
    ids = tok.encode("When Mary went to the store")
    assert tok.decode(ids) == "When Mary went to the store"
    assert WordTokenizer.from_json(tok.to_json()) == tok
    with pytest.raises(ValueError, match="'Bob'"):
        tok.encode("When Bob went")
    with pytest.raises(ValueError, match="twice"):
        WordTokenizer(["a", "b", "a"])
    with pytest.raises(ValueError):
        WordTokenizer(["a b"])


def test_tokens_interface(model):
    toks = model.to_tokens(["When Mary went", "When John went"])
    assert toks.dtype == torch.long and toks.shape == (2, 3)
    assert model.to_str_tokens(toks[0]) == ["When", "Mary", "went"]
    assert model.to_str_tokens("Mary went") == ["Mary", "went"]
    assert model.token_id(" Mary") == VOCAB.index("Mary")
    assert model.token_id("Mary John") is None
    assert model.token_id("Bob") is None
    with pytest.raises(ValueError, match="'When John went to'"):
        model.to_tokens(["When Mary went", "When John went to"])
    with pytest.raises(ValueError, match="unknown word"):
        model.to_tokens(["When Bob went"])


def test_attributes(model):
    assert (model.n_layers, model.n_heads, model.d_model, model.d_head) == (3, 4, 32, 8)
    assert model.device == torch.device("cpu")
    assert model.model_id == "test-gpt"
    assert model.W_O.shape == (3, 4, 8, 32) and model.b_O.shape == (3, 32)


# --------------------------------------------------------------- (a) logits
def test_hooked_logits_equal_plain_model(model):
    toks = rand_tokens(model)
    plain = model.model(toks)
    assert torch.equal(model.logits(toks), plain)
    logits, z = model.run_with_cache(toks)
    assert torch.equal(logits, plain)
    assert z.shape == (5, 7, 3, 4, 8)
    none, z2 = model.run_with_cache(toks, return_logits=False)
    assert none is None and torch.equal(z, z2)


# ---------------------------------------------------------- (b) head results
def test_head_results_sum_to_attention_output(model):
    toks = rand_tokens(model)
    outs = {}
    handles = [
        blk.attn.register_forward_hook(lambda mod, args, out, l=l: outs.__setitem__(l, out.detach()))
        for l, blk in enumerate(model.model.blocks)
    ]
    try:
        _, z = model.run_with_cache(toks)
    finally:
        for h in handles:
            h.remove()
    res = model.head_results(z)
    assert res.shape == (5, 7, 3, 4, 32)
    for l in range(3):
        torch.testing.assert_close(res[:, :, l].sum(dim=2) + model.b_O[l], outs[l])


# ------------------------------------------------------ (c) zero ablation
def test_zero_all_heads_equals_bias_only_attention(model):
    toks = rand_tokens(model)
    mask = torch.ones(3, 4, dtype=torch.bool)
    ablated = model.run_with_heads_replaced(toks, mask, 0.0)
    handles = [
        blk.attn.register_forward_hook(lambda mod, args, out: mod.out.bias.expand_as(out))
        for blk in model.model.blocks
    ]
    try:
        expected = model.model(toks)
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(ablated, expected)
    # and replacing nothing changes nothing
    none = torch.zeros(3, 4, dtype=torch.bool)
    assert torch.equal(model.run_with_heads_replaced(toks, none, 0.0), model.logits(toks))


def test_replacement_by_own_z_is_identity_and_shapes_checked(model):
    toks = rand_tokens(model)
    logits, z = model.run_with_cache(toks)
    mask = torch.ones(3, 4, dtype=torch.bool)
    torch.testing.assert_close(model.run_with_heads_replaced(toks, mask, z), logits)
    with pytest.raises(ValueError, match="broadcast"):
        model.run_with_heads_replaced(toks, mask, torch.zeros(3, 5))
    with pytest.raises(ValueError, match="shape"):
        model.run_with_heads_replaced(toks, torch.ones(4, 3, dtype=torch.bool), 0.0)
    with pytest.raises(ValueError, match="BoolTensor"):
        model.run_with_heads_replaced(toks, torch.ones(3, 4), 0.0)


# ----------------------------------------------------------- (d) ablate_many
def loop_reference(model, toks, masks, rep, position, token_ids):
    rows = []
    for m in masks:
        logits = model.run_with_heads_replaced(toks, m, rep)[:, position]
        rows.append(logits if token_ids is None else logits[:, token_ids])
    return torch.stack(rows)


def random_masks(n_layers, n_heads, seed=0):
    g = torch.Generator().manual_seed(seed)
    masks = [torch.zeros(n_layers, n_heads, dtype=torch.bool)]  # the empty set
    for l in range(n_layers):  # one single head in each layer, including the last
        m = torch.zeros(n_layers, n_heads, dtype=torch.bool)
        m[l, (l + 1) % n_heads] = True
        masks.append(m)
    masks.append(torch.ones(n_layers, n_heads, dtype=torch.bool))
    masks += list(torch.rand(9, n_layers, n_heads, generator=g) < 0.3)
    return torch.stack(masks)


@pytest.mark.parametrize("position", [-1, 3])
@pytest.mark.parametrize("kind", ["zero", "mean", "resample"])
def test_ablate_many_equals_loop(model, kind, position):
    toks = rand_tokens(model)
    masks = random_masks(3, 4)
    if kind == "zero":
        rep = 0.0
    elif kind == "mean":
        rep = model.mean_z(rand_tokens(model, b=8, seed=5))
    else:
        rep = model.run_with_cache(rand_tokens(model, seed=9))[1]
    token_ids = torch.tensor([VOCAB.index("Mary"), VOCAB.index("John"), 3])
    with torch.no_grad():
        expected = loop_reference(model, toks, masks, rep, position, token_ids)
    got = model.ablate_many(toks, masks, rep, position=position, token_ids=token_ids)
    assert got.shape == (len(masks), 5, 3)
    torch.testing.assert_close(got, expected)
    # full vocabulary, and tiny chunks (several chunks per start layer)
    got_all = model.ablate_many(toks, masks, rep, position=position, chunk_tokens=1)
    with torch.no_grad():
        torch.testing.assert_close(got_all, loop_reference(model, toks, masks, rep, position, None))


def test_ablate_many_float32_and_other_architectures():
    for overrides in [dict(d_mlp=0), dict(layer_norm=False), dict(n_layers=1)]:
        m = make_model(dtype=torch.float32, **overrides)
        toks = rand_tokens(m)
        masks = random_masks(m.n_layers, m.n_heads, seed=3)
        rep = m.run_with_cache(rand_tokens(m, seed=4))[1].detach()
        with torch.no_grad():
            expected = loop_reference(m, toks, masks, rep, -1, None)
        torch.testing.assert_close(m.ablate_many(toks, masks, rep), expected, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------- (e) head gradients
def metric_two_positions(logits):
    return (logits[:, -1, 3] - logits[:, -1, 5]).mean() + 0.5 * logits[:, 2, 7].sum()


def metric_all_positions(logits):
    return torch.log_softmax(logits, dim=-1)[..., 4].mean()


@pytest.mark.parametrize("metric_fn", [metric_two_positions, metric_all_positions])
def test_head_gradients_equal_autograd_on_explicit_replacement(model, metric_fn):
    toks = rand_tokens(model)
    z, grad = model.head_gradients(toks, metric_fn)
    _, z_ref = model.run_with_cache(toks)
    torch.testing.assert_close(z, z_ref.detach())
    assert not z.requires_grad and not grad.requires_grad
    for l in range(model.n_layers):
        # Replacing only layer l's heads by a leaf equal to their own z keeps the run
        # unchanged, and its gradient is the total derivative through later layers.
        leaf = z.clone().requires_grad_(True)
        mask = torch.zeros(3, 4, dtype=torch.bool)
        mask[l] = True
        metric = metric_fn(model.run_with_heads_replaced(toks, mask, leaf))
        (expected,) = torch.autograd.grad(metric, leaf)
        torch.testing.assert_close(grad[:, :, l], expected[:, :, l])
    assert all(p.grad is None for p in model.model.parameters())


def test_head_gradients_finite_differences(model):
    toks = rand_tokens(model, b=2, s=5)
    z, grad = model.head_gradients(toks, metric_two_positions)
    eps = 1e-6
    for idx in [(0, 4, 0, 1, 3), (1, 2, 1, 0, 0), (0, 0, 2, 3, 7)]:
        mask = torch.zeros(3, 4, dtype=torch.bool)
        mask[idx[2]] = True
        plus, minus = z.clone(), z.clone()
        plus[idx] += eps
        minus[idx] -= eps
        with torch.no_grad():
            fd = (metric_two_positions(model.run_with_heads_replaced(toks, mask, plus))
                  - metric_two_positions(model.run_with_heads_replaced(toks, mask, minus))) / (2 * eps)
        assert abs(fd.item() - grad[idx].item()) < 1e-6 * max(1.0, abs(fd.item()))


def test_head_gradients_rejects_non_scalar(model):
    with pytest.raises(ValueError, match="scalar"):
        model.head_gradients(rand_tokens(model), lambda logits: logits[:, -1, 0])


# ------------------------------------------------------------- training
def test_trainable_with_ablated_runs():
    m = make_model(dtype=torch.float32)
    toks = rand_tokens(m, b=8, s=6)
    opt = torch.optim.AdamW(m.model.parameters(), lr=1e-2)
    mask = torch.zeros(3, 4, dtype=torch.bool)
    mask[1, 2] = True
    losses = []
    for _ in range(5):
        clean = m.model(toks)
        ablated = m.run_with_heads_replaced(toks, mask, m.mean_z(toks))
        loss = torch.nn.functional.cross_entropy(clean[:, :-1].flatten(0, 1), toks[:, 1:].flatten()) + (
            (ablated - clean.detach()) ** 2
        ).mean()
        opt.zero_grad()
        loss.backward()
        assert m.model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_context_length_checked(model):
    with pytest.raises(ValueError, match="n_ctx"):
        model.logits(torch.zeros(1, 17, dtype=torch.long))


# ----------------------------------------------------------- (f) save / load
def test_save_load_roundtrip_identical_logits(model, tmp_path):
    card = {"recipe": {"steps": 10, "lr": 1e-3}, "verification": {"circuit_drop": [0.9, 0.95]}}
    save_gpt(model, tmp_path / "m", card)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["gpt.json", "model.safetensors"]
    meta = json.loads((tmp_path / "m" / "gpt.json").read_text())
    assert meta["card"] == card and meta["tokenizer"]["vocab"] == VOCAB
    loaded = load_gpt(tmp_path / "m", device="cpu")
    assert loaded.card == card and loaded.config == model.config and loaded.model_id == "test-gpt"
    toks = rand_tokens(model)
    assert torch.equal(loaded.logits(toks), model.logits(toks))
    via_spec = load_model(str(tmp_path / "m"), "cpu")
    assert isinstance(via_spec, HookedGPT)
    assert torch.equal(via_spec.logits(toks), model.logits(toks))


def test_save_rejects_unserialisable_card_and_load_reports_problems(model, tmp_path):
    with pytest.raises(ValueError, match="JSON"):
        save_gpt(model, tmp_path / "bad", {"x": object()})
    with pytest.raises(HarnessError, match="gpt.json"):
        load_gpt(tmp_path / "nothing-here")
    save_gpt(model, tmp_path / "m", {})
    meta = json.loads((tmp_path / "m" / "gpt.json").read_text())
    meta["config"]["d_model"] = 64
    (tmp_path / "m" / "gpt.json").write_text(json.dumps(meta))
    with pytest.raises(HarnessError, match="do not match"):
        load_gpt(tmp_path / "m")
