"""Circuit prompts for models whose tokenizer is not the harness's: alignment, rendering choice, drops.

- (a) The committed planted IOI model, exported into a ``transformers.GPT2LMHeadModel`` with a word-level
  Hugging Face tokenizer (whitespace pre-tokenizer, so ``"store,"`` would be one word) whose vocabulary
  renames some names, a place and an object to words the harness does not know and lacks the words of one
  template: run through the CLI with every circuits method, every cell is ok, the drops are recorded and
  activation patching recovers the planted heads.
- (b) Token offsets and alignment on a GPT-2-style byte-level BPE tokenizer, word-level tokenizers and
  a Llama-style digit-splitting one (for which greater-than fails with one line, IOI still runs).
- The embedded planted models' and a GPT-2 BPE tokenizer's prompts and tokens are those of the
  one-token-per-segment code this replaced (digests recorded from it).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from transformers.utils import logging as hf_logging  # noqa: E402

from harness.core import registry  # noqa: E402
from harness.data import circuits as D  # noqa: E402
from harness.data import prompts as P  # noqa: E402
from harness.data.alignment import Aligner  # noqa: E402
from harness.errors import HarnessError  # noqa: E402
from harness.models.loading import load_model  # noqa: E402
from harness.models.tokens import offsets_by_decoding  # noqa: E402
from tiny_tokenizers import byte_level_bpe, circuit_words, tiny_gpt2, word_level  # noqa: E402

hf_logging.set_verbosity_error()
PLANTED_IOI = Path(__file__).resolve().parents[1] / "harness" / "embedded" / "weights" / "planted-ioi"

#: Planted-model words renamed in the exported tokenizer (the model's ids stay): unusable candidates.
RENAMED = {"Grace": "Gandalf", "Kevin": "Frodo", "hospital": "Mordor", "necklace": "Palantir"}
#: Words of template 2 ("While A and B were at the PLACE, S2 passed a OBJECT to") left out of the exported
#: tokenizer (they become [UNK]): the template is unusable.
LEFT_OUT = ("While", "were", "at", "passed")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------- (a) a model trained elsewhere
def export_planted_ioi(directory: Path) -> tuple[Path, list[list[int]]]:
    """The planted IOI model as a GPT2LMHeadModel + word-level tokenizer in ``directory``; its circuit heads."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from harness.models.gpt import load_gpt

    ours = load_gpt(PLANTED_IOI)
    c, gpt = ours.config, ours.model
    vocab = [RENAMED.get(w, w) for w in ours.tokenizer.vocab]
    vocab = [f"[unused{i}]" if w in LEFT_OUT else w for i, w in enumerate(vocab)] + ["[UNK]"]
    config = GPT2Config(
        vocab_size=len(vocab), n_positions=c.n_ctx, n_embd=c.d_model, n_layer=c.n_layers, n_head=c.n_heads,
        n_inner=c.d_mlp, activation_function="gelu", layer_norm_epsilon=1e-5, tie_word_embeddings=False,
        bos_token_id=len(vocab) - 1, eos_token_id=len(vocab) - 1,
    )
    hf = GPT2LMHeadModel(config).eval()
    V = c.vocab_size
    with torch.no_grad():
        tr = hf.transformer
        tr.wte.weight.zero_()
        tr.wte.weight[:V] = gpt.embed.weight
        tr.wpe.weight.copy_(gpt.pos_embed.weight)
        for ours_block, block in zip(gpt.blocks, tr.h):
            for theirs, mine in [(block.ln_1, ours_block.ln1), (block.ln_2, ours_block.ln2)]:
                theirs.weight.copy_(mine.weight)
                theirs.bias.copy_(mine.bias)
            for theirs, mine in [(block.attn.c_attn, ours_block.attn.qkv), (block.attn.c_proj, ours_block.attn.out),
                                 (block.mlp.c_fc, ours_block.mlp.fc_in), (block.mlp.c_proj, ours_block.mlp.fc_out)]:
                theirs.weight.copy_(mine.weight.T)  # Conv1D is [in, out], nn.Linear [out, in]
                theirs.bias.copy_(mine.bias)
        tr.ln_f.weight.copy_(gpt.ln_f.weight)
        tr.ln_f.bias.copy_(gpt.ln_f.bias)
        hf.lm_head.weight.zero_()
        hf.lm_head.weight[:V] = gpt.unembed.weight
    tokens = torch.randint(0, V, (4, c.n_ctx), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens).logits[..., :V], gpt(tokens), atol=1e-5, rtol=0)
    hf.save_pretrained(directory)
    word_level(vocab[:-1], "whitespace_split").save_pretrained(directory)
    return directory, [list(h) for h in ours.card["circuit_heads"]]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    d, heads = export_planted_ioi(tmp_path_factory.mktemp("planted-ioi-hf"))
    gt = d.parent / "planted-ioi-heads.json"
    gt.write_text(json.dumps({"heads": heads}))
    return d, gt


def test_exported_model_prompts(exported):
    model = load_model(str(exported[0]))
    vocab = D.ioi_vocabulary(model)
    assert vocab.style == "words"  # "store," is one (unknown) word for this tokenizer: the text rendering fails
    assert vocab.templates == [0, 1] and list(vocab.dropped_templates) == [2]
    assert "unknown word(s)" in vocab.dropped_templates[2] and "While" in vocab.dropped_templates[2]
    assert vocab.dropped_summary() == {"names": ["Grace", "Kevin"], "places": ["hospital"], "objects": ["necklace"]}
    split = D.ioi_split(model, 32, 0, vocab)
    assert split.clean.shape == (32, 14) and split.texts[0].endswith(" to")
    pos = split.info["positions"]
    rows = torch.arange(32)
    assert torch.equal(split.clean[rows, pos["io"]], split.info["io_ids"])
    assert torch.equal(split.clean[rows, pos["s2"]], split.info["s_ids"])
    assert torch.equal(split.clean[rows, pos["s1"]], split.info["s_ids"]) and (pos["end"] == 13).all()


def test_exported_model_runs_every_circuits_method_from_the_cli(exported, tmp_path, capsys):
    from harness.cli import main
    from harness.core.records import Store

    directory, gt = exported
    methods = sorted(e.name for e in registry.methods("circuits"))
    results = tmp_path / "results"
    code = main(["run", "--tasks", "circuits/ioi", "--methods", *methods, "--seeds", "0", "--model", str(directory),
                 "--ground-truth", str(gt), "--no-progress", "--results-dir", str(results)])
    out = capsys.readouterr().out
    assert code == 0, out
    records = {r["method"]: r for r in Store(results).load_all()}
    assert sorted(records) == methods and all(r["status"] == "ok" for r in records.values())
    for r in records.values():
        assert r["metrics"]["dropped_candidates"] == 4 and r["metrics"]["dropped_templates"] == 1
        prompts = r["artifacts"]["prompts"]
        assert prompts["style"] == "words" and list(prompts["dropped_templates"]) == ["2"]
        assert prompts["dropped"] == {"names": ["Grace", "Kevin"], "places": ["hospital"], "objects": ["necklace"]}
    aucs = {m: r["metrics"]["roc_auc"] for m, r in records.items()}
    print("ROC-AUC on the exported planted IOI model:", json.dumps(aucs, sort_keys=True))
    assert aucs["act-patch-mean"] == 1.0 and aucs["act-patch-resample"] == 1.0
