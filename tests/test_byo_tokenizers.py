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
import re
from pathlib import Path

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

    from harness.protocols.edges import has_edge_scores

    directory, gt = exported
    entries = registry.methods("circuits")
    methods = sorted(e.name for e in entries if not has_edge_scores(e.cls))  # edge methods: see below
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
    # edge-level methods need split q/k/v inputs, which a transformers model does not expose: an error record
    # saying so, not a faked score
    edge_methods = sorted(e.name for e in entries if has_edge_scores(e.cls))
    assert edge_methods and main(["run", "--tasks", "circuits/ioi", "--methods", edge_methods[0], "--seeds", "0",
                                  "--model", str(directory), "--ground-truth", str(gt), "--no-progress",
                                  "--results-dir", str(results)]) == 1
    record = {r["method"]: r for r in Store(results).load_all(statuses=("error",))}[edge_methods[0]]
    assert record["status"] == "error" and "split q/k/v inputs; supported: the harness's GPT models" in record["error"]


# ------------------------------------------------------------- (b) offsets and alignment
def hf_dir(directory: Path, tokenizer) -> Path:
    """A tiny random GPT-2 and ``tokenizer``, written by save_pretrained (loaded back with load_model)."""
    tiny_gpt2(len(tokenizer)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def bpe_tokenizer(omit=("Kevin", "Adam", "50", "07")):
    return byte_level_bpe(*circuit_words(omit=omit))


def digit_tokenizer():
    """Llama-style: a metaspace marks spaces, numbers are split into single digits."""
    spaced, _ = circuit_words()
    return word_level(["\u2581" + w for w in spaced + ["When", "After", "While", "The"]] + [",", "\u2581"]
                      + [str(d) for d in range(10)], "digits")


TOKENIZERS = {
    "bpe": bpe_tokenizer,
    "whitespace_split": lambda: word_level(["When", "Mary", "and", "store,", "store", ",", "John", "Mandy"]),
    "whitespace": lambda: word_level(["The", "war", "17", "05", ",", "Mary"], "whitespace"),
    "digits": digit_tokenizer,
}
TEXTS = [
    "When Mary and John went to the store, John gave a drink to", " Kevin Mary", "the year 17 05",
    "The war lasted from the year 1705 to the year 17", "Zed and Mandy and store, Mary", "The war, 1705 ok",
    "  h\u00e9llo Mary  ", "Mandy and",
]


def _trimmed(text, triples):
    out = []
    for tid, a, b in triples:
        while a < b and text[a].isspace():
            a += 1
        while b > a and text[b - 1].isspace():
            b -= 1
        out.append((tid, a, b) if a < b else (tid, None, None))
    return out


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
def test_offsets_by_decoding_match_the_fast_tokenizers_offsets(name):
    """The decoding fallback gives the offsets the fast tokenizer reports (leading whitespace aside),
    unknown words included (each [UNK] spans the word it replaced)."""
    tok = TOKENIZERS[name]()
    for text in TEXTS:
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        want = [(i, a, b) for i, (a, b) in zip(enc["input_ids"], enc["offset_mapping"])]
        got = offsets_by_decoding(text, enc["input_ids"], lambda i: tok.decode([i]))
        assert _trimmed(text, got) == _trimmed(text, want), (name, text)


def test_encode_with_offsets_of_the_harness_and_hf_models(tmp_path):
    from harness.models import GPT, GPTConfig, HookedGPT, WordTokenizer

    words = ["When", "Mary", "and", "store", ","]
    ours = HookedGPT(GPT(GPTConfig(1, 1, 8, 0, len(words), 8)), WordTokenizer(words))
    assert ours.encode_with_offsets("When  Mary ,") == [(0, 0, 4), (1, 6, 10), (4, 11, 12)]
    with pytest.raises(ValueError, match="unknown word 'store,'"):
        ours.encode_with_offsets("When store,")
    hf = load_model(str(hf_dir(tmp_path / "bpe", bpe_tokenizer())))
    text = "When Mary and John went to the store, John gave a drink to"
    triples = hf.encode_with_offsets(text)
    assert [t for t, _, _ in triples] == hf.encode(text)
    words = ["When", "Mary", "and", "John", "went", "to", "the", "store", ","]
    assert [text[a:b].strip() for _, a, b in triples][:9] == words


def test_alignment_rule_on_bpe(tmp_path):
    model = load_model(str(hf_dir(tmp_path / "bpe", bpe_tokenizer())))
    al = Aligner(model)
    ok = al.align(("When", " Mary", " and", " John", ","), "text")
    assert ok.token_of == (0, 1, 2, 3, 4) and not ok.unknown
    split = al.align(("When", " Kevin", " and"), "text")  # " Kevin" is several tokens: not aligned
    assert split.token_of[1] is None and split.token_of[2] is not None
    glued = al.align(("The", " year", " 17", "07"), "text")  # "07" is no token: " 17" "0" "7"
    assert glued.token_of[2] is not None and glued.token_of[3] is None
    assert al.answer_id(("The", " year", " 17"), "05", "text") == al.standalone_id("05", "text")
    assert al.answer_id(("The", " year", " 17"), "07", "text") is None


@pytest.mark.parametrize("omit, kept, dropped, length", [
    ((), [0, 1, 2], [], 14),
    (("handed",), [0, 2], [1], 14),  # " handed" is 6 tokens: template 1 is 19 tokens long, the others 14
    (("handed", "passed"), [1, 2], [0], 19),  # two templates of 19 tokens outvote one of 14
])
def test_templates_of_another_layout_are_dropped(tmp_path, omit, kept, dropped, length):
    model = load_model(str(hf_dir(tmp_path / "bpe", bpe_tokenizer(omit=omit))))
    vocab = D.ioi_vocabulary(model)
    assert vocab.style == "text" and vocab.templates == kept and list(vocab.dropped_templates) == dropped
    assert all("a batch has one layout" in why for why in vocab.dropped_templates.values())
    split = D.ioi_split(model, 16, 0, vocab)
    assert set(split.info["templates"]) == set(kept) and split.clean.shape == (16, length)
    assert (split.info["positions"]["end"] == length - 1).all()
    rows = torch.arange(16)
    assert torch.equal(split.clean[rows, split.info["positions"]["io"]], split.info["io_ids"])


def test_fixed_words_may_be_several_tokens(tmp_path):
    """Without " lasted" in the BPE vocabulary the greater-than prompts are longer; XX and YY are found
    where they are."""
    model = load_model(str(hf_dir(tmp_path / "bpe", bpe_tokenizer(omit=("lasted", "50")))))
    split = D.greater_than_split(model, 16, 0)
    pos = split.info["positions"]
    assert split.clean.shape[1] > len(P.GT_TEMPLATE) and pos["yy"][0] > 7
    year_id = dict(zip(split.info["year_values"].tolist(), split.info["year_ids"].tolist()))
    rows = torch.arange(16)
    assert split.clean[rows, pos["yy"]].tolist() == [year_id[int(y)] for y in split.info["yy"]]
    assert model.to_str_tokens(split.clean[0, pos["xx"][0]:pos["xx"][0] + 2]) == [f" {split.texts[0][-2:]}",
                                                                                 f"{int(split.info['yy'][0]):02d}"]


def test_rendering_is_chosen_per_task_and_tokenizer(tmp_path):
    """A word-level tokenizer that splits off punctuation reads IOI as text, but '1705' is one word for it:
    greater-than is written 'the year 17 05'."""
    spaced, bare = circuit_words()
    model = load_model(str(hf_dir(tmp_path / "w", word_level(spaced + bare, "whitespace"))))
    assert D.ioi_vocabulary(model).style == "text"
    gt = D.greater_than_vocabulary(model)
    assert gt.style == "words" and gt.n_dropped == 0
    assert re.search(r" the year \d\d \d\d to the year \d\d$", D.greater_than_split(model, 4, 0, gt).texts[0])


def test_digit_splitting_tokenizer(tmp_path):
    model = load_model(str(hf_dir(tmp_path / "digits", digit_tokenizer())))
    with pytest.raises(HarnessError) as err:
        D.greater_than_vocabulary(model)
    msg = str(err.value)
    assert "\n" not in msg and "digit by digit" in msg and "17 + 05" in msg
    assert D.ioi_vocabulary(model).n_dropped == 0  # the same tokenizer runs IOI


def test_too_few_names_is_one_line(tmp_path):
    spaced, bare = circuit_words(omit=[n for n in P.IOI_NAMES if n not in ("Mary", "John")])
    model = load_model(str(hf_dir(tmp_path / "w", word_level(spaced + bare, "whitespace"))))
    with pytest.raises(HarnessError, match=r"at least 3 names .*only \['Mary', 'John'\]") as err:
        D.ioi_vocabulary(model)
    assert "\n" not in str(err.value)


def test_a_task_that_cannot_be_built_is_an_error_record_and_the_others_run(tmp_path, capsys):
    from harness.cli import main
    from harness.core.records import Store

    directory = hf_dir(tmp_path / "digits", digit_tokenizer())
    gt = tmp_path / "gt.json"
    gt.write_text("[[0, 1], [1, 2]]")
    code = main(["run", "--tasks", "circuits/ioi", "circuits/greater_than", "--methods", "random", "--seeds", "0",
                 "--model", str(directory), "--ground-truth", str(gt), "--set", "n_fit=4", "--set", "n_eval=8",
                 "--no-progress", "--results-dir", str(tmp_path / "results")])
    capsys.readouterr()
    assert code == 1
    records = {r["task"]: r for r in Store(tmp_path / "results").load_all(("ok", "error"))}
    assert records["circuits/ioi"]["status"] == "ok"
    error = records["circuits/greater_than"]["error"]
    assert records["circuits/greater_than"]["status"] == "error" and "\n" not in error and "digit by digit" in error


# ------------------------------------------------------------- unchanged for the embedded models and BPE
#: Digests of split tokens, texts and answer ids (33 prompts; seeds 0 and 5) made by the code this replaced,
#: which required every segment to be one token.
BEFORE = {
    "planted-ioi/ioi/0": "4a941ea8dfa09c94", "planted-ioi/ioi/5": "92d04a166bebd3e2",
    "planted-greater-than/gt/0": "0916a31842fa585c", "planted-greater-than/gt/5": "91e0e838bd9aa07e",
    "bpe/ioi/0": "ee1cc2cba3c1800c", "bpe/ioi/5": "e85932ee5bcf15d7",
    "bpe/gt/0": "b0e28c430158ef7a", "bpe/gt/5": "36bdb839dafd0c52",
}


def split_digest(split: D.Split) -> str:
    h = hashlib.sha256()
    for t in (split.clean, split.corrupted):
        h.update(t.cpu().numpy().astype("int64").tobytes())
    h.update(json.dumps([split.texts, split.corrupted_texts]).encode())
    ids = split.metric.token_ids if split.metric.token_ids is not None else split.info["year_ids"]
    h.update(ids.cpu().numpy().astype("int64").tobytes())
    return h.hexdigest()[:16]


def test_prompts_of_embedded_models_and_bpe_are_unchanged(tmp_path):
    from harness.tasks.circuits.task import get_model

    models = {name: get_model(name, "cpu", tmp_path / "models") for name in ("planted-ioi", "planted-greater-than")}
    models["bpe"] = load_model(str(hf_dir(tmp_path / "bpe", bpe_tokenizer())))
    got = {}
    for key in BEFORE:
        name, task, seed = key.split("/")
        split = (D.ioi_split if task == "ioi" else D.greater_than_split)(models[name], 33, int(seed))
        got[key] = split_digest(split)
    assert got == BEFORE
