"""Bring your own model: tiny random GPT-2, GPT-NeoX and Llama checkpoints saved with save_pretrained.

Each is saved with a BPE (byte-level, trained here on rendered prompts) or a word-level tokenizer,
then brought with ``harness run --model DIR --ground-truth FILE`` through the command line, with
every registered node-level circuits method: every cell must be ok (the edge-level ones, which need split
q/k/v inputs, must give an error record saying so). The models are random, so the scores say
nothing; what is tested is that each family and tokenizer runs end to end. The reconstruction
family reads the same models' activations through the same adapter.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from harness.cli import main  # noqa: E402
from harness.core import registry  # noqa: E402
from harness.core.records import Store  # noqa: E402
from harness.data import prompts as P  # noqa: E402
from harness.protocols.edges import has_edge_scores  # noqa: E402


def corpus() -> list[str]:
    """Prompt texts in GPT-2's rendering, covering every candidate word (to train the BPE)."""
    texts = [P.render(p.clean, "text") for p in P.generate_ioi(400, seed=0)]
    texts += [P.render(p.clean, "text") for p in P.generate_greater_than(200, seed=0)]
    texts += [" " + " ".join(P.IOI_NAMES + P.IOI_PLACES + P.IOI_OBJECTS)] * 20
    return texts


def bpe_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=700, min_frequency=1, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(corpus(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>")


def word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[UNK]"]
    for template in P.IOI_TEMPLATES:
        words += [s.strip() for s in template if not s.startswith("{")]
    words += list(P.IOI_NAMES + P.IOI_PLACES + P.IOI_OBJECTS)
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(dict.fromkeys(words))}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]")


def tiny_config(family: str, vocab: int):
    sizes = dict(num_hidden_layers=2, num_attention_heads=4, hidden_size=32, intermediate_size=64,
                 vocab_size=vocab, max_position_embeddings=64, bos_token_id=0, eos_token_id=0)
    if family == "gpt2":
        return transformers.GPT2Config(n_layer=2, n_head=4, n_embd=32, vocab_size=vocab, n_positions=64,
                                       bos_token_id=0, eos_token_id=0)
    if family == "gpt_neox":
        return transformers.GPTNeoXConfig(**sizes)
    return transformers.LlamaConfig(**sizes, num_key_value_heads=2)


CASES = [("gpt2", "bpe"), ("gpt_neox", "word"), ("llama", "bpe")]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def model_dir(request, tmp_path_factory) -> Path:
    family, kind = request.param
    tokenizer = bpe_tokenizer() if kind == "bpe" else word_tokenizer()
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(tiny_config(family, len(tokenizer)))
    d = tmp_path_factory.mktemp(f"{family}-{kind}")
    model.save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


def test_every_circuits_method_runs_on_a_brought_model(model_dir, tmp_path, capsys):
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps([[0, 1], [1, 2], [1, 3]]))
    entries = registry.methods("circuits")
    edge_methods = sorted(e.name for e in entries if has_edge_scores(e.cls))  # need split q/k/v inputs
    methods = sorted(e.name for e in entries if e.name not in edge_methods)
    results = tmp_path / "results"
    code = main(["run", "--tasks", "circuits/ioi", "--methods", *methods, "--seeds", "0", "--model", str(model_dir),
                 "--ground-truth", str(gt), "--set", "n_fit=8", "--set", "n_eval=16", "--no-progress",
                 "--results-dir", str(results), "--cache-dir", str(tmp_path / "cache")])
    out = capsys.readouterr().out
    assert code == 0, out
    records = Store(results).load_all()
    assert sorted(r["method"] for r in records) == methods
    assert all(r["status"] == "ok" for r in records), [r.get("error") for r in records]
    assert all(0.0 <= r["metrics"]["roc_auc"] <= 1.0 for r in records)
    # edge-level methods refuse a Hugging Face model with one line (an error record), never a faked score
    assert main(["run", "--tasks", "circuits/ioi", "--methods", *edge_methods, "--seeds", "0", "--model",
                 str(model_dir), "--ground-truth", str(gt), "--set", "n_fit=8", "--set", "n_eval=16", "--no-progress",
                 "--results-dir", str(results), "--cache-dir", str(tmp_path / "cache")]) == 1
    errors = Store(results).load_all(statuses=("error",))
    assert sorted(r["method"] for r in errors) == edge_methods
    assert all("split q/k/v inputs; supported: the harness's GPT models" in r["error"] for r in errors)


def test_sae_reconstruction_on_a_brought_model(model_dir, tmp_path, capsys):
    """reconstruction/gpt2-* read any supported model given with --model, through the same adapter."""
    if "word" in model_dir.name:
        pytest.skip("the word-level tokenizer knows only the prompts' words; the docstring corpus would be [UNK]")
    results = tmp_path / "results"
    code = main(["run", "--tasks", "reconstruction/gpt2-resid", "reconstruction/gpt2-z", "--methods", "identity",
                 "topk-sae", "--seeds", "0", "--model", str(model_dir), "--set", "layer=1", "--set", "n_train=24",
                 "--set", "n_test=8", "--set", "seq_len=16", "--grid", "k=4", "--no-progress",
                 "--results-dir", str(results), "--cache-dir", str(tmp_path / "cache")])
    out = capsys.readouterr().out
    assert code == 0, out
    records = {(r["task"], r["method"]): r for r in Store(results).load_all()}
    assert len(records) == 4 and all(r["status"] == "ok" for r in records.values())
    for task in ("reconstruction/gpt2-resid", "reconstruction/gpt2-z"):
        identity = records[(task, "identity")]["metrics"]
        assert identity["loss_recovered"] == pytest.approx(1.0, abs=1e-6)  # splicing the activations back is exact
        assert 0.0 <= records[(task, "topk-sae")]["metrics"]["fvu"]
