"""Task metrics and tokenised prompt splits of the circuits family, for any :class:`HookedModel`.

- IOI: per prompt ``logit(IO) - logit(S)`` at the last position
  (:func:`ioi_metric`; only the name columns of the unembedding are needed).
- greater-than: per prompt ``P(YY' > YY) - P(YY' <= YY)``, probabilities from
  a softmax over the full vocabulary, summed over the two-digit year tokens
  ``"00" .. "99"`` (:func:`greater_than_metric`).

:func:`ioi_split` / :func:`greater_than_split` generate prompts
(:mod:`harness.data.prompts`), keep only candidates that are single tokens
of the model, tokenise clean and corrupted prompts and build the metric.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from harness.errors import HarnessError
from harness.protocols.circuits import LastTokenMetric
from harness.data import prompts as P


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


@dataclass
class Vocabulary:
    """What a model's tokenizer can express of a task: usable candidates and the dropped ones."""

    style: str
    candidates: P.Candidates
    templates: list[int]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def dropped_candidates(self) -> int:
        return self.candidates.n_dropped

    def dropped_summary(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in self.candidates.dropped.items() if v}


def ioi_vocabulary(model) -> Vocabulary:
    style = P.style_for(model)
    cands = P.usable_candidates(
        model,
        {"names": (P.IOI_NAMES, True), "places": (P.IOI_PLACES, True), "objects": (P.IOI_OBJECTS, True)},
        style,
    )
    templates, bad = P.usable_templates(model, P.IOI_TEMPLATES, style)
    if not templates:
        raise HarnessError(f"no IOI template is usable with this model's tokenizer (words that are not one token: {bad})")
    if len(cands.kept["names"]) < 3:
        raise HarnessError(
            f"IOI needs at least 3 names that are single tokens of the model; only {cands.kept['names']} are"
        )
    for group in ("places", "objects"):
        if not cands.kept[group]:
            raise HarnessError(f"IOI: none of the {group} {getattr(P, 'IOI_' + group.upper())} is a single token")
    return Vocabulary(style, cands, templates, {"unusable_template_words": bad})


def ioi_split(model, n: int, seed: int, vocab: Vocabulary | None = None) -> Split:
    vocab = vocab or ioi_vocabulary(model)
    names = vocab.candidates.kept["names"]
    prompts = P.generate_ioi(
        n, seed, names=names, places=vocab.candidates.kept["places"], objects=vocab.candidates.kept["objects"],
        templates=vocab.templates,
    )
    clean = P.check_tokenization(model, [p.clean for p in prompts], vocab.style)
    corrupted = P.check_tokenization(model, [p.corrupted for p in prompts], vocab.style)
    name_ids = torch.tensor([vocab.candidates.ids["names"][w] for w in names], dtype=torch.long)
    index = {w: i for i, w in enumerate(names)}
    io_idx = torch.tensor([index[p.io.strip()] for p in prompts])
    s_idx = torch.tensor([index[p.s.strip()] for p in prompts])
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
        },
    )


def greater_than_vocabulary(model) -> Vocabulary:
    """Usable nouns, centuries XX, two-digit tokens "00".."99", and years YY (02..98).

    A year YY is usable when its two-digit token is; in text style also when
    " XXYY" tokenises to [" XX", "YY"] for every usable century (else it is
    dropped and counted under ``years``).
    """
    style = P.style_for(model)
    cands = P.usable_candidates(
        model,
        {
            "nouns": (P.GT_NOUNS, True),
            "centuries": ([str(x) for x in P.GT_CENTURIES], True),
            "two_digit": ([P.yy(v) for v in range(100)], False),
        },
        style,
    )
    templates, bad = P.usable_templates(model, (P.GT_TEMPLATE,), style)
    if not templates:
        raise HarnessError(f"the greater-than template is not usable with this model's tokenizer (words that are not one token: {bad})")
    centuries = [int(c) for c in cands.kept["centuries"]]
    two_digit = set(cands.kept["two_digit"])
    years, dropped_years = [], []
    for y in P.GT_YEARS + (P.GT_CORRUPT_YY,):
        ok = P.yy(y) in two_digit and (
            style == "words" or all(P.year_splits(model, c, y) for c in centuries)
        )
        if y == P.GT_CORRUPT_YY:
            if not ok:
                raise HarnessError("greater-than: the corrupted year '01' is not a single token after the century")
            continue
        (years if ok else dropped_years).append(y)
    # Years whose token exists but whose split fails are dropped here (token-less ones are already counted).
    cands.kept["years"] = [P.yy(y) for y in years]
    cands.dropped["years"] = [P.yy(y) for y in dropped_years if P.yy(y) in two_digit]
    if not cands.kept["nouns"] or not centuries or not years:
        raise HarnessError(
            f"greater-than needs usable nouns, centuries and years; got {len(cands.kept['nouns'])} nouns, "
            f"{len(centuries)} centuries, {len(years)} years"
        )
    return Vocabulary(style, cands, templates, {"unusable_template_words": bad})


def greater_than_split(model, n: int, seed: int, vocab: Vocabulary | None = None) -> Split:
    vocab = vocab or greater_than_vocabulary(model)
    c = vocab.candidates
    prompts = P.generate_greater_than(
        n, seed, nouns=c.kept["nouns"], centuries=[int(x) for x in c.kept["centuries"]],
        years=[int(y) for y in c.kept["years"]],
    )
    clean = P.check_tokenization(model, [p.clean for p in prompts], vocab.style)
    corrupted = P.check_tokenization(model, [p.corrupted for p in prompts], vocab.style)
    values = [int(w) for w in c.kept["two_digit"]]
    year_ids = torch.tensor([c.ids["two_digit"][w] for w in c.kept["two_digit"]], dtype=torch.long)
    yy = torch.tensor([p.year for p in prompts])
    return Split(
        clean=clean,
        corrupted=corrupted,
        metric=greater_than_metric(year_ids, torch.tensor(values), yy),
        texts=[P.render(p.clean, vocab.style) for p in prompts],
        corrupted_texts=[P.render(p.corrupted, vocab.style) for p in prompts],
        info={"yy": yy, "year_ids": year_ids, "year_values": torch.tensor(values)},
    )
