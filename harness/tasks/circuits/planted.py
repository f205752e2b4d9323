"""Embedded planted-circuit models: small GPTs whose task circuit is known by construction, then verified.

One model per task, each a 3-layer, 4-head, width-64 GPT with MLPs (width 256)
(:class:`harness.models.gpt.GPT`) and a word-level tokenizer
(:class:`harness.models.tokenizer.WordTokenizer`) covering the task's words.
Prompts for these models are written in the ``"words"`` style of
:mod:`harness.tasks.circuits.prompts`: punctuation is its own word ("store , John")
and a year XXYY is written as two words "XX YY" ("the year 17 05 to the year
17"), mirroring GPT-2's BPE split of " 1705" into " 17" + "05".  The century
words "11".."17" are the same tokens as the two-digit years "11".."17".

Designated circuits (``layer.head``; see :data:`PLANTED` for the roles)::

  planted-ioi           0.1 duplicate token (at S2, attends to S1) -> 1.2 S-inhibition (at the end,
                        attends to S2) -> 2.0 name mover (at the end, attends to IO and copies it)
  planted-greater-than  0.3 YY mover (at the end, attends to YY) -> 1.0 -> 2.1 relays of YY's
                        representation at the end; the MLPs turn YY into probability on YY' > YY

Training recipe (trial 3 of ``notes/planted-circuits.md``, plus what the trials
here showed; every term of a step runs as rows of one batched forward pass):

- a *source* pass without gradients over independent task prompts ("other"),
  the corrupted versions of the step's prompts (IOI: ABC; greater-than: YY =
  01), for IOI the same prompts with the IO repeated instead of S (so the
  answer is S), and the distractor batch; it provides the ``z`` to patch in;
- one training pass whose rows are
  1. ``task``: the task prompts, cross-entropy on the answer (IOI: the IO
     token; greater-than: a uniform target over the years YY' > YY);
  2. ``strict``: the same prompts with **every** non-circuit head replaced
     (p = 1) by its ``z`` from another prompt, from the corrupted prompt, or
     the batch mean (a third of the rows each): same cross-entropy, and
     ``match``: the squared difference of the task metric between these rows
     and the clean rows (the output must stay the same, not just right: a
     trial without it left non-circuit heads changing the logit difference
     by up to 180%);
  3. ``interchange``, one block per circuit head: that head alone patched
     from a source prompt, the target being what the designated circuit
     implies.  IOI: 0.1 (from S2 on) and 1.2 (at the end) patched from the
     prompt with the IO repeated -> the answer flips to S; 2.0 (at the end)
     patched from another prompt -> that prompt's IO.  Greater-than: each
     head (all positions) patched from another prompt -> the years above
     that prompt's YY;
  4. ``attention`` (IOI only): attention hints for the circuit heads
     (0.1: S2 -> S1, 1.2: end -> S2, 2.0: end -> IO), a cross-entropy on their
     attention pattern.  Without them the interchange terms were satisfied by
     shortcuts or not at all within 2,500 steps; with them training
     converges in about 600 steps;
  5. ``distractor``: random sequences of ``seq/2`` distinct tokens repeated
     once, next-token loss on the repeat; ``mirror``: the same with every
     circuit head mean-ablated, so that non-circuit heads must do the
     distractor; ``distractor_attention``: hints that make non-circuit head
     0.0 a previous-token head and 1.1 attend to the earlier copy;
- AdamW (lr 3e-3, weight decay 0.01 on matrices), 50 warm-up steps then
  cosine decay, gradient-norm clipping at 1.0; fixed seeds
  (``torch.manual_seed`` for the weights, one numpy generator for all data),
  ``torch.set_num_threads`` fixed during the build (one thread).

Verification (stored in the model card, checked again at load time): on 512
fresh prompts, task accuracy (IOI: argmax over the vocabulary is IO;
greater-than: P(YY' > YY) > P(YY' <= YY)) and mean metric; per head, the
relative drop of the mean task metric under single-head *resample* ablation
(``z`` from 512 other fresh prompts), also under corrupted-prompt patching and
mean ablation (reported); the faithfulness of the designated circuit; per
head, the increase in the distractor's loss when it is mean-ablated; and
where each circuit head attends.  A model is accepted when accuracy >= 0.95
with a positive mean metric, every circuit head's resample drop >= 0.3, every
non-circuit head's |drop| <= 0.05, and some non-circuit head raises the
distractor loss by >= 0.5 nats (the distractor keeps non-circuit heads busy).
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from harness.errors import HarnessError
from harness.models.gpt import GPT, GPT_JSON, GPTConfig, HookedGPT, is_gpt_dir, load_gpt, save_gpt
from harness.models.tokenizer import WordTokenizer
from harness.core.seeding import torch_threads
from harness.tasks.circuits import prompts as P

Head = tuple[int, int]

#: Committed models: ``harness/tasks/circuits/models/<name>/`` (gpt.json + model.safetensors).
COMMITTED_DIR = Path(__file__).parent / "models"
CARD_FORMAT = 1

#: Prompts of the quick re-verification done when a planted model is loaded.
QUICK_VERIFY_PROMPTS = 128

#: Acceptance thresholds (in code, not in the card, so a card cannot lower them).
THRESHOLDS = {
    "accuracy": 0.95,
    "circuit_min_drop": 0.3,
    "noncircuit_max_abs_drop": 0.05,
    "distractor_min_effect": 0.5,
}


# ------------------------------------------------------------------------ recipe
@dataclass(frozen=True)
class Recipe:
    """Sizes and training hyper-parameters of one planted model (all recorded in the card)."""

    n_layers: int = 3
    n_heads: int = 4
    d_model: int = 64
    d_mlp: int = 256
    n_ctx: int = 16
    steps: int = 800
    batch: int = 32  # task prompts per block (clean, strict, each interchange)
    distractor_batch: int = 16  # distractor sequences per block (clean, mirror)
    lr: float = 3e-3
    min_lr: float = 3e-5
    warmup: int = 50
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    weights: tuple[tuple[str, float], ...] = (
        ("task", 1.0), ("strict", 1.0), ("match", 0.1), ("interchange", 1.0), ("attention", 1.0),
        ("distractor", 1.0), ("mirror", 1.0), ("distractor_attention", 1.0),
    )
    init_seed: int = 1234
    data_seed: int = 5678
    # One thread: bitwise reproducible, and on this shared 2-core machine two threads were
    # 3.5x slower whenever other processes ran (OpenMP threads wait on each other).
    threads: int = 1
    verify_prompts: int = 512
    verify_seed: int = 987_654
    log_every: int = 100

    def to_dict(self) -> dict:
        d = asdict(self)
        d["betas"] = list(self.betas)
        d["weights"] = {k: v for k, v in self.weights}
        return d


@dataclass(frozen=True)
class PlantedSpec:
    name: str
    task: str  # "ioi" or "greater_than"
    circuit: tuple[Head, ...]
    roles: dict[str, str]
    description: str
    recipe: Recipe = field(default_factory=Recipe)
    #: Positions at which each circuit head is patched in its interchange term (absent: every position).
    patch_positions: dict[str, tuple[int, ...]] = field(default_factory=dict)
    #: Attention hint per circuit head: (query position, key position or a name the sampler resolves).
    attention_targets: dict[str, tuple[int, Any]] = field(default_factory=dict)
    #: Non-circuit heads given distractor jobs by attention hints: a previous-token head, and a head
    #: that attends, inside the repeat, to the token after the earlier occurrence of the current one.
    distractor_heads: dict[str, Head] = field(default_factory=lambda: {"previous_token": (0, 0), "induction": (1, 1)})


PLANTED: dict[str, PlantedSpec] = {
    "planted-ioi": PlantedSpec(
        name="planted-ioi",
        task="ioi",
        circuit=((0, 1), (1, 2), (2, 0)),
        roles={
            "0.1": "duplicate-token head: at S2 attends to S1 (the earlier occurrence of the repeated name) "
                   "and writes which name is repeated",
            "1.2": "S-inhibition head: at the last position attends to S2 and moves 0.1's signal there",
            "2.0": "name mover: at the last position attends to the name that is not inhibited (IO) and "
                   "copies it to the output",
        },
        description="IOI planted circuit 0.1 (duplicate token) -> 1.2 (S-inhibition) -> 2.0 (name mover)",
        recipe=Recipe(steps=800),
        # 0.1 is patched from S2 on (positions 9-13), 1.2 and 2.0 at the last position (13): patching
        # earlier positions too would let the model detect the patch (there the source's z encodes
        # other names) instead of using the signal; a trial did exactly that.
        patch_positions={"0.1": (9, 10, 11, 12, 13), "1.2": (13,), "2.0": (13,)},
        attention_targets={"0.1": (9, "s1"), "1.2": (13, "s2"), "2.0": (13, "io")},
    ),
    "planted-greater-than": PlantedSpec(
        name="planted-greater-than",
        task="greater_than",
        circuit=((0, 3), (1, 0), (2, 1)),
        roles={
            "0.3": "YY mover: from the last position attends to the two-digit year YY (attention ~1.0) "
                   "and writes it there",
            "1.0": "YY relay: at the last position reads the YY representation 0.3 wrote (diffuse attention, "
                   "largest on the last position itself) and passes it on",
            "2.1": "YY relay: at the last position passes YY's representation on (diffuse attention); the MLPs "
                   "then put probability on the years above YY",
        },
        description="greater-than planted circuit 0.3 -> 1.0 -> 2.1 (YY moved to the last position, then "
                    "relayed; each head necessary) + MLPs",
        # No attention hints here: hinting a relay through the ' to' and ' year' positions made
        # training stall (three small OV maps in series); the interchange terms alone give each
        # head its job and verification checks it.  Attention measured after training is in the card.
        recipe=Recipe(steps=1000, weights=(
            ("task", 1.0), ("strict", 1.0), ("match", 1.0), ("interchange", 1.0), ("attention", 0.0),
            ("distractor", 1.0), ("mirror", 1.0), ("distractor_attention", 1.0),
        )),
    ),
}


def _head_name(h: Head) -> str:
    return f"{h[0]}.{h[1]}"


# --------------------------------------------------------------------- vocabularies
def _template_words(templates: Iterable[Sequence[str]]) -> list[str]:
    out: list[str] = []
    for template in templates:
        for seg in template:
            w = seg.strip()
            if not seg.startswith("{") and w not in out:
                out.append(w)
    return out


def make_tokenizer(task: str) -> WordTokenizer:
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
def _fill_positions(template: Sequence[str]) -> dict[str, list[int]]:
    pos: dict[str, list[int]] = {}
    for i, seg in enumerate(template):
        if seg.startswith("{"):
            pos.setdefault(seg[1:-1], []).append(i)
    return pos


class IOISampler:
    """Vectorised IOI prompts as token ids (the templates of :mod:`harness.tasks.circuits.prompts`, words style)."""

    def __init__(self, tok: WordTokenizer):
        self.tok = tok
        self.names = np.array([tok.token_to_id(w) for w in P.IOI_NAMES])
        self.places = np.array([tok.token_to_id(w) for w in P.IOI_PLACES])
        self.objects = np.array([tok.token_to_id(w) for w in P.IOI_OBJECTS])
        positions = [_fill_positions(t) for t in P.IOI_TEMPLATES]
        if any(p != positions[0] for p in positions):
            raise AssertionError("IOI templates must have their slots at the same positions")
        self.pos = {k: v[0] for k, v in positions[0].items()}
        self.templates = np.array(
            [[-1 if s.startswith("{") else tok.token_to_id(s.strip()) for s in t] for t in P.IOI_TEMPLATES]
        )
        self.seq = self.templates.shape[1]

    def sample(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
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
        return torch.from_numpy(self.names[d[which]]).long()


class GreaterThanSampler:
    """Vectorised greater-than prompts as token ids (words style: "... year 17 05 to the year 17")."""

    def __init__(self, tok: WordTokenizer):
        self.tok = tok
        self.nouns = np.array([tok.token_to_id(w) for w in P.GT_NOUNS])
        self.year_ids = np.array([tok.token_to_id(P.yy(v)) for v in range(100)])
        self.pos = _fill_positions(P.GT_TEMPLATE)
        self.template = np.array([-1 if s.startswith("{") else tok.token_to_id(s.strip()) for s in P.GT_TEMPLATE])
        self.seq = len(self.template)
        self.vocab_size = len(tok)

    def sample(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        return {
            "noun": rng.integers(len(self.nouns), size=n),
            "xx": rng.integers(P.GT_CENTURIES[0], P.GT_CENTURIES[-1] + 1, size=n),
            "yy": rng.integers(P.GT_YEARS[0], P.GT_YEARS[-1] + 1, size=n),
        }

    def tokens(self, d: dict[str, np.ndarray], corrupt: bool = False) -> torch.Tensor:
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
    target = tokens[:, 1:]
    m = mask[:, :-1].to(pred.dtype)
    loss = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1), reduction="none").view(target.shape)
    per_row = (loss * m).sum(1) / m.sum(1).clamp_min(1)
    return per_row.mean() if reduce else per_row


# --------------------------------------------------------------------- training
def _record_z(model: GPT, tokens: torch.Tensor) -> torch.Tensor:
    """``z`` ``[b, s, L, H, d_head]`` of a run (no gradients)."""
    zs: list[torch.Tensor] = []

    def rec(layer: int, z: torch.Tensor) -> torch.Tensor:
        zs.append(z)
        return z

    with torch.no_grad():
        model(tokens, rec)
    return torch.stack(zs, dim=2)


def _attention_nll(model: GPT, x_ln: torch.Tensor, layer: int, head: int, query: int, keys: torch.Tensor) -> torch.Tensor:
    """Mean NLL of head ``layer.head`` attending, from position ``query``, to position ``keys[i]`` in row i.

    ``x_ln`` is the layer's attention input (after ``ln1``), ``[b, s, d_model]``.
    """
    attn = model.blocks[layer].attn
    d, dh = model.config.d_model, model.config.d_head
    w, b = attn.qkv.weight, attn.qkv.bias
    qs, ks = slice(head * dh, (head + 1) * dh), slice(d + head * dh, d + (head + 1) * dh)
    q = x_ln[:, query] @ w[qs].T + b[qs]  # [b, dh]
    k = x_ln[:, : query + 1] @ w[ks].T + b[ks]  # [b, query + 1, dh]
    scores = torch.einsum("bkd,bd->bk", k, q) / math.sqrt(dh)
    return -torch.log_softmax(scores, dim=-1).gather(1, keys[:, None].long())[:, 0].mean()


def _attention_logprobs(model: GPT, x_ln: torch.Tensor, layer: int, head: int) -> torch.Tensor:
    """Causal attention log-probabilities ``[b, query, key]`` of head ``layer.head`` from its input ``x_ln``."""
    attn = model.blocks[layer].attn
    d, dh = model.config.d_model, model.config.d_head
    w, b = attn.qkv.weight, attn.qkv.bias
    qs, ks = slice(head * dh, (head + 1) * dh), slice(d + head * dh, d + (head + 1) * dh)
    q, k = x_ln @ w[qs].T + b[qs], x_ln @ w[ks].T + b[ks]
    scores = q @ k.transpose(1, 2) / math.sqrt(dh)
    s = x_ln.shape[1]
    causal = torch.ones(s, s, dtype=torch.bool).tril()
    return torch.log_softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)


def _distractor_attention_nll(model: GPT, captured: dict[int, torch.Tensor], rows: slice, tokens: torch.Tensor,
                              mask: torch.Tensor, heads: dict[str, Head]) -> torch.Tensor:
    """Hints for the distractor's designated heads: a previous-token head (each position attends to the one
    before) and an induction head (inside the repeat, each position attends to the token after the earlier
    occurrence of its own token)."""
    b, s = tokens.shape
    pos = torch.arange(s)
    total = torch.zeros(())
    if "previous_token" in heads:
        layer, head = heads["previous_token"]
        lp = _attention_logprobs(model, captured[layer][rows], layer, head)  # [b, s, s]
        total = total - lp[:, pos[1:], pos[:-1]].mean()
    if "induction" in heads:
        layer, head = heads["induction"]
        lp = _attention_logprobs(model, captured[layer][rows], layer, head)
        # earlier occurrence of the token at p: the first q < p with tokens[q] == tokens[p]
        same = (tokens[:, :, None] == tokens[:, None, :]) & (pos[None, :, None] > pos[None, None, :])
        earlier = torch.where(same, pos[None, None, :], s).min(dim=-1).values  # [b, s]
        key = (earlier + 1).clamp(max=s - 1)
        m = mask & (earlier < s)
        picked = lp.gather(2, key[:, :, None])[:, :, 0]
        total = total - torch.where(m, picked, torch.zeros_like(picked)).sum() / m.sum().clamp_min(1)
    return total


def _key_positions(sampler, d: dict[str, np.ndarray], key) -> torch.Tensor:
    """Target key positions: a fixed position, or one named by the sampler for each prompt."""
    n = len(next(iter(d.values())))
    if isinstance(key, int):
        return torch.full((n,), key, dtype=torch.long)
    return torch.from_numpy(sampler.position(d, key)).long()


def _lr_at(step: int, r: Recipe) -> float:
    if step < r.warmup:
        return r.lr * (step + 1) / r.warmup
    progress = (step - r.warmup) / max(1, r.steps - r.warmup)
    return r.min_lr + 0.5 * (r.lr - r.min_lr) * (1 + math.cos(math.pi * progress))


class _Rows:
    """Rows of one batched training pass: tokens, head masks and replacement z, plus their slices."""

    def __init__(self, L: int, H: int):
        self.tokens: list[torch.Tensor] = []
        self.masks: list[torch.Tensor] = []
        self.reps: list[torch.Tensor] = []
        self.slices: dict[str, slice] = {}
        self.n = 0
        self.L, self.H = L, H

    def add(self, name: str, tokens: torch.Tensor, mask: torch.Tensor | None = None, rep: torch.Tensor | None = None,
            positions: Sequence[int] | None = None):
        """Rows ``tokens`` whose heads in ``mask`` [L, H] get ``z`` = ``rep`` at ``positions`` (default: all)."""
        b, s = tokens.shape
        m = torch.zeros(b, s, self.L, self.H, dtype=torch.bool)
        if mask is not None:
            pos = torch.zeros(s, dtype=torch.bool)
            pos[list(range(s)) if positions is None else list(positions)] = True
            m = m | (pos[:, None, None] & mask[None])[None]
        self.tokens.append(tokens)
        self.masks.append(m)
        self.reps.append(rep)
        self.slices[name] = slice(self.n, self.n + b)
        self.n += b

    def build(self, z_shape_tail: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        tokens = torch.cat(self.tokens)
        masks = torch.cat(self.masks)
        s = tokens.shape[1]
        reps = [
            torch.zeros(t.shape[0], s, *z_shape_tail) if r is None else r.expand(t.shape[0], s, *z_shape_tail)
            for t, r in zip(self.tokens, self.reps)
        ]
        return tokens, masks, torch.cat(reps)


def _circuit_mask(spec: PlantedSpec, r: Recipe) -> torch.Tensor:
    m = torch.zeros(r.n_layers, r.n_heads, dtype=torch.bool)
    for layer, head in spec.circuit:
        m[layer, head] = True
    return m


def _single(layer: int, head: int, r: Recipe) -> torch.Tensor:
    m = torch.zeros(r.n_layers, r.n_heads, dtype=torch.bool)
    m[layer, head] = True
    return m


def train(spec: PlantedSpec, recipe: Recipe | None = None, log: Callable[[str], None] | None = print) -> tuple[HookedGPT, dict]:
    """Train the planted model of ``spec`` (deterministic); returns the model and a training summary."""
    r = recipe or spec.recipe
    tok = make_tokenizer(spec.task)
    V = len(tok)
    sampler = IOISampler(tok) if spec.task == "ioi" else GreaterThanSampler(tok)
    seq = sampler.seq
    config = GPTConfig(r.n_layers, r.n_heads, r.d_model, r.d_mlp, V, r.n_ctx)
    circuit = _circuit_mask(spec, r)
    noncircuit = ~circuit
    weights = dict(r.weights)
    tail = (r.n_layers, r.n_heads, config.d_head)

    with torch_threads(r.threads):
        torch.manual_seed(r.init_seed)
        model = GPT(config)
        model.train()
        rng = np.random.default_rng(r.data_seed)
        decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
        no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": r.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=r.lr, betas=r.betas,
        )
        captured: dict[int, torch.Tensor] = {}
        hooks = [
            block.ln1.register_forward_hook(lambda mod, inp, out, layer=layer: captured.__setitem__(layer, out))
            for layer, block in enumerate(model.blocks)
        ]
        start, cpu_start = time.perf_counter(), time.process_time()
        history: list[dict[str, float]] = []
        B, Bd = r.batch, r.distractor_batch
        for step in range(r.steps):
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, r)
            # ---- data
            base = sampler.sample(rng, B)
            other = sampler.sample(rng, B)
            dist, dist_mask = induction_batch(rng, Bd, seq, V)
            if spec.task == "ioi":
                base_tok = sampler.tokens(base)
                src_tokens = [sampler.tokens(other), sampler.tokens(base, abc=True), sampler.tokens(base, s2="io"), dist]
                y_base = sampler.answer(base, "io")
            else:
                base_tok = sampler.tokens(base)
                src_tokens = [sampler.tokens(other), sampler.tokens(base, corrupt=True), dist]
                y_base = sampler.target(base["yy"])
            # ---- source pass (no gradients)
            z_src = _record_z(model, torch.cat(src_tokens)).split([t.shape[0] for t in src_tokens])
            z_other, z_corrupt, z_dist = z_src[0], z_src[1], z_src[-1]
            strict_rep = z_other.clone()  # rows 0::3 from another prompt, 1::3 from the corrupted one, 2::3 the mean
            strict_rep[1::3] = z_corrupt[1::3]
            strict_rep[2::3] = z_other.mean(0, keepdim=True)
            # ---- the batched training pass
            rows = _Rows(r.n_layers, r.n_heads)
            rows.add("task", base_tok)
            rows.add("strict", base_tok, noncircuit, strict_rep)
            targets = [y_base, y_base]
            for head in spec.circuit:
                name = "ic" + _head_name(head)
                positions = spec.patch_positions.get(_head_name(head))
                if spec.task == "ioi" and head != spec.circuit[-1]:  # IO repeated instead of S -> S
                    rows.add(name, base_tok, _single(*head, r), z_src[2], positions)
                    targets.append(sampler.answer(base, "s"))
                elif spec.task == "ioi":  # another prompt -> its IO
                    rows.add(name, base_tok, _single(*head, r), z_other, positions)
                    targets.append(sampler.answer(other, "io"))
                else:  # another prompt -> the years above its YY
                    rows.add(name, base_tok, _single(*head, r), z_other, positions)
                    targets.append(sampler.target(other["yy"]))
            n_task_rows = rows.n
            rows.add("distractor", dist)
            rows.add("mirror", dist, circuit, z_dist.mean(0, keepdim=True))
            tokens, masks, reps = rows.build(tail)

            def z_fn(layer: int, z: torch.Tensor) -> torch.Tensor:
                return torch.where(masks[:, :, layer, :, None], reps[:, :, layer], z)

            if spec.task == "ioi":
                io_id, s_id = sampler.answer(base, "io"), sampler.answer(base, "s")

                def task_metric(lg: torch.Tensor) -> torch.Tensor:  # logit(IO) - logit(S)
                    return lg.gather(1, io_id[:, None])[:, 0] - lg.gather(1, s_id[:, None])[:, 0]
            else:
                above = y_base > 0

                def task_metric(lg: torch.Tensor) -> torch.Tensor:  # P(YY' > YY) - P(YY' <= YY)
                    p = torch.softmax(lg, dim=-1)
                    years = p[:, sampler.year_ids]
                    return 2 * (p * above).sum(-1) - years.sum(-1)

            captured.clear()
            logits = model(tokens, z_fn)
            last = logits[:n_task_rows, -1]
            target = torch.cat(targets)
            ce = F.cross_entropy(last, target, reduction="none")
            sl = rows.slices
            parts = {
                "task": ce[sl["task"]].mean(),
                "strict": ce[sl["strict"]].mean(),
                # the output must not just stay right but stay the same: match the strict run's logits to the clean run's
                "match": (task_metric(last[sl["strict"]]) - task_metric(last[sl["task"]])).pow(2).mean(),
                **{"ic" + _head_name(h): ce[sl["ic" + _head_name(h)]].mean() for h in spec.circuit},
                "distractor": induction_loss(logits[sl["distractor"]], dist, dist_mask),
                "mirror": induction_loss(logits[sl["mirror"]], dist, dist_mask),
            }
            if weights.get("attention", 0.0):
                parts["attention"] = sum(
                    _attention_nll(model, captured[layer][sl["task"]], layer, head, q, _key_positions(sampler, base, k))
                    for (layer, head), (q, k) in ((h, spec.attention_targets[_head_name(h)]) for h in spec.circuit)
                )
            if weights.get("distractor_attention", 0.0) and spec.distractor_heads:
                parts["distractor_attention"] = _distractor_attention_nll(
                    model, captured, sl["distractor"], dist, dist_mask, spec.distractor_heads
                )
            loss = sum(weights["interchange" if k.startswith("ic") else k] * v for k, v in parts.items())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), r.grad_clip)
            opt.step()
            if (step + 1) % r.log_every == 0 or step == r.steps - 1:
                entry = {"step": step + 1, "seconds": round(time.perf_counter() - start, 2),
                         "cpu_seconds": round(time.process_time() - cpu_start, 2),
                         "loss": round(float(loss.detach()), 5), **{k: round(float(v.detach()), 5) for k, v in parts.items()}}
                if spec.task == "greater_than":  # the soft-target CE has a floor: report the excess over it
                    entropy = -(target * torch.where(target > 0, target.log(), torch.zeros_like(target))).sum(-1)
                    entry["task_ce_floor"] = round(float(entropy[sl["task"]].mean()), 5)
                history.append(entry)
                if log:
                    log(f"[{spec.name}] step {entry['step']:5d}  {entry['seconds']:7.1f}s (cpu {entry['cpu_seconds']:.1f}s)  " +
                        "  ".join(f"{k} {entry[k]:.4f}" for k in ("loss", *parts)))
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        for hook in hooks:
            hook.remove()
    model.eval()
    hooked = HookedGPT(model, tok, model_id=spec.name)
    return hooked, {"seconds": round(seconds, 1), "cpu_seconds": round(cpu_seconds, 1), "history": history}


# ------------------------------------------------------------------ verification
def _split(model: HookedGPT, task: str, n: int, seed: int):
    from harness.tasks.circuits import data as D

    return D.ioi_split(model, n, seed) if task == "ioi" else D.greater_than_split(model, n, seed)


def _accuracy(task: str, split, logits_last: torch.Tensor) -> tuple[float, float]:
    per = split.metric.per_prompt_fn(
        logits_last if split.metric.token_ids is None else logits_last[:, split.metric.token_ids]
    )
    positive = float((per > 0).float().mean())
    if task == "ioi":
        acc = float((logits_last.argmax(-1) == split.info["io_ids"]).float().mean())
    else:
        acc = positive
    return acc, positive


@torch.no_grad()
def verify(model: HookedGPT, spec: PlantedSpec, recipe: Recipe | None = None, n_prompts: int | None = None) -> dict[str, Any]:
    """Verification numbers (see the module docstring) and the pass / fail of each check.

    ``n_prompts`` (default: the recipe's 512) may be lowered for a quick re-check.
    """
    r = recipe or spec.recipe
    with torch_threads(r.threads):
        L, H = model.n_layers, model.n_heads
        n = int(n_prompts or r.verify_prompts)
        split = _split(model, spec.task, n, r.verify_seed)
        source = _split(model, spec.task, n, r.verify_seed + 1)
        clean_logits = model.logits(split.clean)  # one clean run for the accuracy and the clean metric
        acc, positive = _accuracy(spec.task, split, clean_logits[:, -1])
        metric = split.metric
        ids = metric.token_ids
        singles = torch.zeros(L * H, L, H, dtype=torch.bool)
        for i in range(L * H):
            singles[i, i // H, i % H] = True

        clean_metric = float(metric.from_logits(clean_logits))

        def drops(replacement) -> list[list[float]]:
            out = model.ablate_many(split.clean, singles, replacement, token_ids=ids)
            m = metric.per_prompt_fn(out).mean(-1)  # [L*H]
            return (1 - m / clean_metric).view(L, H).tolist()

        _, z_source = model.run_with_cache(source.clean)
        _, z_corrupt = model.run_with_cache(split.corrupted)
        mean_corrupt = model.mean_z(split.corrupted)
        resample = drops(z_source)
        corrupted_patch = drops(z_corrupt)
        mean_abl = drops(mean_corrupt)

        # faithfulness of the designated circuit (task evaluation: others mean-ablated over corrupted prompts)
        circuit = _circuit_mask(spec, r)
        masks = torch.stack([~circuit, torch.ones_like(circuit), torch.zeros_like(circuit)])
        out = model.ablate_many(split.clean, masks, mean_corrupt, token_ids=ids)
        m_c, m_e, m_f = (float(x) for x in metric.per_prompt_fn(out).mean(-1))
        faith = (m_c - m_e) / (m_f - m_e) if m_f != m_e else float("nan")

        # distractor: induction-loss increase when each head is mean-ablated
        rng = np.random.default_rng(r.verify_seed + 2)
        seq = split.clean.shape[1]
        dist, dist_mask = induction_batch(rng, 256, seq, len(model.tokenizer))
        base_loss = float(induction_loss(model.logits(dist), dist, dist_mask))
        mean_d = model.mean_z(dist)
        effect = []
        for i in range(L * H):
            lg = model.run_with_heads_replaced(dist, singles[i], mean_d)
            effect.append(float(induction_loss(lg, dist, dist_mask)) - base_loss)
    effect_grid = torch.tensor(effect).view(L, H).tolist()
    attention = attention_summary(model, split.clean, spec)

    in_circuit = {tuple(h) for h in spec.circuit}

    def rounded(grid):
        return [[round(float(v), 6) for v in row] for row in grid]

    result = {
        "n_prompts": n,
        "seed": r.verify_seed,
        "accuracy": round(acc, 6),
        "positive_metric_fraction": round(positive, 6),
        "mean_metric": round(clean_metric, 6),
        "resample_drop": rounded(resample),
        "corrupted_patch_drop": rounded(corrupted_patch),
        "mean_ablation_drop": rounded(mean_abl),
        "circuit_faithfulness": round(faith, 6),
        "circuit_metrics": {"m_circuit": round(m_c, 6), "m_empty": round(m_e, 6), "m_full": round(m_f, 6)},
        "distractor_base_loss": round(base_loss, 6),
        "distractor_effect": rounded(effect_grid),
        "circuit_heads": [list(h) for h in spec.circuit],
        "attention": attention,
    }
    result["checks"] = evaluate_checks(result, in_circuit, L, H)
    result["passed"] = all(c["passed"] for c in result["checks"].values())
    return result


@torch.no_grad()
def attention_summary(model: HookedGPT, tokens: torch.Tensor, spec: PlantedSpec) -> dict[str, Any]:
    """Where each circuit head looks: its mean attention from the last position (and from S2 for IOI)."""
    captured: dict[int, torch.Tensor] = {}
    hooks = [
        block.ln1.register_forward_hook(lambda mod, inp, out, layer=layer: captured.__setitem__(layer, out))
        for layer, block in enumerate(model.model.blocks)
    ]
    try:
        model.model(tokens)
    finally:
        for hook in hooks:
            hook.remove()
    out: dict[str, Any] = {}
    for layer, head in spec.circuit:
        probs = _attention_logprobs(model.model, captured[layer], layer, head).exp()  # [b, q, k]
        entry: dict[str, Any] = {"from_last": [round(float(p), 3) for p in probs[:, -1].mean(0)]}
        hint = spec.attention_targets.get(_head_name((layer, head)))
        if hint is not None:
            query, key = hint
            keys = _hint_keys_from_tokens(spec, tokens, key)
            entry["hint"] = [query, key]
            entry["hint_attention"] = round(float(probs[:, query].gather(1, keys[:, None]).mean()), 3)
        out[_head_name((layer, head))] = entry
    return out


def _hint_keys_from_tokens(spec: PlantedSpec, tokens: torch.Tensor, key) -> torch.Tensor:
    """Per-prompt key positions of an attention hint, read off IOI prompts (S1 is where S2's name occurs)."""
    if isinstance(key, int):
        return torch.full((tokens.shape[0],), key, dtype=torch.long)
    pos = _fill_positions(P.IOI_TEMPLATES[0])
    a, b, s2 = pos["A"][0], pos["B"][0], pos["S2"][0]
    s1 = torch.where(tokens[:, a] == tokens[:, s2], a, b)
    return {"s1": s1, "io": a + b - s1, "s2": torch.full_like(s1, s2)}[key]


def evaluate_checks(v: dict[str, Any], circuit: set[Head], L: int, H: int) -> dict[str, dict[str, Any]]:
    """Each acceptance check on verification numbers ``v``: ``{name: {passed, value, threshold, detail}}``."""
    t = THRESHOLDS
    heads = [(layer, head) for layer in range(L) for head in range(H)]
    drop = v["resample_drop"]
    circ = [(h, drop[h[0]][h[1]]) for h in heads if h in circuit]
    non = [(h, drop[h[0]][h[1]]) for h in heads if h not in circuit]
    eff = [(h, v["distractor_effect"][h[0]][h[1]]) for h in heads if h not in circuit]
    worst_c = min(circ, key=lambda x: x[1]) if circ else ((-1, -1), float("nan"))
    worst_n = max(non, key=lambda x: abs(x[1])) if non else ((-1, -1), 0.0)
    best_e = max(eff, key=lambda x: x[1]) if eff else ((-1, -1), float("nan"))
    return {
        "accuracy": {
            "passed": bool(v["accuracy"] >= t["accuracy"] and v["mean_metric"] > 0),
            "value": v["accuracy"], "threshold": t["accuracy"],
            "detail": f"task accuracy {v['accuracy']:.3f} (>= {t['accuracy']}), mean metric {v['mean_metric']:.3f} (> 0)",
        },
        "circuit_heads_matter": {
            "passed": bool(circ and worst_c[1] >= t["circuit_min_drop"]),
            "value": worst_c[1], "threshold": t["circuit_min_drop"],
            "detail": f"smallest resample drop of a circuit head: {_head_name(worst_c[0])} {worst_c[1]:.3f} "
                      f"(>= {t['circuit_min_drop']})",
        },
        "noncircuit_heads_negligible": {
            "passed": bool(abs(worst_n[1]) <= t["noncircuit_max_abs_drop"]),
            "value": worst_n[1], "threshold": t["noncircuit_max_abs_drop"],
            "detail": f"largest |resample drop| of a non-circuit head: {_head_name(worst_n[0])} {worst_n[1]:.3f} "
                      f"(<= {t['noncircuit_max_abs_drop']})",
        },
        "distractor_uses_noncircuit_heads": {
            "passed": bool(eff and best_e[1] >= t["distractor_min_effect"]),
            "value": best_e[1], "threshold": t["distractor_min_effect"],
            "detail": f"largest induction-loss increase from a non-circuit head: {_head_name(best_e[0])} "
                      f"{best_e[1]:.3f} nats (>= {t['distractor_min_effect']})",
        },
    }


def check_card(card: dict[str, Any], where: str = "model") -> None:
    """Refuse (HarnessError naming the failed check) a card whose verification numbers fail a threshold."""
    v = card.get("verification") if isinstance(card, dict) else None
    if not isinstance(v, dict):
        raise HarnessError(f"{where}: its model card has no verification numbers; rebuild it (harness models build)")
    try:
        circuit = {tuple(int(x) for x in h) for h in card["circuit_heads"]}
        drop = v["resample_drop"]
        checks = evaluate_checks(v, circuit, len(drop), len(drop[0]))
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise HarnessError(f"{where}: its model card's verification numbers are incomplete ({type(e).__name__}: {e})") from None
    failed = [(name, c) for name, c in checks.items() if not c["passed"]]
    if failed:
        raise HarnessError(
            f"{where} failed verification and is refused: "
            + "; ".join(f"check {name!r} failed: {c['detail']}" for name, c in failed)
        )


# ------------------------------------------------------------------ build / load
def build_model(
    name: str, recipe: Recipe | None = None, log: Callable[[str], None] | None = print
) -> HookedGPT:
    """Train and verify one planted model; the card records recipe, training and verification."""
    spec = _spec(name)
    r = recipe or spec.recipe
    t0 = time.perf_counter()
    model, training = train(spec, r, log=log)
    verification = verify(model, spec, r)
    total = time.perf_counter() - t0
    card = {
        "card_format": CARD_FORMAT,
        "name": spec.name,
        "task": spec.task,
        "description": spec.description,
        "circuit_heads": [list(h) for h in spec.circuit],
        "roles": dict(spec.roles),
        "interchange_patch_positions": {k: list(v) for k, v in spec.patch_positions.items()},
        "attention_hints": {k: [q, kk] for k, (q, kk) in spec.attention_targets.items()},
        "distractor_heads": {k: list(v) for k, v in spec.distractor_heads.items()},
        "prompt_style": "words",
        "prompt_note": "punctuation is its own word; a year XXYY is written 'XX YY' (century and two-digit tokens)",
        "recipe": r.to_dict(),
        "training": {**training, "build_seconds": round(total, 1), "torch_version": torch.__version__},
        "verification": verification,
    }
    model.card = card
    if log:
        log(f"[{name}] built in {total:.1f}s; verification " + ("passed" if verification["passed"] else "FAILED"))
        for c in verification["checks"].values():
            log(f"[{name}]   {'ok  ' if c['passed'] else 'FAIL'} {c['detail']}")
    return model


def _spec(name: str) -> PlantedSpec:
    if name not in PLANTED:
        raise HarnessError(f"unknown planted model {name!r}; known: {', '.join(PLANTED)}")
    return PLANTED[name]


def build_models(
    out_dir: str | Path | None = None,
    names: Sequence[str] | None = None,
    force: bool = False,
    log: Callable[[str], None] | None = print,
) -> list[Path]:
    """(Re)build planted models into ``out_dir/<name>/`` (default: the committed directory).

    Existing models are kept unless ``force``.  A model that fails verification
    is not written (HarnessError naming the failed check).
    """
    out = Path(out_dir) if out_dir is not None else COMMITTED_DIR
    paths = []
    for name in names or list(PLANTED):
        spec = _spec(name)
        target = out / name
        if is_gpt_dir(target) and not force:
            if log:
                log(f"[{name}] exists at {target}; pass force=True (--force) to rebuild")
            paths.append(target)
            continue
        model = build_model(name, log=log)
        check_card(model.card, where=f"freshly built {name}")
        save_gpt(model, target)
        paths.append(target)
    return paths


def load_planted(
    name: str, cache_dir: str | Path | None = None, device: torch.device | str = "cpu", reverify: bool = True,
    log: Callable[[str], None] | None = None,
) -> HookedGPT:
    """Load a planted model: the committed directory, else ``cache_dir/<name>``, else build into ``cache_dir``.

    The card's verification numbers are checked (a failed model is refused);
    with ``reverify`` a quick verification (:data:`QUICK_VERIFY_PROMPTS` prompts)
    is also recomputed on the loaded weights and checked (well under a second).
    """
    spec = _spec(name)
    candidates = [COMMITTED_DIR / name] + ([Path(cache_dir) / name] if cache_dir is not None else [])
    path = next((p for p in candidates if is_gpt_dir(p)), None)
    if path is None:
        if cache_dir is None:
            raise HarnessError(f"planted model {name!r} is not built; run `harness models build --name {name}`")
        path = build_models(cache_dir, [name], log=log)[0]
    model = load_gpt(path, device)
    card = model.card
    if card.get("name") != name or [list(h) for h in spec.circuit] != card.get("circuit_heads"):
        raise HarnessError(f"{path} does not hold the planted model {name!r} of this version (card mismatch); rebuild it")
    check_card(card, where=f"planted model {name!r} ({path})")
    if reverify:
        fresh = verify(model, spec, n_prompts=QUICK_VERIFY_PROMPTS)
        check_card({**card, "verification": fresh}, where=f"planted model {name!r} ({path}, re-verified)")
    return model


def compare_cards(a: dict, b: dict, atol: float = 1e-5, path: str = "") -> list[str]:
    """Differences between two cards' numbers (recursive); timings are ignored."""
    diffs: list[str] = []
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k in ("seconds", "cpu_seconds", "build_seconds"):
                continue
            if k not in a or k not in b:
                diffs.append(f"{path}{k}: only in one card")
            else:
                diffs += compare_cards(a[k], b[k], atol, f"{path}{k}.")
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            diffs.append(f"{path[:-1]}: lengths {len(a)} != {len(b)}")
        else:
            for i, (x, y) in enumerate(zip(a, b)):
                diffs += compare_cards(x, y, atol, f"{path}{i}.")
    elif isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        if not (math.isclose(a, b, abs_tol=atol) or (math.isnan(a) and math.isnan(b))):
            diffs.append(f"{path[:-1]}: {a} != {b}")
    elif a != b:
        diffs.append(f"{path[:-1]}: {a!r} != {b!r}")
    return diffs


def check_reproduction(
    names: Sequence[str] | None = None, atol: float = 1e-5, reference_dir: str | Path | None = None,
    log: Callable[[str], None] | None = print,
) -> dict[str, dict[str, Any]]:
    """Rebuild the planted models in a temporary directory and compare with the committed ones.

    Returns ``{name: {"identical": bool, "max_weight_diff": float, "card_diffs": [...]}}``;
    ``identical`` when every weight agrees within ``atol`` and the card's numbers too.
    """
    from safetensors.torch import load_file

    ref_root = Path(reference_dir) if reference_dir is not None else COMMITTED_DIR
    report: dict[str, dict[str, Any]] = {}
    tmp = Path(tempfile.mkdtemp(prefix="planted-repro-"))
    try:
        for name in names or list(PLANTED):
            ref = ref_root / name
            if not is_gpt_dir(ref):
                raise HarnessError(f"no committed model {name!r} at {ref} to compare with")
            new = build_models(tmp, [name], force=True, log=log)[0]
            a, b = load_file(str(ref / "model.safetensors")), load_file(str(new / "model.safetensors"))
            if set(a) != set(b):
                max_diff = float("inf")
            else:
                max_diff = max(float((a[k] - b[k]).abs().max()) for k in a)
            ca = json.loads((ref / GPT_JSON).read_text())
            cb = json.loads((new / GPT_JSON).read_text())
            diffs = compare_cards(ca, cb, atol)
            report[name] = {
                "identical": bool(max_diff <= atol and not diffs),
                "bitwise": bool(max_diff == 0.0),
                "max_weight_diff": max_diff,
                "card_diffs": diffs,
            }
            if log:
                log(f"[{name}] reproduction: max weight diff {max_diff:.3g}, {len(diffs)} card differences")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


__all__ = [
    "COMMITTED_DIR", "PLANTED", "PlantedSpec", "Recipe", "THRESHOLDS", "build_model", "build_models",
    "check_card", "check_reproduction", "load_planted", "make_tokenizer", "train", "verify",
]
