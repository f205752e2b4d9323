"""HFGPT2 over a tiny randomly initialised transformers GPT-2 (no download, no network)."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from harness.errors import HarnessError  # noqa: E402
from harness.models import HFGPT2, load_model  # noqa: E402

hf_logging.set_verbosity_error()

WORDS = ["[UNK]", "When", "Mary", "John", "went", "to", "the", "store", "gave", "a", "drink"]
WORDS += [f"w{i}" for i in range(120 - len(WORDS))]
L, H, D = 2, 4, 32


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one thread is fastest and immune to oversubscription on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


def make_hf(seed=0, dtype=torch.float64, attn="sdpa"):
    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=L, n_head=H, n_embd=D, vocab_size=len(WORDS), n_positions=32,
                     bos_token_id=0, eos_token_id=0, attn_implementation=attn)
    model = GPT2LMHeadModel(cfg).to(dtype)
    with torch.no_grad():  # non-zero biases, so that the output-projection bias is really tested
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(std=0.05)
    return model.eval()  # a freshly built model is in training mode (dropout)


@pytest.fixture(params=["sdpa", "eager"])
def pair(request):
    """(plain transformers model, HFGPT2 adapter over it)."""
    hf = make_hf(attn=request.param)
    return hf, HFGPT2(hf, make_tokenizer(), model_id="tiny-gpt2")


def rand_tokens(b=5, s=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, len(WORDS), (b, s), generator=g)


def test_tokens_interface(pair):
    _, model = pair
    toks = model.to_tokens(["When Mary went", "When John went"])
    assert toks.tolist() == [[1, 2, 4], [1, 3, 4]]
    assert model.token_id(" Mary") == 2 and model.token_id("Mary John") is None
    assert model.to_str_tokens(toks[0]) == ["When", "Mary", "went"]
    with pytest.raises(ValueError, match="'When John went to'"):
        model.to_tokens(["When Mary went", "When John went to"])
    assert (model.n_layers, model.n_heads, model.d_model, model.d_head) == (L, H, D, D // H)


# --------------------------------------------------------------- (a) logits
def test_hooked_logits_equal_plain_model(pair):
    hf, model = pair
    toks = rand_tokens()
    with torch.no_grad():
        plain = hf(toks).logits
        logits, z = model.run_with_cache(toks)
    torch.testing.assert_close(logits, plain, rtol=0, atol=1e-12)
    torch.testing.assert_close(model.logits(toks), plain, rtol=0, atol=1e-12)
    assert z.shape == (5, 7, L, H, D // H)
    # the hooks are inert outside the adapter's own runs: no replacement function is left installed
    with torch.no_grad():
        assert torch.equal(hf(toks).logits, plain)


# ---------------------------------------------------------- (b) head results
def test_head_results_sum_to_attention_output(pair):
    hf, model = pair
    toks = rand_tokens()
    outs = {}
    handles = [
        blk.attn.register_forward_hook(lambda mod, args, out, l=l: outs.__setitem__(l, out[0].detach()))
        for l, blk in enumerate(hf.transformer.h)
    ]
    try:
        with torch.no_grad():
            _, z = model.run_with_cache(toks)
    finally:
        for h in handles:
            h.remove()
    res = model.head_results(z)
    for l in range(L):
        torch.testing.assert_close(res[:, :, l].sum(dim=2) + model.b_O[l], outs[l])


# ------------------------------------------------------ (c) zero ablation
def test_zero_all_heads_equals_bias_only_attention(pair):
    hf, model = pair
    toks = rand_tokens()
    with torch.no_grad():
        ablated = model.run_with_heads_replaced(toks, torch.ones(L, H, dtype=torch.bool), 0.0)
    handles = [
        blk.attn.register_forward_hook(lambda mod, args, out: (mod.c_proj.bias.expand_as(out[0]), *out[1:]))
        for blk in hf.transformer.h
    ]
    try:
        with torch.no_grad():
            expected = hf(toks).logits
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(ablated, expected)


# ----------------------------------------------------------- (d) ablate_many
def random_masks(seed=0):
    g = torch.Generator().manual_seed(seed)
    masks = [torch.zeros(L, H, dtype=torch.bool)]
    for l in range(L):
        m = torch.zeros(L, H, dtype=torch.bool)
        m[l, l + 1] = True
        masks.append(m)
    masks.append(torch.ones(L, H, dtype=torch.bool))
    masks += list(torch.rand(8, L, H, generator=g) < 0.3)
    return torch.stack(masks)


@pytest.mark.parametrize("position", [-1, 4])
def test_ablate_many_equals_loop(pair, position):
    _, model = pair
    toks = rand_tokens()
    masks = random_masks()
    token_ids = torch.tensor([2, 3, 17])
    with torch.no_grad():
        reps = {"zero": 0.0, "mean": model.mean_z(rand_tokens(b=8, seed=5)),
                "resample": model.run_with_cache(rand_tokens(seed=9))[1]}
        for name, rep in reps.items():
            expected = torch.stack([model.run_with_heads_replaced(toks, m, rep)[:, position] for m in masks])
            got = model.ablate_many(toks, masks, rep, position=position, token_ids=token_ids)
            torch.testing.assert_close(got, expected[..., token_ids], msg=name)
            got = model.ablate_many(toks, masks, rep, position=position, chunk_tokens=1)
            torch.testing.assert_close(got, expected, msg=name)


def test_ablate_many_float32():
    model = HFGPT2(make_hf(dtype=torch.float32, seed=3), make_tokenizer())
    toks = rand_tokens()
    masks = random_masks(seed=2)
    with torch.no_grad():
        rep = model.run_with_cache(rand_tokens(seed=9))[1]
        expected = torch.stack([model.run_with_heads_replaced(toks, m, rep)[:, -1] for m in masks])
    torch.testing.assert_close(model.ablate_many(toks, masks, rep), expected, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------- (e) head gradients
def metric(logits):
    return (logits[:, -1, 2] - logits[:, -1, 3]).mean() + 0.3 * torch.log_softmax(logits[:, 1], -1)[:, 5].sum()


def test_head_gradients_equal_autograd_on_explicit_replacement(pair):
    hf, model = pair
    toks = rand_tokens()
    z, grad = model.head_gradients(toks, metric)
    assert z.shape == grad.shape == (5, 7, L, H, D // H)
    for l in range(L):
        leaf = z.clone().requires_grad_(True)
        mask = torch.zeros(L, H, dtype=torch.bool)
        mask[l] = True
        (expected,) = torch.autograd.grad(metric(model.run_with_heads_replaced(toks, mask, leaf)), leaf)
        torch.testing.assert_close(grad[:, :, l], expected[:, :, l])
    assert all(p.grad is None for p in hf.parameters())


def test_head_gradients_finite_differences(pair):
    _, model = pair
    toks = rand_tokens(b=2, s=5)
    z, grad = model.head_gradients(toks, metric)
    eps = 1e-6
    for idx in [(0, 4, 0, 1, 3), (1, 2, 1, 0, 0), (1, 0, 0, 3, 7)]:
        mask = torch.zeros(L, H, dtype=torch.bool)
        mask[idx[2]] = True
        plus, minus = z.clone(), z.clone()
        plus[idx] += eps
        minus[idx] -= eps
        with torch.no_grad():
            fd = (metric(model.run_with_heads_replaced(toks, mask, plus))
                  - metric(model.run_with_heads_replaced(toks, mask, minus))) / (2 * eps)
        assert abs(fd.item() - grad[idx].item()) < 1e-6 * max(1.0, abs(fd.item()))


# ----------------------------------------------------------------- (f) loading
def test_load_model_from_save_pretrained_directory(tmp_path):
    hf = make_hf(dtype=torch.float32)
    hf.save_pretrained(tmp_path / "tiny")
    make_tokenizer().save_pretrained(tmp_path / "tiny")
    model = load_model(str(tmp_path / "tiny"), "cpu")
    assert isinstance(model, HFGPT2)
    assert (model.n_layers, model.n_heads, model.d_model) == (L, H, D)
    assert model.token_id(" Mary") == 2
    toks = model.to_tokens(["When Mary went to the store", "When John went to the store"])
    with torch.no_grad():
        torch.testing.assert_close(model.logits(toks), hf.eval()(toks).logits)


def test_load_model_directory_without_tokenizer(tmp_path):
    make_hf(dtype=torch.float32).save_pretrained(tmp_path / "tiny")
    with pytest.raises(HarnessError, match="tokenizer"):
        load_model(str(tmp_path / "tiny"))


def test_load_model_gpt2_absent_gives_instructions(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.chdir(tmp_path)  # so that "gpt2" is not a directory by accident
    with pytest.raises(HarnessError) as err:
        load_model("gpt2", "cpu")
    msg = str(err.value)
    assert "AutoModelForCausalLM.from_pretrained('gpt2')" in msg
    assert "AutoTokenizer.from_pretrained('gpt2')" in msg
    assert "HF_HOME" in msg and str(tmp_path / "empty-hf-home") in msg
    assert "\n" not in msg


def test_load_model_rejects_other_architectures_and_empty_dirs(tmp_path):
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(
        json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]})
    )
    with pytest.raises(HarnessError, match="LlamaForCausalLM"):
        load_model(str(tmp_path / "llama"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(HarnessError, match="gpt.json"):
        load_model(str(tmp_path / "empty"))
    with pytest.raises(HarnessError, match="does not exist"):
        load_model(str(tmp_path / "missing"))


def test_unfused_gelu_and_hook_hygiene():
    hf = make_hf()
    toks = rand_tokens()
    with torch.no_grad():
        plain = hf(toks).logits
    exact = HFGPT2(hf, make_tokenizer(), fused_gelu=False)
    with torch.no_grad():
        torch.testing.assert_close(exact.logits(toks), plain, rtol=0, atol=1e-12)
    # an exception inside a run leaves no replacement active
    with pytest.raises(RuntimeError, match="boom"):
        exact.head_gradients(toks, lambda logits: (_ for _ in ()).throw(RuntimeError("boom")))
    with torch.no_grad():
        torch.testing.assert_close(exact.logits(toks), plain, rtol=0, atol=1e-12)
    exact.remove_hooks()
    with torch.no_grad():
        assert torch.equal(hf(toks).logits, plain)
