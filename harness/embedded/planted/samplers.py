"""Training data of the planted-circuit models: word vocabularies, vectorised task prompts, the distractor.

Prompts are those of :mod:`harness.data.prompts` in its ``"words"``
style, produced directly as token ids (``[n, seq]`` int64) from one numpy
generator, so a training step costs microseconds of sampling.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from harness.models.tokenizer import WordTokenizer
from harness.data import prompts as P


def _template_words(templates: Iterable[Sequence[str]]) -> list[str]:
    out: list[str] = []
    for template in templates:
        for seg in template:
            w = seg.strip()
            if not seg.startswith("{") and w not in out:
                out.append(w)
    return out


def make_tokenizer(task: str) -> WordTokenizer:
    """The word vocabulary of a planted model: the task's template words, then its names / years (in order)."""
    if task == "ioi":
        words = _template_words(P.IOI_TEMPLATES) + list(P.IOI_NAMES) + list(P.IOI_PLACES) + list(P.IOI_OBJECTS)
    elif task == "greater_than":
        words = _template_words([P.GT_TEMPLATE]) + list(P.GT_NOUNS) + [P.yy(v) for v in range(100)]
    else:
        raise ValueError(f"unknown task {task!r}")
    seen: list[str] = []
    for w in words:
        if w not in seen:
            seen.append(w)
    return WordTokenizer(seen)


# ------------------------------------------------------------------------ samplers
def fill_positions(template: Sequence[str]) -> dict[str, list[int]]:
    """Word positions of each ``{SLOT}`` of a prompt template."""
    pos: dict[str, list[int]] = {}
    for i, seg in enumerate(template):
        if seg.startswith("{"):
            pos.setdefault(seg[1:-1], []).append(i)
    return pos


class IOISampler:
    """Vectorised IOI prompts as token ids (the templates of :mod:`harness.data.prompts`, words style)."""

    def __init__(self, tok: WordTokenizer):
        self.tok = tok
        self.names = np.array([tok.token_to_id(w) for w in P.IOI_NAMES])
        self.places = np.array([tok.token_to_id(w) for w in P.IOI_PLACES])
        self.objects = np.array([tok.token_to_id(w) for w in P.IOI_OBJECTS])
        positions = [fill_positions(t) for t in P.IOI_TEMPLATES]
        if any(p != positions[0] for p in positions):
            raise AssertionError("IOI templates must have their slots at the same positions")
        self.pos = {k: v[0] for k, v in positions[0].items()}
        self.templates = np.array(
            [[-1 if s.startswith("{") else tok.token_to_id(s.strip()) for s in t] for t in P.IOI_TEMPLATES]
        )
        self.seq = self.templates.shape[1]

    def sample(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        """``n`` prompts as index arrays ``[n]``: template, order, IO / S / C names, place, object."""
        trio = rng.random((n, len(self.names))).argsort(axis=1)[:, :3]
        return {
            "t": rng.integers(len(self.templates), size=n),
            "order": rng.integers(2, size=n),  # 0 = ABBA, 1 = BABA
            "io": trio[:, 0], "s": trio[:, 1], "c": trio[:, 2],
            "place": rng.integers(len(self.places), size=n),
            "obj": rng.integers(len(self.objects), size=n),
        }

    def tokens(self, d: dict[str, np.ndarray], swap: bool = False, abc: bool = False, s2: str = "s") -> torch.Tensor:
        """Token ids; ``swap``: the first clause's names swapped (ABBA <-> BABA); ``abc``: S2 := C;
        ``s2="io"``: the IO is the repeated name instead of S (the answer becomes S)."""
        a = np.where(d["order"] == 0, d["io"], d["s"])
        b = np.where(d["order"] == 0, d["s"], d["io"])
        if swap:
            a, b = b, a
        out = self.templates[d["t"]].copy()
        out[:, self.pos["A"]] = self.names[a]
        out[:, self.pos["B"]] = self.names[b]
        out[:, self.pos["S2"]] = self.names[d["c"] if abc else d[s2]]
        out[:, self.pos["PLACE"]] = self.places[d["place"]]
        out[:, self.pos["OBJECT"]] = self.objects[d["obj"]]
        return torch.from_numpy(out).long()

    def position(self, d: dict[str, np.ndarray], which: str) -> np.ndarray:
        """Per-prompt position of "io" (IO in the first clause), "s1" (S in the first clause) or "s2"."""
        io_first = d["order"] == 0  # ABBA
        if which == "io":
            return np.where(io_first, self.pos["A"], self.pos["B"])
        if which == "s1":
            return np.where(io_first, self.pos["B"], self.pos["A"])
        if which == "s2":
            return np.full(len(io_first), self.pos["S2"])
        raise ValueError(which)

    def answer(self, d: dict[str, np.ndarray], which: str = "io") -> torch.Tensor:
        """Token ids ``[n]`` of the name ``which`` ("io", "s" or "c")."""
        return torch.from_numpy(self.names[d[which]]).long()


class GreaterThanSampler:
    """Vectorised greater-than prompts as token ids (words style: "... year 17 05 to the year 17")."""

    def __init__(self, tok: WordTokenizer):
        self.tok = tok
        self.nouns = np.array([tok.token_to_id(w) for w in P.GT_NOUNS])
        self.year_ids = np.array([tok.token_to_id(P.yy(v)) for v in range(100)])
        self.pos = fill_positions(P.GT_TEMPLATE)
        self.template = np.array([-1 if s.startswith("{") else tok.token_to_id(s.strip()) for s in P.GT_TEMPLATE])
        self.seq = len(self.template)
        self.vocab_size = len(tok)

    def sample(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        """``n`` prompts as arrays ``[n]``: noun index, century XX and two-digit year YY."""
        return {
            "noun": rng.integers(len(self.nouns), size=n),
            "xx": rng.integers(P.GT_CENTURIES[0], P.GT_CENTURIES[-1] + 1, size=n),
            "yy": rng.integers(P.GT_YEARS[0], P.GT_YEARS[-1] + 1, size=n),
        }

    def tokens(self, d: dict[str, np.ndarray], corrupt: bool = False) -> torch.Tensor:
        """Token ids ``[n, seq]``; ``corrupt``: YY replaced by the corrupted year (01)."""
        n = len(d["yy"])
        out = np.tile(self.template, (n, 1))
        out[:, self.pos["NOUN"][0]] = self.nouns[d["noun"]]
        for p in self.pos["XX"]:
            out[:, p] = self.year_ids[d["xx"]]
        out[:, self.pos["YY"][0]] = self.year_ids[np.full(n, P.GT_CORRUPT_YY) if corrupt else d["yy"]]
        return torch.from_numpy(out).long()

    def target(self, yy: np.ndarray) -> torch.Tensor:
        """Soft target ``[n, vocab]``: uniform over the year tokens YY' > YY."""
        n = len(yy)
        above = (np.arange(100)[None, :] > yy[:, None]).astype(np.float32)
        above /= above.sum(axis=1, keepdims=True)
        out = np.zeros((n, self.vocab_size), dtype=np.float32)
        out[:, self.year_ids] = above
        return torch.from_numpy(out)


def induction_batch(
    rng: np.random.Generator, n: int, seq: int, vocab_size: int, variable: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Repeated random sequences of length ``seq`` and the mask of their predictable positions.

    Each row: ``k`` random tokens, a run ``A`` of ``m`` random tokens, ``A`` again,
    then random tokens; all tokens of a row distinct except the repeat.  By
    default ``k = 0`` and ``m = seq // 2`` (a sequence repeated once, as in the
    notes' trials); with ``variable``, ``3 <= m <= seq // 2`` and
    ``0 <= k <= seq - 2m`` at random, so that only true induction solves it.
    Returns ``(tokens [n, seq], mask [n, seq])`` with ``mask[i, p]`` True where
    the prediction made at ``p`` (of token ``p + 1``) is scored: inside the
    second copy, whose next token is determined.
    """
    base = rng.random((n, vocab_size)).argsort(axis=1)[:, :seq]
    if variable:
        m = rng.integers(3, seq // 2 + 1, size=n)
        k = np.floor(rng.random(n) * (seq - 2 * m + 1)).astype(np.int64)
    else:
        m, k = np.full(n, seq // 2), np.zeros(n, dtype=np.int64)
    pos = np.arange(seq)[None, :]
    s2 = (k + m)[:, None]
    second = (pos >= s2) & (pos < s2 + m[:, None])
    idx = np.where(second, pos - m[:, None], pos)
    tokens = np.take_along_axis(base, idx, axis=1)
    mask = second & (pos < s2 + m[:, None] - 1)
    return torch.from_numpy(tokens).long(), torch.from_numpy(mask)


def induction_loss(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, reduce: bool = True) -> torch.Tensor:
    """Mean cross-entropy of the masked next-token predictions (per row when not ``reduce``)."""
    pred = logits[:, :-1]
    target = tokens[:, 1:].to(pred.device)  # batches are drawn on the CPU; the logits may be on a GPU
    m = mask[:, :-1].to(pred.device, pred.dtype)
    loss = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1), reduction="none").view(target.shape)
    per_row = (loss * m).sum(1) / m.sum(1).clamp_min(1)
    return per_row.mean() if reduce else per_row

