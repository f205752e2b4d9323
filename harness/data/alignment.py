"""Where the segments of a rendered prompt are in a model's tokens: the tokenizer-dependent half of the prompts.

A prompt is a list of segments (:mod:`harness.data.prompts`); rendered in a style it is a text in which
every segment has a span.  :meth:`Aligner.align` tokenises that text with its character offsets
(:meth:`~harness.models.tokens.TokensMixin.encode_with_offsets`) and finds, for each segment, the one
token it *is*, if there is one.  The alignment rule:

- spans are compared without surrounding whitespace (a token ``" Mary"`` stands for ``"Mary"``);
- a segment is *aligned* to token ``k`` when ``k`` is the only token whose span overlaps the segment's,
  its span is exactly the segment's, and it decodes back to that text (which rejects an unknown-word
  token such as ``[UNK]``, even though it spans the word it replaced);
- a segment covered, even partly, by a token that does not decode back to its text holds an *unknown*
  word.

Variable segments (names, places, objects; centuries, two-digit years) must be aligned; fixed template
words may be any number of tokens as long as none is unknown.  The *layout* of a prompt is its number of
tokens and the token position of every variable segment: every prompt of a batch must share it, so that
position ``-1`` is the last real token and no padding is ever needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from harness.data import prompts as P
from harness.models.tokens import strip_space_markers

#: ``(number of tokens, ((slot, token positions of its segments), ...) by slot name)``.
Layout = tuple[int, tuple[tuple[str, tuple[int, ...]], ...]]


def preferred_styles(model) -> tuple[str, ...]:
    """The renderings to try, best guess first: ``"words"`` first for the harness's word tokenizer, else ``"text"``."""
    from harness.models.tokenizer import WordTokenizer

    first = "words" if isinstance(getattr(model, "tokenizer", None), WordTokenizer) else "text"
    return (first,) + tuple(s for s in P.STYLES if s != first)


def slot_indices(template: Sequence[str]) -> dict[str, list[int]]:
    """Segment indices of each ``{SLOT}`` of a template, e.g. ``{"A": [1], "B": [3], ...}``."""
    out: dict[str, list[int]] = {}
    for i, seg in enumerate(template):
        if seg.startswith("{") and seg.endswith("}"):
            out.setdefault(seg[1:-1], []).append(i)
    return out


@dataclass(frozen=True)
class Alignment:
    """One rendered prompt, its token ids and, per segment, the index of the one token it is (or None)."""

    text: str
    ids: tuple[int, ...]
    token_of: tuple[int | None, ...]
    unknown: tuple[str, ...] = ()  # segments (stripped) that hold an unknown word
    error: str | None = None  # the tokenizer refused the text (the harness's word tokenizer raises)

    def slot_id(self, indices: Sequence[int]) -> int | None:
        """The token id the segments at ``indices`` all are, each aligned; None otherwise."""
        ids = {self.ids[k] if k is not None else None for k in (self.token_of[i] for i in indices)}
        return next(iter(ids)) if len(ids) == 1 and None not in ids else None

    def layout(self, slots: dict[str, list[int]]) -> Layout | None:
        """``(len(ids), ((slot, token positions), ...))`` for ``slots`` (name -> segment indices), or None
        if one of those segments is not aligned."""
        pos = tuple((name, tuple(self.token_of[i] for i in idx)) for name, idx in sorted(slots.items()))
        if self.error or any(None in p for _, p in pos):
            return None
        return (len(self.ids), pos)  # type: ignore[return-value]


def _trim(text: str, start: int, end: int) -> tuple[int, int] | None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return (start, end) if start < end else None


class Aligner:
    """Aligns rendered prompts to one model's tokens; caches decoded tokens and probe alignments."""

    def __init__(self, model):
        self.model = model
        self._decoded: dict[int, str] = {}
        self._cache: dict[tuple[tuple[str, ...], str], Alignment] = {}

    def decodes_to(self, tid: int, text: str) -> bool:
        """Whether token ``tid`` decodes to ``text`` (ignoring surrounding whitespace, space markers and case)."""
        if tid not in self._decoded:
            try:
                self._decoded[tid] = strip_space_markers(self.model.to_str_tokens([int(tid)])[0])
            except Exception:  # noqa: BLE001 - a tokenizer that cannot decode the id
                self._decoded[tid] = "\0"
        return self._decoded[tid].casefold() == text.strip().casefold()

    def align(self, segments: Sequence[str], style: str, cache: bool = True) -> Alignment:
        """Tokenise ``render(segments, style)`` and align each segment to its token (see the module docstring)."""
        key = (tuple(segments), style)
        if cache and key in self._cache:
            return self._cache[key]
        text, spans = P.render_spans(segments, style)
        try:
            tokens = self.model.encode_with_offsets(text)
        except (ValueError, KeyError) as e:
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            out = Alignment(text, (), (None,) * len(spans), error=why)
        else:
            out = self._align(text, spans, segments, tokens)
        if cache:
            self._cache[key] = out
        return out

    def _align(self, text, spans, segments, tokens) -> Alignment:
        trimmed = [_trim(text, s, e) for _, s, e in tokens]
        good = [sp is None or self.decodes_to(tid, text[sp[0]:sp[1]]) for (tid, _, _), sp in zip(tokens, trimmed)]
        token_of: list[int | None] = []
        unknown: list[str] = []
        for seg, (a, b) in zip(segments, spans):
            over = [k for k, sp in enumerate(trimmed) if sp is not None and sp[0] < b and sp[1] > a]
            if any(not good[k] for k in over):
                unknown.append(seg.strip())
            one = len(over) == 1 and trimmed[over[0]] == (a, b) and good[over[0]]
            token_of.append(over[0] if one else None)
        return Alignment(text, tuple(int(t) for t, _, _ in tokens), tuple(token_of), tuple(unknown))

    def answer_id(self, segments: Sequence[str], answer: str, style: str) -> int | None:
        """The one token ``answer`` is when appended to the prompt ``segments`` (the prompt's own tokens
        unchanged), else None."""
        base, ext = self.align(segments, style), self.align(tuple(segments) + (answer,), style)
        if base.error or ext.error or len(ext.ids) != len(base.ids) + 1 or ext.ids[:-1] != base.ids:
            return None
        k = ext.token_of[-1]
        return ext.ids[k] if k == len(ext.ids) - 1 else None

    def standalone_id(self, text: str, style: str) -> int | None:
        """The one token ``text`` is on its own, else None."""
        return self.align((text,), style).slot_id([0])


def choose_layout(layouts: dict[int, Layout]) -> tuple[list[int], dict[int, str]]:
    """Keep the templates of the layout most templates share (ties: the earliest template's); the others
    are returned with the reason they were dropped."""
    if not layouts:
        return [], {}
    counts: dict[Layout, int] = {}
    for lay in layouts.values():
        counts[lay] = counts.get(lay, 0) + 1
    best = max(counts, key=lambda lay: (counts[lay], -min(t for t, v in layouts.items() if v == lay)))
    kept = [t for t, lay in layouts.items() if lay == best]
    dropped = {
        t: f"tokenises to {lay[0]} tokens with its slots at {_where(lay)}, the kept templates to {best[0]} "
           f"with theirs at {_where(best)} (a batch has one layout)"
        for t, lay in layouts.items() if lay != best
    }
    return kept, dropped


def _where(layout: Layout) -> str:
    return ", ".join(f"{name} {'/'.join(map(str, pos))}" for name, pos in layout[1])
