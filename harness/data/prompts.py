"""Prompt generators of the circuits family: IOI (Wang et al.) and greater-than (Hanna et al.).

A prompt is built as a list of *segments*, written the way GPT-2's BPE sees
them (leading spaces included); the variable ones (names, places, objects;
centuries, two-digit years) must each be one token of the model, the fixed
template words may be any number of tokens::

    IOI:  ["When", " Mary", " and", " John", " went", " to", " the", " store", ",",
           " John", " gave", " a", " drink", " to"]                      -> " Mary"
    GT:   ["The", " war", " lasted", " from", " the", " year", " 17", "05",
           " to", " the", " year", " 17"]                                 -> any "YY" > "05"

:func:`render` turns segments into text in one of two styles:

- ``"text"`` (Hugging Face BPE tokenizers): segments concatenated, so the text
  is ordinary English ("... went to the store, John gave ..."; "the year 1705");
- ``"words"`` (the harness's word-level tokenizer, one token per whitespace-
  separated word): segments stripped and joined by single spaces, so
  punctuation is its own word ("store , John") and a year is written as its
  century and its two-digit part ("the year 17 05"), mirroring how GPT-2's BPE
  splits " 1705" into " 17" + "05".

Everything here is pure Python, deterministic in ``seed``; what needs a model's
tokenizer (which rendering it reads, which candidates are single tokens, where
each segment's token is) is in :mod:`harness.data.alignment`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from harness.errors import HarnessError

# ----------------------------------------------------------------------------- IOI
#: Candidate names (from the IOI paper's name list; single GPT-2 tokens with a leading space).
IOI_NAMES: tuple[str, ...] = (
    "Mary", "John", "Tom", "James", "Dan", "Sarah", "Anna", "Paul", "Kate", "Mark", "Alice", "Peter",
    "Laura", "David", "Emily", "Michael", "Rachel", "Daniel", "Lisa", "Eric", "Amy", "Adam", "Grace", "Kevin",
)
IOI_PLACES: tuple[str, ...] = ("store", "garden", "restaurant", "school", "hospital", "office", "station", "house")
IOI_OBJECTS: tuple[str, ...] = ("ring", "kiss", "bone", "computer", "necklace", "drink", "snack", "book")

#: Templates as segment lists; ``{A}``/``{B}`` are the first clause's names in
#: order, ``{S2}`` the repeated name, ``{PLACE}``/``{OBJECT}`` the filler words.
#: All have the same length (14 segments) so that every prompt of a batch has
#: the same number of tokens.
IOI_TEMPLATES: tuple[tuple[str, ...], ...] = (
    ("When", "{A}", " and", "{B}", " went", " to", " the", "{PLACE}", ",", "{S2}", " gave", " a", "{OBJECT}", " to"),
    ("After", "{A}", " and", "{B}", " went", " to", " the", "{PLACE}", ",", "{S2}", " handed", " a", "{OBJECT}", " to"),
    ("While", "{A}", " and", "{B}", " were", " at", " the", "{PLACE}", ",", "{S2}", " passed", " a", "{OBJECT}", " to"),
)
IOI_ORDERS = ("ABBA", "BABA")

# -------------------------------------------------------------------- greater-than
#: Event nouns (Hanna et al. use nouns of events that last: wars, expeditions, ...).
GT_NOUNS: tuple[str, ...] = (
    "war", "expedition", "dispute", "siege", "strike", "campaign", "conflict", "journey",
    "trial", "crisis", "project", "rebellion", "revolution", "struggle", "drought", "epidemic",
)
GT_CENTURIES: tuple[int, ...] = tuple(range(11, 18))  # XX in 11..17
GT_YEARS: tuple[int, ...] = tuple(range(2, 99))  # YY in 02..98
GT_CORRUPT_YY = 1  # corrupted prompts use YY = 01
GT_TEMPLATE: tuple[str, ...] = (
    "The", "{NOUN}", " lasted", " from", " the", " year", "{XX}", "{YY}", " to", " the", " year", "{XX}",
)


def yy(n: int) -> str:
    """Two-digit year token text (no leading space), e.g. ``yy(5) == "05"``."""
    return f"{n:02d}"


# --------------------------------------------------------------------- prompt data
@dataclass(frozen=True)
class IOIPrompt:
    clean: tuple[str, ...]  # segments
    corrupted: tuple[str, ...]  # ABC: the repeated name (S2) replaced by a third name C
    io: str  # indirect object (the answer), e.g. " Mary"
    s: str  # subject (the repeated name)
    c: str  # the third name of the corrupted prompt
    order: str  # "ABBA" (IO first) or "BABA" (S first)
    template: int


@dataclass(frozen=True)
class GreaterThanPrompt:
    clean: tuple[str, ...]
    corrupted: tuple[str, ...]  # the same prompt with YY = 01
    century: int  # XX
    year: int  # YY
    noun: str
    template: int = 0


def _fill(template: Sequence[str], values: dict[str, str]) -> tuple[str, ...]:
    return tuple(values[seg[1:-1]] if seg.startswith("{") and seg.endswith("}") else seg for seg in template)


def generate_ioi(
    n: int,
    seed: int,
    names: Sequence[str] = IOI_NAMES,
    places: Sequence[str] = IOI_PLACES,
    objects: Sequence[str] = IOI_OBJECTS,
    templates: Sequence[Sequence[str]] | Sequence[int] | None = None,
) -> list[IOIPrompt]:
    """``n`` IOI prompts, deterministic in ``seed``.

    Orders alternate ABBA, BABA (exactly balanced for even ``n``); templates
    cycle so that each template gets both orders.  IO, S and C are three
    distinct names drawn at random; place and object at random.  ``names`` etc.
    are bare words (no leading space); ``templates`` are template indices into
    :data:`IOI_TEMPLATES` (default: all).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    names = [w.strip() for w in names]
    if len(set(names)) < 3:
        raise HarnessError(f"IOI needs at least 3 distinct usable names, got {len(set(names))}")
    if not places or not objects:
        raise HarnessError("IOI needs at least one usable place and one usable object")
    template_ids = list(range(len(IOI_TEMPLATES))) if templates is None else [int(t) for t in templates]
    if not template_ids:
        raise HarnessError("IOI needs at least one usable template")
    rng = np.random.default_rng([int(seed), 101])
    out = []
    for i in range(n):
        order = IOI_ORDERS[i % 2]
        t = template_ids[(i // 2) % len(template_ids)]
        io, s, c = (names[j] for j in rng.choice(len(names), size=3, replace=False))
        place = places[rng.integers(len(places))].strip()
        obj = objects[rng.integers(len(objects))].strip()
        first = (io, s) if order == "ABBA" else (s, io)
        values = {"A": " " + first[0], "B": " " + first[1], "PLACE": " " + place, "OBJECT": " " + obj}
        clean = _fill(IOI_TEMPLATES[t], {**values, "S2": " " + s})
        corrupted = _fill(IOI_TEMPLATES[t], {**values, "S2": " " + c})
        out.append(IOIPrompt(clean, corrupted, " " + io, " " + s, " " + c, order, t))
    return out


def generate_greater_than(
    n: int,
    seed: int,
    nouns: Sequence[str] = GT_NOUNS,
    centuries: Sequence[int] = GT_CENTURIES,
    years: Sequence[int] = GT_YEARS,
) -> list[GreaterThanPrompt]:
    """``n`` greater-than prompts, deterministic in ``seed``: XX, YY and the noun uniform at random."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not nouns or not centuries or not years:
        raise HarnessError("greater-than needs at least one usable noun, century and year")
    rng = np.random.default_rng([int(seed), 202])
    out = []
    for _ in range(n):
        noun = nouns[rng.integers(len(nouns))].strip()
        xx = int(centuries[rng.integers(len(centuries))])
        y = int(years[rng.integers(len(years))])
        base = {"NOUN": " " + noun, "XX": f" {xx}"}
        clean = _fill(GT_TEMPLATE, {**base, "YY": yy(y)})
        corrupted = _fill(GT_TEMPLATE, {**base, "YY": yy(GT_CORRUPT_YY)})
        out.append(GreaterThanPrompt(clean, corrupted, xx, y, noun))
    return out


# ------------------------------------------------------------------------ rendering
STYLES = ("text", "words")


def render(segments: Sequence[str], style: str) -> str:
    """Prompt text from segments: ``"text"`` concatenates; ``"words"`` joins stripped segments with spaces."""
    return render_spans(segments, style)[0]


def render_spans(segments: Sequence[str], style: str) -> tuple[str, list[tuple[int, int]]]:
    """The prompt text of :func:`render` and, per segment, the ``(start, end)`` of its text in it without
    surrounding whitespace (``" Mary"`` in ``"When Mary"`` -> ``(5, 9)``)."""
    if style not in STYLES:
        raise ValueError(f"unknown prompt style {style!r}; use one of {STYLES}")
    parts = list(segments) if style == "text" else [seg.strip() for seg in segments]
    sep = "" if style == "text" else " "
    text, spans, at = sep.join(parts), [], 0
    for part in parts:
        lead = len(part) - len(part.lstrip())
        core = part.strip()
        spans.append((at + lead, at + lead + len(core)))
        at += len(part) + len(sep)
    return text, spans


@dataclass
class Candidates:
    """Candidate words that are single tokens, their ids, and what was dropped."""

    kept: dict[str, list[str]] = field(default_factory=dict)
    ids: dict[str, dict[str, int]] = field(default_factory=dict)
    dropped: dict[str, list[str]] = field(default_factory=dict)

    @property
    def n_dropped(self) -> int:
        return sum(len(v) for v in self.dropped.values())
