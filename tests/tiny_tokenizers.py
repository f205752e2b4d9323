"""Tiny Hugging Face tokenizers built offline, for the tokenizer-alignment tests.

- :func:`byte_level_bpe`: GPT-2's kind of tokenizer (byte-level pre-tokenizer with GPT-2's regex, BPE,
  byte-level decoder) over a hand-made vocabulary: every listed word is one token, built by left-to-right
  merges; words written with a leading space (``" Mary"``) rank before bare ones (``"05"``), so that
  ``" 1705"`` splits into ``" 17"`` + ``"05"`` as in GPT-2.
- :func:`word_level`: a word-level tokenizer (unknown words map to ``[UNK]``) with a choice of
  pre-tokenizer: ``"whitespace_split"`` (``"store,"`` is one word), ``"whitespace"`` (``\\w+|[^\\w\\s]+``),
  or ``"digits"`` (Llama-style: a metaspace ``"▁"`` marks spaces and numbers split into single digits).
- :func:`tiny_gpt2`: a randomly initialised GPT-2 sized for such a tokenizer.
"""

from __future__ import annotations

from typing import Iterable

from harness.data import prompts as P

SPACE = "\u0120"  # "Ġ": the byte-level alphabet's space


def byte_level_bpe(spaced: Iterable[str], bare: Iterable[str] = ()):
    """A GPT-2-style byte-level BPE tokenizer in which ``" " + w`` (``w`` in ``spaced``) and ``w`` (``bare``)
    are single tokens; every other string splits into smaller pieces."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": 0}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab.setdefault(ch, len(vocab))
    merges: list[tuple[str, str]] = []

    def add(word: str) -> None:
        cur = word[0]
        for ch in word[1:]:
            if cur + ch not in vocab:
                vocab[cur + ch] = len(vocab)
                merges.append((cur, ch))
            cur += ch

    for w in spaced:
        add(SPACE + w)
    for w in bare:
        add(w)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>")


def circuit_words(omit: Iterable[str] = ()) -> tuple[list[str], list[str]]:
    """The words of the circuit prompts: ``(spaced, bare)`` as GPT-2 writes them, without ``omit``."""
    omit = set(omit)
    spaced, bare = [], []
    for template in P.IOI_TEMPLATES + (P.GT_TEMPLATE,):
        for i, seg in enumerate(template):
            if not seg.startswith("{"):
                (spaced if seg.startswith(" ") else bare).append(seg.strip())
    spaced += list(P.IOI_NAMES) + list(P.IOI_PLACES) + list(P.IOI_OBJECTS) + list(P.GT_NOUNS)
    spaced += [str(c) for c in P.GT_CENTURIES]
    bare += [P.yy(v) for v in range(100)]
    keep = lambda words: [w for w in dict.fromkeys(words) if w not in omit]  # noqa: E731
    return keep(spaced), keep(bare)


def word_level(words: Iterable[str], pre_tokenizer: str = "whitespace_split", unk: str = "[UNK]"):
    """A word-level tokenizer over ``[unk] + words`` (``words`` in order, duplicates dropped)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(dict.fromkeys([unk, *words]))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    if pre_tokenizer == "whitespace_split":
        tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    elif pre_tokenizer == "whitespace":
        tk.pre_tokenizer = pre_tokenizers.Whitespace()
    elif pre_tokenizer == "digits":
        tk.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always"),
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.Punctuation(),
        ])
        tk.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    else:
        raise ValueError(pre_tokenizer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token=unk)


def tiny_gpt2(vocab_size: int, seed: int = 0, n_positions: int = 32):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_embd=32, n_layer=2, n_head=4,
                        bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config).eval()
