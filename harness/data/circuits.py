"""Task metrics and tokenised prompt splits of the circuits family, for any :class:`HookedModel`.

- IOI: per prompt ``logit(IO) - logit(S)`` at the last position
  (:func:`ioi_metric`; only the name columns of the unembedding are needed; a
  name's column is the one token it is as the answer, e.g. ``" Mary"`` for GPT-2).
- greater-than: per prompt ``P(YY' > YY) - P(YY' <= YY)``, probabilities from
  a softmax over the full vocabulary, summed over the two-digit year tokens
  ``"00" .. "99"`` (:func:`greater_than_metric`).

:func:`ioi_vocabulary` / :func:`greater_than_vocabulary` find what the model's
tokenizer can express (:mod:`harness.data.vocabulary`: rendering style, usable
candidates and templates, what was dropped); :func:`ioi_split` /
:func:`greater_than_split` generate prompts (:mod:`harness.data.prompts`) from
them, tokenise clean and corrupted prompts, locate the positions that matter
by token alignment (:mod:`harness.data.alignment`) and build the metric.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from harness.data import prompts as P
from harness.data.alignment import Aligner, slot_indices
from harness.data.vocabulary import (
    Vocabulary, choose_style, describe_dropped, keep_candidates, keep_templates, scan_template,
)
from harness.errors import HarnessError
from harness.protocols.circuits import LastTokenMetric

__all__ = [
    "Split", "Vocabulary", "greater_than_metric", "greater_than_split", "greater_than_vocabulary", "ioi_metric",
    "ioi_split", "ioi_vocabulary",
]


# ---------------------------------------------------------------------- metrics
def _gather_rows(last: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``last[..., i, idx[i]]`` for ``last`` ``[..., b, k]`` and ``idx`` ``[b]`` -> ``[..., b]``."""
    idx = idx.to(last.device)
    if last.shape[-2] != idx.shape[0]:
        raise ValueError(
            f"the metric was built for {idx.shape[0]} prompts but got logits for {last.shape[-2]} "
            "(call it on the task's whole prompt batch)"
        )
    view = idx.view(*([1] * (last.dim() - 2)), -1, 1).expand(*last.shape[:-1], 1)
    return last.gather(-1, view).squeeze(-1)


def ioi_metric(name_ids: torch.Tensor, io_idx: torch.Tensor, s_idx: torch.Tensor) -> LastTokenMetric:
    """``logit(IO) - logit(S)`` per prompt.

    ``name_ids``: token ids of the candidate names ``[k]`` (the metric's
    unembedding columns); ``io_idx`` / ``s_idx``: ``[b]`` indices into
    ``name_ids`` of each prompt's IO and S.
    """
    io_idx, s_idx = io_idx.long().cpu(), s_idx.long().cpu()

    def per_prompt(last: torch.Tensor) -> torch.Tensor:
        return _gather_rows(last, io_idx) - _gather_rows(last, s_idx)

    return LastTokenMetric(token_ids=name_ids.long().cpu(), per_prompt_fn=per_prompt, name="logit_diff")


def greater_than_metric(year_ids: torch.Tensor, year_values: torch.Tensor, yy: torch.Tensor) -> LastTokenMetric:
    """``P(YY' > YY) - P(YY' <= YY)`` per prompt, softmax over the full vocabulary.

    ``year_ids``: token ids of the two-digit year tokens ``[m]``;
    ``year_values``: their numbers ``[m]`` (0..99); ``yy``: ``[b]`` each prompt's YY.
    """
    year_ids, year_values, yy = year_ids.long().cpu(), year_values.long().cpu(), yy.long().cpu()
    sign = torch.where(year_values[None, :] > yy[:, None], 1.0, -1.0)  # [b, m]

    def per_prompt(last: torch.Tensor) -> torch.Tensor:
        if last.shape[-2] != sign.shape[0]:
            raise ValueError(
                f"the metric was built for {sign.shape[0]} prompts but got logits for {last.shape[-2]} "
                "(call it on the task's whole prompt batch)"
            )
        probs = torch.softmax(last, dim=-1)[..., year_ids.to(last.device)]  # [..., b, m]
        return (probs * sign.to(device=last.device, dtype=probs.dtype)).sum(-1)

    return LastTokenMetric(token_ids=None, per_prompt_fn=per_prompt, name="prob_diff")


# ------------------------------------------------------------------------ splits
@dataclass
class Split:
    """Tokenised clean / corrupted prompts of one split and the metric for exactly these prompts."""

    clean: torch.Tensor
    corrupted: torch.Tensor
    metric: LastTokenMetric
    texts: list[str]
    corrupted_texts: list[str]
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.clean.shape[0])


def _tokenize(model, vocab: Vocabulary, prompts: Sequence[Sequence[str]],
              templates: Sequence[Sequence[str]]) -> torch.Tensor:
    """``[n, seq]`` ids of the rendered prompts; every prompt must have the vocabulary's layout (its slots
    one aligned token each, at the same positions, the same length) and no unknown word."""
    aligner, rows = Aligner(model), []
    for segments, template in zip(prompts, templates):
        a = aligner.align(segments, vocab.style, cache=False)
        if a.error or a.unknown or a.layout(slot_indices(template)) != vocab.layout:
            why = a.error or (f"unknown word(s) {list(a.unknown)}" if a.unknown else
                              f"layout {a.layout(slot_indices(template))} instead of {vocab.layout}")
            raise HarnessError(f"prompt {a.text!r} does not tokenise like the probes of its template: {why}")
        rows.append(a.ids)
    tokens = torch.tensor(rows, dtype=torch.long, device=model.device)
    encoded = model.to_tokens([P.render(p, vocab.style) for p in prompts])
    if not torch.equal(encoded, tokens):
        raise HarnessError("the model's encode_with_offsets and encode give different token ids for the same prompt")
    return tokens


def _slot_position(vocab: Vocabulary, slot: str) -> int:
    return dict(vocab.layout[1])[slot][0]


# ----------------------------------------------------------------------------------- IOI
#: ``(group, slots, candidates, prefix)``: the names fill A, B and S2, a place PLACE, an object OBJECT.
IOI_GROUPS = (
    ("names", ("A", "B", "S2"), P.IOI_NAMES, " "), ("places", ("PLACE",), P.IOI_PLACES, " "),
    ("objects", ("OBJECT",), P.IOI_OBJECTS, " "),
)


def _ioi_in_style(aligner: Aligner, style: str) -> Vocabulary | tuple[int, str]:
    scans = {t: scan_template(aligner, template, IOI_GROUPS, style, answers=("names",))
             for t, template in enumerate(P.IOI_TEMPLATES)}
    kept, dropped = keep_templates(scans)
    if not kept:
        return 0, (f"no IOI template is usable ({describe_dropped(dropped)}); a template needs every word known to "
                   "the tokenizer (any number of tokens each) and a candidate that is one token in each slot")
    cands = keep_candidates(scans, kept, IOI_GROUPS)
    if len(cands.kept["names"]) < 3:
        return 1, (f"IOI needs at least 3 names that are one token each (with the space before them, in the prompt "
                   f"and as the answer); only {cands.kept['names']} of the {len(P.IOI_NAMES)} candidates "
                   f"({', '.join(P.IOI_NAMES[:5])}, ...) are: a tokenizer with at least 3 of them as single tokens "
                   "makes it work")
    for group, _, words, _ in IOI_GROUPS[1:]:
        if not cands.kept[group]:
            return 1, f"IOI needs at least one of the {group} {list(words)} as one token; none is"
    return Vocabulary(style, cands, kept, dropped_templates=dropped, layout=scans[kept[0]].layout)


def ioi_vocabulary(model) -> Vocabulary:
    """Usable names, places, objects and templates of IOI for ``model`` (see :mod:`harness.data.vocabulary`)."""
    return choose_style(model, _ioi_in_style, "circuits/ioi")


def ioi_split(model, n: int, seed: int, vocab: Vocabulary | None = None) -> Split:
    vocab = vocab or ioi_vocabulary(model)
    names = vocab.candidates.kept["names"]
    prompts = P.generate_ioi(
        n, seed, names=names, places=vocab.candidates.kept["places"], objects=vocab.candidates.kept["objects"],
        templates=vocab.templates,
    )
    templates = [P.IOI_TEMPLATES[p.template] for p in prompts]
    clean = _tokenize(model, vocab, [p.clean for p in prompts], templates)
    corrupted = _tokenize(model, vocab, [p.corrupted for p in prompts], templates)
    name_ids = torch.tensor([vocab.candidates.ids["names"][w] for w in names], dtype=torch.long)
    index = {w: i for i, w in enumerate(names)}
    io_idx = torch.tensor([index[p.io.strip()] for p in prompts])
    s_idx = torch.tensor([index[p.s.strip()] for p in prompts])
    a, b = _slot_position(vocab, "A"), _slot_position(vocab, "B")
    abba = torch.tensor([p.order == "ABBA" for p in prompts])
    return Split(
        clean=clean,
        corrupted=corrupted,
        metric=ioi_metric(name_ids, io_idx, s_idx),
        texts=[P.render(p.clean, vocab.style) for p in prompts],
        corrupted_texts=[P.render(p.corrupted, vocab.style) for p in prompts],
        info={
            "orders": [p.order for p in prompts],
            "templates": [p.template for p in prompts],
            "io_ids": name_ids[io_idx],
            "s_ids": name_ids[s_idx],
            "style": vocab.style,
            "positions": {
                "io": torch.where(abba, a, b), "s1": torch.where(abba, b, a),
                "s2": torch.full((n,), _slot_position(vocab, "S2")), "end": torch.full((n,), clean.shape[1] - 1),
            },
        },
    )


# -------------------------------------------------------------------------- greater-than
#: The noun, the century (both XX slots) and, in the YY slot, the corrupted year "01" every century must take.
GT_GROUPS = (
    ("nouns", ("NOUN",), P.GT_NOUNS, " "), ("centuries", ("XX",), tuple(str(c) for c in P.GT_CENTURIES), " "),
    ("corrupted_year", ("YY",), (P.yy(P.GT_CORRUPT_YY),), ""),
)
GT_REMEDY = (
    "greater-than needs a tokenizer that writes the year 1705 as the two tokens 17 + 05 (as GPT-2's BPE does, or a "
    "word-level vocabulary with the centuries 11..17 and the years 00..99)"
)


def _splits_digits(model) -> bool:
    try:
        pieces = [t.strip() for t in model.to_str_tokens(model.encode("1705"))]
    except Exception:  # noqa: BLE001 - a tokenizer that refuses the number
        return False
    return len(pieces) > 2 and all(len(p) <= 1 for p in pieces)


def _gt_failure(aligner: Aligner, stage: int, what: str, numbers: bool = True) -> tuple[int, str]:
    """``what`` is missing; for a missing century or year, also what would make it work."""
    if not numbers:
        return stage, what
    digits = " (this tokenizer writes numbers digit by digit)" if _splits_digits(aligner.model) else ""
    return stage, f"{what}{digits}; {GT_REMEDY}"


def _gt_answers(aligner: Aligner, style: str, fill, centuries: list[str]) -> tuple[dict[str, int], list[str]]:
    """The one token each "00".."99" is when appended after " XX" (the same after every century where it
    is one), else the one token it is on its own; and the two-digit strings that are neither."""
    answers, dropped = {}, []
    for v in range(100):
        w = P.yy(v)
        ids = {aligner.answer_id(fill(c, P.yy(P.GT_CORRUPT_YY)), w, style) for c in centuries} - {None}
        if not ids and aligner.standalone_id(w, style) is not None:
            ids = {aligner.standalone_id(w, style)}
        if len(ids) == 1:
            answers[w] = ids.pop()
        else:
            dropped.append(w)
    return answers, dropped


def _gt_in_style(aligner: Aligner, style: str) -> Vocabulary | tuple[int, str]:
    scan = scan_template(aligner, P.GT_TEMPLATE, GT_GROUPS, style)
    kept, dropped_templates = keep_templates({0: scan})
    if not kept:
        why = dropped_templates[0]
        numbers = "centuries" in why or "corrupted_year" in why
        return _gt_failure(aligner, 0, f"the greater-than template is not usable: {why}", numbers)
    cands = keep_candidates({0: scan}, kept, GT_GROUPS[:2])
    centuries = cands.kept["centuries"]
    if not cands.kept["nouns"] or not centuries:
        return _gt_failure(aligner, 1, f"greater-than needs usable nouns and centuries; got {len(cands.kept['nouns'])} "
                                    f"nouns, {len(centuries)} centuries", not centuries)
    slots = slot_indices(P.GT_TEMPLATE)

    def fill(century: str, year: str) -> tuple[str, ...]:
        return P._fill(P.GT_TEMPLATE, {"NOUN": " " + scan.choice["nouns"], "XX": " " + century, "YY": year})

    answers, cands.dropped["two_digit"] = _gt_answers(aligner, style, fill, centuries)
    years, dropped_years = [], []
    for y in P.GT_YEARS:
        w = P.yy(y)
        if w in answers:  # a year without an answer token is counted under two_digit
            fits = all(aligner.align(fill(c, w), style).slot_id(slots["YY"]) == answers[w]
                       and aligner.align(fill(c, w), style).layout(slots) == scan.layout for c in centuries)
            (years if fits else dropped_years).append(w)
    if not years:
        return _gt_failure(aligner, 1, "greater-than needs two-digit years YY that are one token after the century "
                                    f"(' 17' + '05'); none of {P.yy(P.GT_YEARS[0])}..{P.yy(P.GT_YEARS[-1])} is")
    cands.kept.update(two_digit=list(answers), years=years)
    cands.ids["two_digit"] = answers
    cands.dropped["years"] = dropped_years
    return Vocabulary(style, cands, kept, dropped_templates=dropped_templates, layout=scan.layout)


def greater_than_vocabulary(model) -> Vocabulary:
    """Usable nouns, centuries XX, two-digit answer tokens "00".."99", and years YY (02..98) for ``model``.

    A century is usable when it is one token in both XX slots next to the corrupted year "01"; a
    two-digit answer is the one token "YY" is when appended after " XX" (else the one token it is on its
    own); a year YY is usable when its answer token is also its token in the YY slot after every usable
    century (else it is dropped and counted under ``years``).
    """
    return choose_style(model, _gt_in_style, "circuits/greater_than")


def greater_than_split(model, n: int, seed: int, vocab: Vocabulary | None = None) -> Split:
    vocab = vocab or greater_than_vocabulary(model)
    c = vocab.candidates
    prompts = P.generate_greater_than(
        n, seed, nouns=c.kept["nouns"], centuries=[int(x) for x in c.kept["centuries"]],
        years=[int(y) for y in c.kept["years"]],
    )
    templates = [P.GT_TEMPLATE] * len(prompts)
    clean = _tokenize(model, vocab, [p.clean for p in prompts], templates)
    corrupted = _tokenize(model, vocab, [p.corrupted for p in prompts], templates)
    values = [int(w) for w in c.kept["two_digit"]]
    year_ids = torch.tensor([c.ids["two_digit"][w] for w in c.kept["two_digit"]], dtype=torch.long)
    yy = torch.tensor([p.year for p in prompts])
    return Split(
        clean=clean,
        corrupted=corrupted,
        metric=greater_than_metric(year_ids, torch.tensor(values), yy),
        texts=[P.render(p.clean, vocab.style) for p in prompts],
        corrupted_texts=[P.render(p.corrupted, vocab.style) for p in prompts],
        info={
            "yy": yy, "year_ids": year_ids, "year_values": torch.tensor(values), "style": vocab.style,
            "positions": {
                "xx": torch.full((n,), _slot_position(vocab, "XX")),
                "yy": torch.full((n,), _slot_position(vocab, "YY")),
                "end": torch.full((n,), clean.shape[1] - 1),
            },
        },
    )
