"""Tokenising half of the hooked-model interface: prompts <-> token ids, and where each token is.

Adapters implement three primitives (``_encode``, ``_decode_one``, ``token_id``) and may implement a
fourth, ``_encode_offsets`` (ids with character offsets, e.g. a fast Hugging Face tokenizer's
``return_offsets_mapping``); the public methods here (:meth:`encode`, :meth:`encode_with_offsets`,
:meth:`to_tokens`, :meth:`to_str_tokens`) are written once on top of them.  Without
``_encode_offsets``, :func:`offsets_by_decoding` derives the offsets from the tokens' decoded text.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from typing import Callable, Sequence

import torch

#: Characters some tokenizers put in a token's text for the space before it (byte-level BPE's
#: ``"Ġ"``, SentencePiece's ``"▁"``); ignored when a decoded token is located in the prompt.
SPACE_MARKERS = "\u0120\u2581"


def strip_space_markers(decoded: str) -> str:
    """A decoded token's text without surrounding whitespace and leading-space markers (``"Ġ"``, ``"▁"``)."""
    return decoded.strip().lstrip(SPACE_MARKERS).strip()


def _match_at(prompt: str, piece: str, at: int) -> bool:
    """Whether ``piece`` is the text of ``prompt`` at ``at`` (case-insensitively: lower-casing tokenizers)."""
    return prompt.startswith(piece, at) or prompt[at : at + len(piece)].casefold() == piece.casefold()


def _find(prompt: str, piece: str, start: int) -> int:
    """Where ``piece`` is next the text of ``prompt`` from ``start`` (case-insensitively), or -1.

    The first such place that is a whole word (word boundaries before and after), else the first that
    starts a word, else the first: after an unknown word the next token starts a word (``"[UNK] and"``
    in ``"Mandy and"`` is not inside ``"Mandy"``), after the bytes of a character split across tokens
    it may not.
    """
    folded, target = prompt.casefold(), piece.casefold()
    if len(folded) != len(prompt):
        folded, target = prompt, piece
    hits, at = [], folded.find(target, start)
    while at >= 0:
        hits.append(at)
        at = folded.find(target, at + 1)

    def starts(at: int) -> bool:
        return at == 0 or not prompt[at - 1].isalnum() or not prompt[at].isalnum()

    def ends(at: int) -> bool:
        end = at + len(piece)
        return end >= len(prompt) or not prompt[end].isalnum() or not prompt[end - 1].isalnum()

    for ok in (lambda at: starts(at) and ends(at), starts, lambda at: True):
        for at in hits:
            if ok(at):
                return at
    return -1


def offsets_by_decoding(prompt: str, ids: Sequence[int], decode: Callable[[int], str]) -> list[tuple[int, int, int]]:
    """``(id, start, end)`` per token, found by locating each token's decoded text in ``prompt`` in order.

    Whitespace and leading-space markers (``"Ġ"``, ``"▁"``) around a token's text are ignored, so the
    span of ``" Mary"`` is ``"Mary"`` without its space; a token that is only whitespace gets the span
    of the whitespace it stands for (empty if there is none).  A token whose text is not found where the
    previous one ended (an unknown-word token such as ``[UNK]``, or one byte of a character split across
    tokens) spans, with any others like it, the text up to the next token that is found: one
    whitespace-separated word each when there are as many words there as such tokens.  Correct for
    GPT-2's byte-level BPE, word-level tokenizers (Hugging Face or the harness's own) and SentencePiece.
    """
    out: list[tuple[int, int, int]] = []
    cursor, pending = 0, []

    def settle(end: int) -> None:
        start = cursor
        while start < end and prompt[start].isspace():
            start += 1
        while end > start and prompt[end - 1].isspace():
            end -= 1
        words = [(m.start() + start, m.end() + start) for m in re.finditer(r"\S+", prompt[start:end])]
        if len(words) != len(pending):  # not one word per token: each gets the whole gap
            words = [(start, end)] * len(pending)
        for i, (a, b) in zip(pending, words):
            out[i] = (out[i][0], a, b)
        pending.clear()

    for tid in ids:
        decoded = decode(int(tid))
        piece = strip_space_markers(decoded)
        if not piece:  # a whitespace token: the whitespace it decodes to, if it is here
            width = len(decoded) if decoded and prompt.startswith(decoded, cursor) else 0
            out.append((int(tid), cursor, cursor + width))
            cursor += width
            continue
        at = cursor
        while at < len(prompt) and prompt[at].isspace():
            at += 1
        if not pending and _match_at(prompt, piece, at):
            found = at
        else:
            found = _find(prompt, piece, cursor) if pending else -1
        if found < 0:  # not here: an unknown-word token or a partial character; placed with the next one found
            out.append((int(tid), cursor, cursor))
            pending.append(len(out) - 1)
            continue
        if pending:
            settle(found)
        out.append((int(tid), found, found + len(piece)))
        cursor = found + len(piece)
    if pending:
        settle(len(prompt))
    return out


class TokensMixin(ABC):
    """Prompts to token ids and back. Needs ``device`` from the model."""

    device: torch.device

    @abstractmethod
    def _encode(self, prompt: str) -> list[int]:
        """Token ids of one prompt (no special tokens added)."""

    @abstractmethod
    def _decode_one(self, token: int) -> str:
        """The string of a single token id."""

    @abstractmethod
    def token_id(self, word: str) -> int | None:
        """The id of ``word`` if it is exactly one token, else None.

        For GPT-2 BPE the leading space matters (``" Mary"`` vs ``"Mary"``).
        """

    def _encode_offsets(self, prompt: str) -> list[tuple[int, int, int]] | None:
        """``(id, start, end)`` per token of one prompt (no special tokens), or None: derive from decoding.

        ``prompt[start:end]`` is the text the token stands for; it may include the whitespace before it
        (as GPT-2's offsets do).  Adapters whose tokenizer reports offsets override this.
        """
        return None

    def encode(self, prompt: str) -> list[int]:
        """Token ids of one prompt as the model's tokenizer splits it (no special tokens, no padding)."""
        return list(self._encode(prompt))

    def encode_with_offsets(self, prompt: str) -> list[tuple[int, int, int]]:
        """``(token id, char start, char end)`` per token of one prompt, ids as :meth:`encode` gives them.

        ``prompt[start:end]`` is the text the token stands for, possibly with the whitespace before it
        (callers that compare spans strip it).  From the adapter's tokenizer when it reports offsets,
        else derived by locating each token's decoded text in the prompt (:func:`offsets_by_decoding`).
        An unknown-word token spans the word it replaced.  Raises ValueError where :meth:`encode` does.
        """
        got = self._encode_offsets(prompt)
        if got is not None:
            return [(int(i), int(s), int(e)) for i, s, e in got]
        return offsets_by_decoding(prompt, self._encode(prompt), self._decode_one)

    def to_tokens(self, prompts: Sequence[str]) -> torch.Tensor:
        """Tokenise prompts into a LongTensor ``[batch, seq]`` on :attr:`device`.

        All prompts must tokenise to the same length (no padding is ever added,
        so position ``-1`` is the last real token of every prompt); otherwise
        ValueError names the first prompt whose length differs.
        """
        if isinstance(prompts, str):
            raise TypeError("to_tokens expects a list of prompts, not a single string")
        if len(prompts) == 0:
            raise ValueError("to_tokens needs at least one prompt")
        ids = [self._encode(p) for p in prompts]
        n = len(ids[0])
        if n == 0:
            raise ValueError(f"prompt {prompts[0]!r} tokenises to zero tokens")
        for prompt, row in zip(prompts, ids):
            if len(row) != n:
                raise ValueError(
                    f"all prompts must tokenise to the same length: {prompts[0]!r} has {n} tokens "
                    f"but {prompt!r} has {len(row)}"
                )
        return torch.tensor(ids, dtype=torch.long, device=self.device)

    def to_str_tokens(self, tokens: torch.Tensor | Sequence[int] | str) -> list:
        """Token strings: a string or 1-D ids -> ``list[str]``; 2-D ids -> ``list[list[str]]``."""
        if isinstance(tokens, str):
            tokens = self._encode(tokens)
        if isinstance(tokens, torch.Tensor):
            if tokens.dim() == 2:
                return [self.to_str_tokens(row) for row in tokens]
            tokens = tokens.tolist()
        return [self._decode_one(int(t)) for t in tokens]
