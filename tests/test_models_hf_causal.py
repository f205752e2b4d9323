"""HFCausalLM over tiny randomly initialised transformers models of each supported family.

GPT-2, GPT-NeoX (parallel and sequential residual), Llama (grouped key/value heads) and
Qwen2, each built from its config in the test: no download, no network. Logits through the
adapter equal the model's own; head results, zero ablation and gradients are checked
against manual computations on the model's own modules.
"""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from transformers import (  # noqa: E402
    AutoModelForCausalLM, GPT2Config, GPTNeoXConfig, LlamaConfig, PreTrainedTokenizerFast, Qwen2Config,
)
from transformers.utils import logging as hf_logging  # noqa: E402

from harness.errors import HarnessError  # noqa: E402
from harness.models import HFCausalLM, load_model  # noqa: E402

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


FAMILIES = ("gpt2", "neox", "neox-sequential", "llama", "qwen2")


def make_config(family="gpt2", attn="sdpa"):
    sizes = dict(num_hidden_layers=L, num_attention_heads=H, hidden_size=D, intermediate_size=2 * D,
                 vocab_size=len(WORDS), max_position_embeddings=32, bos_token_id=0, eos_token_id=0,
                 attn_implementation=attn)
    if family == "gpt2":
        return GPT2Config(n_layer=L, n_head=H, n_embd=D, vocab_size=len(WORDS), n_positions=32,
                          bos_token_id=0, eos_token_id=0, attn_implementation=attn)
    if family.startswith("neox"):
        return GPTNeoXConfig(**sizes, use_parallel_residual=family == "neox")
    if family == "llama":
        return LlamaConfig(**sizes, num_key_value_heads=H // 2)
    return Qwen2Config(**sizes, num_key_value_heads=H // 2)


def make_hf(seed=0, dtype=torch.float64, attn="sdpa", family="gpt2"):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(make_config(family, attn)).to(dtype)
    with torch.no_grad():  # non-zero biases, so that the output-projection bias is really tested
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(std=0.05)
    return model.eval()  # a freshly built model is in training mode (dropout)


def attention_modules(hf):
    """Each layer's attention module (the test's own map, independent of the adapter's)."""
    base = hf.base_model
    if hasattr(base, "h"):
        return [blk.attn for blk in base.h]
    return [getattr(layer, "attention", None) or layer.self_attn for layer in base.layers]


def out_proj(attn):
    return getattr(attn, "c_proj", None) or getattr(attn, "dense", None) or attn.o_proj


@pytest.fixture(params=[(f, a) for f in FAMILIES for a in ("sdpa", "eager")], ids=lambda p: f"{p[0]}-{p[1]}")
def pair(request):
    """(plain transformers model, HFCausalLM adapter over it)."""
    family, attn = request.param
    hf = make_hf(attn=attn, family=family)
    return hf, HFCausalLM(hf, make_tokenizer(), model_id=f"tiny-{family}")


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
        attn.register_forward_hook(lambda mod, args, out, l=l: outs.__setitem__(l, out[0].detach()))
        for l, attn in enumerate(attention_modules(hf))
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
    def bias_only(mod, args, out):
        bias = out_proj(mod).bias
        return (torch.zeros_like(out[0]) if bias is None else bias.expand_as(out[0]), *out[1:])

    handles = [attn.register_forward_hook(bias_only) for attn in attention_modules(hf)]
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


@pytest.mark.parametrize("family", FAMILIES)
def test_ablate_many_float32(family):
    model = HFCausalLM(make_hf(dtype=torch.float32, seed=3, family=family), make_tokenizer())
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
    hf, model = pair
    if model.config.model_type in ("llama", "qwen2") or (
            model.config.model_type == "gpt_neox" and hf.config._attn_implementation == "eager"):
        pytest.skip("this family computes parts in float32 whatever the model's dtype (Llama/Qwen2's RMSNorm, "
                    "GPT-NeoX's eager softmax), so central differences at eps 1e-6 measure float32 rounding; "
                    "test_head_gradients_equal_autograd_on_explicit_replacement covers its gradients")
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
@pytest.mark.parametrize("family", FAMILIES)
def test_load_model_from_save_pretrained_directory(tmp_path, family):
    hf = make_hf(dtype=torch.float32, family=family)
    hf.save_pretrained(tmp_path / "tiny")
    make_tokenizer().save_pretrained(tmp_path / "tiny")
    model = load_model(str(tmp_path / "tiny"), "cpu")
    assert isinstance(model, HFCausalLM) and model.model_id == "hf:tiny"
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
    (tmp_path / "t5").mkdir()
    (tmp_path / "t5" / "config.json").write_text(
        json.dumps({"model_type": "t5", "architectures": ["T5ForConditionalGeneration"]})
    )
    with pytest.raises(HarnessError, match="T5ForConditionalGeneration.*'gpt2', 'gpt_neox', 'llama'"):
        load_model(str(tmp_path / "t5"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(HarnessError, match="gpt.json"):
        load_model(str(tmp_path / "empty"))
    with pytest.raises(HarnessError, match="does not exist"):
        load_model(str(tmp_path / "missing"))


def test_hook_hygiene():
    """The adapter's module hooks exist only during its runs, also when a run fails."""
    hf = make_hf()
    toks = rand_tokens()
    with torch.no_grad():
        plain = hf(toks).logits
    model = HFCausalLM(hf, make_tokenizer(), fused_gelu=False)
    with pytest.raises(RuntimeError, match="boom"):
        model.head_gradients(toks, lambda logits: (_ for _ in ()).throw(RuntimeError("boom")))
    modules = [hf, *hf.modules()]
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in modules)
    with torch.no_grad():
        assert torch.equal(hf(toks).logits, plain)
        torch.testing.assert_close(model.logits(toks), plain, rtol=0, atol=1e-12)
        fused = HFCausalLM(make_hf(), make_tokenizer())  # GPT-2's gelu_new module swapped for one fused kernel
        assert isinstance(fused.model.base_model.h[0].mlp.act, torch.nn.GELU)
        torch.testing.assert_close(fused.logits(toks), plain, rtol=0, atol=1e-10)


@pytest.mark.parametrize("family", FAMILIES)
def test_head_replacement_equals_manual_write(family):
    """Replacing head h of layer l by r changes that layer's resid_mid by exactly (r - z_h) @ W_O[l, h]."""
    model = HFCausalLM(make_hf(family=family), make_tokenizer())
    toks = rand_tokens()
    names = [f"blocks.{l}.hook_resid_mid" for l in range(L)]
    with torch.no_grad():
        _, clean = model.run_with_cache(toks, names=names)
        _, z = model.run_with_cache(toks)
        rep = torch.randn(z.shape, generator=torch.Generator().manual_seed(4), dtype=z.dtype)
        mask = torch.zeros(L, H, dtype=torch.bool)
        mask[1, 2] = True
        hooks = {"blocks.1.attn.hook_z": lambda act, name: torch.where(mask[1][:, None], rep[:, :, 1], act)}
        cache = {}
        model.run_with_hooks(toks, [*hooks.items(), ("blocks.1.hook_resid_mid", lambda a, n: cache.setdefault(n, a))])
    expected = clean["blocks.1.hook_resid_mid"] + (rep[:, :, 1, 2] - z[:, :, 1, 2]) @ model.W_O[1, 2]
    torch.testing.assert_close(cache["blocks.1.hook_resid_mid"], expected)


@pytest.mark.parametrize("family", FAMILIES)
def test_run_from_and_position_mode_agree_with_full_runs(family):
    """The recomputing run_from equals a full run with the replacement at the start point."""
    model = HFCausalLM(make_hf(family=family), make_tokenizer())
    toks = rand_tokens()
    with torch.no_grad():
        full = model.logits(toks)
        for start in ["hook_embed", "blocks.1.hook_resid_pre", "blocks.0.hook_resid_post"]:
            act = model.run_with_hooks(toks, stop_at=start) * 1.5
            expected = model.run_with_hooks(toks, {start: lambda a, n, act=act: act})
            torch.testing.assert_close(model.run_from(start, act), expected, rtol=0, atol=1e-12)
        torch.testing.assert_close(model.run_with_hooks(toks, position=3), full[:, 3], rtol=0, atol=1e-12)
        seen = []
        model.run_with_hooks(toks, {"blocks.1.attn.hook_z": lambda a, n: seen.append(a.shape)}, position=3)
        assert seen == [torch.Size([5, 1, H, D // H])]
        if model.parallel_residual:
            with pytest.raises(ValueError, match="parallel-residual"):
                model.run_from("blocks.1.hook_resid_mid", full[..., :D])


@pytest.mark.parametrize("family", FAMILIES)
def test_resumed_runs_equal_full_runs_at_every_residual_point(family):
    """run_from (which runs only the layers after its start) equals a full run replacing that point."""
    model = HFCausalLM(make_hf(family=family), make_tokenizer())
    toks = rand_tokens()
    with torch.no_grad():
        _, cache = model.run_with_cache(toks, names=model.hook_points())
        for name in model.hook_points():
            if name.endswith("attn.hook_z") or (model.parallel_residual and name.endswith("hook_resid_mid")):
                continue
            act = cache[name] * 1.5
            expected = model.run_with_hooks(toks, {name: lambda a, n, act=act: act})
            torch.testing.assert_close(model.run_from(name, act), expected, rtol=0, atol=1e-12, msg=name)
            # in position mode the last block's hooks (and a start there) hold the read-out position only
            start = act[:, 4:5] if name.startswith(f"blocks.{L - 1}.") and "pre" not in name else act
            start = act[:, 4] if name == "ln_final.hook_normalized" else start
            expected = model.run_with_hooks(toks, {name: lambda a, n, v=start: v}, position=4, token_ids=[1, 2])
            got = model.run_from(name, start, position=4, token_ids=[1, 2])
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-12, msg=name)
