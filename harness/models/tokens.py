"""Tokenising half of the hooked-model interface: prompts <-> token ids.

Adapters implement three primitives (``_encode``, ``_decode_one``, ``token_id``);
the public methods here (:meth:`encode`, :meth:`to_tokens`, :meth:`to_str_tokens`)
are written once on top of them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import torch


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

    def encode(self, prompt: str) -> list[int]:
        """Token ids of one prompt as the model's tokenizer splits it (no special tokens, no padding)."""
        return list(self._encode(prompt))

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
