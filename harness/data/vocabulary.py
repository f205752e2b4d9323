"""What a model's tokenizer can express of a circuit task: rendering, usable candidates and templates.

For each rendering style (:func:`~harness.data.alignment.preferred_styles` order) every template is
probed (:class:`~harness.data.alignment.Aligner`): a template is usable when the tokenizer reads it
(no unknown fixed word) and each slot takes some candidate as one aligned token; a candidate is usable
when it is one aligned token in its slots of every kept template (and, for the IOI names and the
two-digit years, the answer token: the one token it is when appended to a prompt).  Templates whose
prompts tokenise to different layouts (length, slot positions) are dropped, and of the rest those of the
layout most templates share are kept, so a batch has one length.  The style that drops least is chosen
(ties: the preferred one); a style that drops nothing is taken without trying the others.  What was
dropped, and why, is kept in the :class:`Vocabulary` (the circuits task records it).

Where no style can build the task, :class:`~harness.errors.HarnessError` says in one line what is
missing and what would make it work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from harness.data import prompts as P
from harness.data.alignment import Aligner, Layout, choose_layout, preferred_styles, slot_indices
from harness.errors import HarnessError


@dataclass
class Vocabulary:
    """What a model's tokenizer can express of a task: usable candidates and the dropped ones."""

    style: str
    candidates: P.Candidates
    templates: list[int]
    extra: dict[str, Any] = field(default_factory=dict)
    dropped_templates: dict[int, str] = field(default_factory=dict)  # template index -> why
    layout: Layout | None = None  # shared by every prompt of the kept templates

    @property
    def dropped_candidates(self) -> int:
        return self.candidates.n_dropped

    @property
    def n_dropped(self) -> int:
        return self.candidates.n_dropped + len(self.dropped_templates)

    def dropped_summary(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in self.candidates.dropped.items() if v}


#: Why a task cannot be built in a style: ``(stage, message)``; stage 0 = no usable template, 1 = too few
#: usable candidates.  The error reports the style that got furthest.
Failure = tuple[int, str]


def choose_style(model, build: Callable[[Aligner, str], "Vocabulary | Failure"], task: str) -> Vocabulary:
    """The vocabulary of the style that drops least (ties: the preferred style); a one-line HarnessError,
    from the style that got furthest, when no style can build the task."""
    aligner = Aligner(model)
    results: dict[str, Vocabulary | Failure] = {}
    for style in preferred_styles(model):
        results[style] = build(aligner, style)
        if isinstance(results[style], Vocabulary) and results[style].n_dropped == 0:
            break
    good = [v for v in results.values() if isinstance(v, Vocabulary)]
    if not good:
        stage, why = max(results.values(), key=lambda f: f[0])  # max keeps the first of equals
        tried = " and ".join(f"'{s}'" for s in results)
        raise HarnessError(f"{task} cannot be built with this model's tokenizer: {why} (renderings tried: {tried})")
    best = min(good, key=lambda v: v.n_dropped)  # min keeps the first of equals: the preferred style
    best.extra["styles"] = {
        s: f"{v.n_dropped} dropped" if isinstance(v, Vocabulary) else v[1] for s, v in results.items()
    }
    return best


# ------------------------------------------------------------------- one template, probed
@dataclass
class TemplateScan:
    """One template in one style: the id of every candidate that fits its slots, its layout, or why not."""

    found: dict[str, dict[str, int]]  # group -> word -> token id
    choice: dict[str, str]  # group -> the word that fills the group's slots in probes of other groups
    layout: Layout | None = None
    reason: str | None = None


#: ``(group, slots, candidate words, prefix)``: a word fills each of the group's slots as ``prefix + word``.
Group = tuple[str, tuple[str, ...], Sequence[str], str]


def scan_template(aligner: Aligner, template: Sequence[str], groups: Sequence[Group], style: str,
                  answers: Sequence[str] = ()) -> TemplateScan:
    """Probe every candidate of every group in ``template``.

    A candidate fits when its slots are one token each, the same token, and the probe's every slot is
    one token (the other groups' slots hold their first fitting word, found first in group order).
    ``answers``: groups whose words must also be that token when appended to the probe as the answer.
    """
    slots = slot_indices(template)
    idx = {g: [i for s in ss for i in slots[s]] for g, ss, _, _ in groups}
    choice = {g: words[0] for g, _, words, _ in groups}

    def fill(values: dict[str, str]) -> tuple[str, ...]:
        return P._fill(template, {s: pre + values[g] for g, ss, _, pre in groups for s in ss})

    for g, _, words, _ in groups:  # pass 1: a fitting word per group to fill its slots in the others' probes
        for w in words:
            probe = aligner.align(fill({**choice, g: w}), style)
            if probe.slot_id(idx[g]) is not None:
                choice[g] = w
                break
        else:
            why = _why_not(aligner, probe, template, style, f"no {g} candidate is one token in its slot")
            return TemplateScan({}, choice, reason=why)
    base = aligner.align(fill(choice), style)
    if base.unknown or base.layout(slots) is None:
        why = _why_not(aligner, base, template, style, "its slots are not one token each when filled together")
        return TemplateScan({}, choice, reason=why)
    found: dict[str, dict[str, int]] = {}
    layouts = {base.layout(slots)}
    for g, _, words, pre in groups:  # pass 2: every candidate
        found[g] = {}
        for w in words:
            probe = aligner.align(fill({**choice, g: w}), style)
            tid, layout = probe.slot_id(idx[g]), probe.layout(slots)
            if tid is None or layout is None or probe.unknown:
                continue
            if g in answers and aligner.answer_id(fill({**choice, g: w}), pre + w, style) != tid:
                continue
            found[g][w] = tid
            layouts.add(layout)
    if len(layouts) > 1:
        lengths = sorted({lay[0] for lay in layouts})
        return TemplateScan(found, choice, reason=f"its prompts tokenise to different layouts (lengths {lengths})")
    return TemplateScan(found, choice, layout=base.layout(slots))


def _unknown_words(aligner: Aligner, probe, template: Sequence[str], style: str) -> list[str]:
    """The template's fixed words the tokenizer does not know: refused or unknown in the probe, and on their own
    (a word glued to its neighbour, as ``"store,"`` is for a whitespace tokenizer, is not unknown itself)."""
    suspects = [seg for seg in template if not seg.startswith("{") and (probe.error or seg.strip() in probe.unknown)]
    out = []
    for seg in suspects:
        alone = aligner.align((seg,), style)
        if (alone.error or alone.unknown) and seg.strip() not in out:
            out.append(seg.strip())
    return out


def _why_not(aligner: Aligner, probe, template: Sequence[str], style: str, default: str) -> str:
    unknown = _unknown_words(aligner, probe, template, style)
    if unknown:
        return f"unknown word(s) {unknown}"
    return f"the tokenizer cannot read it ({probe.error[:100]})" if probe.error else default


def describe_dropped(dropped: dict[int, str]) -> str:
    """``"template 0: why; templates 1, 2: why"``, templates with the same reason together."""
    by_reason: dict[str, list[int]] = {}
    for t, why in dropped.items():
        by_reason.setdefault(why, []).append(t)
    return "; ".join(
        f"template{'s' if len(ts) > 1 else ''} {', '.join(map(str, ts))}: {why}" for why, ts in by_reason.items()
    )


def keep_candidates(scans: dict[int, TemplateScan], kept: list[int], groups) -> P.Candidates:
    """Candidates that are one token, the same one, in every kept template (in the groups' order)."""
    out = P.Candidates()
    for g, _, words, _ in groups:
        ids = {w: {scans[t].found.get(g, {}).get(w) for t in kept} for w in words}
        good = [w for w in words if kept and len(ids[w]) == 1 and None not in ids[w]]
        out.kept[g] = good
        out.ids[g] = {w: next(iter(ids[w])) for w in good}
        out.dropped[g] = [w for w in words if w not in good]
    return out


def keep_templates(scans: dict[int, TemplateScan]) -> tuple[list[int], dict[int, str]]:
    """Templates of the layout most usable templates share, and the reasons the others were dropped."""
    kept, dropped = choose_layout({t: s.layout for t, s in scans.items() if s.reason is None and s.layout})
    dropped.update({t: s.reason for t, s in scans.items() if s.reason})
    return kept, dict(sorted(dropped.items()))
