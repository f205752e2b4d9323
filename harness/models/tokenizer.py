"""A word-level tokenizer for the harness's own small GPTs: one token per whitespace-separated word."""

from __future__ import annotations

import json
import re
from typing import Iterable, Sequence


class WordTokenizer:
    """Maps whitespace-separated words to ids ``0 .. len(vocab) - 1`` in vocabulary order.

    >>> tok = WordTokenizer(["When", "Mary", "John"])
    >>> tok.encode("When Mary")
    [0, 1]
    """

    def __init__(self, vocab: Sequence[str]):
        vocab = list(vocab)
        if not vocab:
            raise ValueError("WordTokenizer needs a non-empty vocabulary")
        index: dict[str, int] = {}
        for i, word in enumerate(vocab):
            if not isinstance(word, str) or not word or word != word.strip() or len(word.split()) != 1:
                raise ValueError(f"vocabulary entry {i} ({word!r}) must be one non-empty word without whitespace")
            if word in index:
                raise ValueError(f"vocabulary entry {word!r} appears twice (at {index[word]} and {i})")
            index[word] = i
        self.vocab: list[str] = vocab
        self._index = index

    def __len__(self) -> int:
        return len(self.vocab)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        """Ids of the words of ``text``; an unknown word raises ValueError naming it."""
        ids = []
        for word in text.split():
            i = self._index.get(word)
            if i is None:
                raise ValueError(f"unknown word {word!r} in {text!r} (not in the {len(self.vocab)}-word vocabulary)")
            ids.append(i)
        return ids

    def encode_offsets(self, text: str) -> list[tuple[int, int, int]]:
        """``(id, start, end)`` of each word of ``text`` (``text[start:end]`` is the word); unknown words as
        in :meth:`encode`."""
        out = []
        for m in re.finditer(r"\S+", text):
            i = self._index.get(m.group())
            if i is None:
                raise ValueError(f"unknown word {m.group()!r} in {text!r} (not in the {len(self.vocab)}-word vocabulary)")
            out.append((i, m.start(), m.end()))
        return out

    def decode(self, ids: Iterable[int]) -> str:
        return " ".join(self.id_to_token(int(i)) for i in ids)

    def token_to_id(self, word: str) -> int | None:
        """The id of one word (surrounding whitespace ignored), or None if unknown / not one word."""
        return self._index.get(word.strip())

    def id_to_token(self, i: int) -> str:
        if not 0 <= i < len(self.vocab):
            raise ValueError(f"token id {i} is outside the vocabulary (size {len(self.vocab)})")
        return self.vocab[i]

    # JSON ---------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"type": "word", "vocab": list(self.vocab)}

    @classmethod
    def from_dict(cls, data: dict) -> "WordTokenizer":
        if not isinstance(data, dict) or data.get("type") != "word" or "vocab" not in data:
            raise ValueError("not a WordTokenizer description (expected {'type': 'word', 'vocab': [...]})")
        return cls(data["vocab"])

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> "WordTokenizer":
        return cls.from_dict(json.loads(text))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WordTokenizer) and self.vocab == other.vocab

    def __repr__(self) -> str:
        return f"WordTokenizer({len(self.vocab)} words)"
