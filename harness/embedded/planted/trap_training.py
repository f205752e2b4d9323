"""Training terms of the planted traps (:class:`~harness.embedded.planted.specs.Traps`).

The trainer (:mod:`harness.embedded.planted.trainer`) asks :func:`interchange_units` for the interchange
blocks, :func:`add_trap_rows` for the extra rows of its one batched training pass and :func:`trap_parts`
for the extra loss terms.  A spec without traps gets exactly the original recipe's blocks and no extra
rows or terms, so the original planted models are trained bit for bit as before.

Rows (all on the step's task prompts, every one scored at the last position):

- ``neg``: the negative heads patched at the end from another prompt (term ``negative``);
- ``red<head>``: one redundant head resample-ablated (every position; a third of the rows each from
  another prompt, from the corrupted prompt, the batch mean, as the strict rows), and ``alone<head>``:
  the same head and every non-circuit head ablated, one slice of the batch each (terms ``redundant``
  and ``redundant_match``: the answer and the logit difference unchanged, so the other redundant head
  suffices in the full model and on its own, with no non-circuit head backing it up).  The group's job
  comes from its interchange unit (patched together from the prompt with the IO repeated, the answer
  flips to S).  What did not work (trials, see the README): ``red`` rows alone let a non-circuit head
  (1.0) become a third, hidden member of the redundancy (any two of three sufficed); ``alone`` rows
  alone made the redundant heads' signal positional, and a single resample ablation in the full model
  then broke the task (drop 0.57); a term pushing the jointly ablated logit difference to 0 or below
  half the clean one (so that a joint *mean* ablation breaks the task too) shrank every logit
  difference (clean metric 15 -> 4-6) or made non-circuit heads matter;
- ``via0``, ``via1``, ...: each ``via`` head alone, then all of them, resample-ablated as above while the
  saturated heads are clamped to their clean output, one slice of the batch each (terms ``via`` and
  ``via_match``: nothing may change; one head at a time because attribution patching scores heads one
  at a time: with only the joint block, a trial left 0.5's linear estimate above most non-circuit heads');
- ``cancel``: the sign-cancelling heads replaced (every position; a third of the rows each from another
  prompt, from the corrupted prompt, the mean over the other and the corrupted prompts), and the same for
  each prompt's order-swapped twin (``cancel_twin`` clean, ``cancel_twin_patched`` with the same source
  prompt and mean and its own corrupted prompt; the source pass adds the twins' corrupted prompts); terms
  ``cancel``: the logit difference falls by ``cancel_shift`` on ABBA prompts and rises by as much on BABA
  prompts, a squared error per prompt, and ``cancel_balance``: per prompt, the square of the sum of its
  change and its twin's, so that over prompts that alternate the orders the mean does not move under any
  of the three ablations.  ``cancel_corrupted``: the corrupted prompts (ABC) unpatched, for
  ``cancel_attention``, a hint that there (no repeated name) the cancelling heads attend to S2, i.e. copy
  C, which is neither answer.  Their job on clean prompts comes from their attention hint, the first name
  (position A): IO on ABBA prompts, S on BABA prompts.  The ``cancel*`` terms count from step
  ``cancel_start`` on.  Trials: a head attending to IO on ABBA and to S2 on BABA prompts (the order read
  from the circuit) never balanced: with the two orders' batch means balanced, one ablation still moved
  the mean by 0.06-0.15 (its output's positional part differs between the orders, and downstream read
  it); balanced per replacement kind or with weight 5, the per-prompt effect shrank to 0.1-0.2 and 1.3's
  resample drop fell to 0.03-0.06.  The first-name mover's output carries no order signal on clean prompts.

- ``opp<head>``: one head of an opposing pair replaced alone, ``oppjoint<pair>``: the pair replaced together
  (every position; a third of the rows each from another prompt, from the corrupted prompt, the batch mean, as
  the strict rows); terms ``opposing``: the suppressor's replacement lowers the logit difference by
  ``opposing_ratio`` times the clean one and the promoter's raises it by as much (a squared error per prompt),
  and ``opposing_match``: replaced together, nothing changes; ``oppother<head>``: every other non-circuit head
  replaced alone, one slice of the batch each (term ``opposing_others``: nothing changes).  Their attention
  hints are ``busy`` entries.

- ``bg<head>``: each background head replaced alone, one slice of the batch each (every position; rows from
  another prompt, the corrupted prompt, the batch mean, as the strict rows); term ``background``: the logit
  difference moves by ``-+background_shift`` times the clean one (even positions in ``traps.background`` down,
  odd up), a squared error per prompt, rows patched from another prompt whose S is this prompt's IO or S left
  out; ``background_attention``: their attention from the last position on S2.  Both count from step
  ``background_start`` on.  Trials: at weight 1 the effects reached a fifth of the target; at weight 10 or 30
  from step 0 (via terms x5) the task was still unlearned at step 1,100 (task loss 0.57; stopped there).  Before the background, four trials
  of a term on the finite-difference slope of the logit difference along the via heads' replacement (the
  saturated heads clamped) lowered every head's per-prompt linear estimate together: the via heads' leak
  (layer norms, side paths) stayed above most strictly trained non-circuit heads'.

Terms computed from the attention inputs captured during the pass: ``saturation`` (a hinge on the
saturated heads' attention-logit margin) and ``busy_attention`` (the busy heads' attention hints); from
the heads' outputs ``z`` on the clean rows: ``busy_activity``, a hinge keeping each busy head's output at
its hint's query varying across prompts (centred RMS norm >= ``busy_norm``: without it a trial's busy
heads attended to the names but their outputs stayed ~8x smaller than the circuit heads').
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F

from harness.embedded.planted.specs import Head, PlantedRecipe, PlantedSpec, head_name, heads_mask
from harness.models.gpt import GPT


def interchange_units(spec: PlantedSpec) -> list[tuple[str, tuple[Head, ...], str]]:
    """``(part name, heads patched together, source kind)`` of every interchange block.

    Without traps: one block per circuit head, named ``ic<head>``; IOI: the last circuit head from
    another prompt (``"other"``), the others from the prompt with the IO repeated (``"io_repeated"``);
    greater-than: every head from another prompt.
    """
    if spec.traps.interchange:
        return [("ic" + "+".join(head_name(h) for h in heads), tuple(heads), kind)
                for heads, kind in spec.traps.interchange]
    last = spec.circuit[-1]
    return [("ic" + head_name(h), (h,), "io_repeated" if spec.task == "ioi" and h != last else "other")
            for h in spec.circuit]


def needs_clean_source(spec: PlantedSpec) -> bool:
    """Whether the source pass must include the step's clean prompts (to clamp saturated heads)."""
    return bool(spec.traps.via)


def add_trap_rows(spec: PlantedSpec, sampler, b, z_other: torch.Tensor, z_clean: torch.Tensor | None,
                  strict_rep: torch.Tensor, rows, targets: list[torch.Tensor], r: PlantedRecipe,
                  z_corrupt: torch.Tensor | None = None, z_twin_corrupt: torch.Tensor | None = None) -> None:
    """Append the trap rows (module docstring) and their cross-entropy targets (the base prompts' IO)."""
    t = spec.traps
    io = sampler.answer(b.base, "io")
    last = b.base_tok.shape[1] - 1
    if t.negative:
        rows.add("neg", b.base_tok, heads_mask(t.negative, r), z_other, (last,))
        targets.append(io)
    outside = ~heads_mask(spec.circuit, r)
    for name, part, mask in _redundant_blocks(t, len(io), r, outside):
        rows.add(name, b.base_tok[part], mask, strict_rep[part])
        targets.append(io[part])
    if t.cancel:
        rep = strict_rep.clone()  # the mean rows: the mean over the other and the corrupted prompts (act-patch-mean's)
        rep[2::3] = torch.cat([z_other, z_corrupt]).mean(0, keepdim=True)
        mask = heads_mask(t.cancel, r)
        rows.add("cancel", b.base_tok, mask, rep)
        twin = sampler.tokens(b.base, swap=True)  # the same prompts in the other order (same answer)
        rep_twin = rep.clone()  # the same source prompt and mean; the twin's own corrupted prompt
        rep_twin[1::3] = z_twin_corrupt[1::3]
        rows.add("cancel_twin", twin)
        rows.add("cancel_twin_patched", twin, mask, rep_twin)
        targets += [io, io, io]
        rows.add("cancel_corrupted", b.src_tokens[1])  # the corrupted prompts (ABC), only for an attention hint
        targets.append(io)  # (no loss reads their cross-entropy: there is no answer without a repeated name)
    for name, heads in _opposing_blocks(t):
        rows.add(name, b.base_tok, heads_mask(heads, r), strict_rep)
        targets.append(io)
    for name, part, mask in _opposing_other_blocks(spec, len(io), r) + _background_blocks(t, len(io), r):
        rows.add(name, b.base_tok[part], mask, strict_rep[part])
        targets.append(io[part])
    if t.via:
        rep = strict_rep.clone()
        for layer, head in t.saturated:
            rep[:, :, layer, head] = z_clean[:, :, layer, head]
        for i, (part, heads) in enumerate(zip(_slices(len(io), len(t.via) + 1), via_sets(t))):
            rows.add(f"via{i}", b.base_tok[part], heads_mask(heads + t.saturated, r), rep[part])
            targets.append(io[part])


def _opposing_blocks(t) -> list[tuple[str, tuple[Head, ...]]]:
    """``(row block name, heads replaced)`` of the opposing pairs: each head alone (``opp<head>``), then the
    pair together (``oppjoint<suppressor>+<promoter>``), every block on the whole batch."""
    out = []
    for pair in t.opposing:
        out += [("opp" + head_name(h), (h,)) for h in pair]
        out.append(("oppjoint" + "+".join(head_name(h) for h in pair), tuple(pair)))
    return out


def _opposing_other_blocks(spec: PlantedSpec, n: int, r: PlantedRecipe) -> list[tuple[str, slice, torch.Tensor]]:
    """``(row block name, slice of the batch, head replaced)``: every non-circuit head outside the opposing pairs
    alone, one slice each (``oppother<head>``; term ``opposing_others``: nothing changes).  Without them, trials
    balanced the pair with the help of a third head (2.5 or 1.1 then moved the metric by 10-24% alone)."""
    t = spec.traps
    if not t.opposing:
        return []
    skip = set(spec.circuit) | {h for pair in t.opposing for h in pair}
    heads = [(layer, head) for layer in range(r.n_layers) for head in range(r.n_heads) if (layer, head) not in skip]
    return [("oppother" + head_name(h), part, heads_mask((h,), r)) for part, h in zip(_slices(n, len(heads)), heads)]


def _opposing_parts(spec: PlantedSpec, sampler, b, last: torch.Tensor, m_clean: torch.Tensor, sl: dict[str, slice]) -> dict[str, torch.Tensor]:
    """``opposing``: each head of a pair replaced alone moves the logit difference by ``-+opposing_ratio`` times
    the clean one (suppressor down, promoter up), a squared error per prompt (the rows patched from another
    prompt whose S is this prompt's IO or S are left out: there the copied name changes the target);
    ``opposing_match``: the pair replaced together leaves it unchanged."""
    t = spec.traps
    io, s = sampler.answer(b.base, "io"), sampler.answer(b.base, "s")
    valid = _copy_valid(sampler, b, last.dtype)
    target = t.opposing_ratio * m_clean.detach()
    single, joint = [], []
    for pair in t.opposing:
        for h, sign in zip(pair, (-1.0, 1.0)):
            change = _logit_diff(last[sl["opp" + head_name(h)]], io, s) - m_clean
            single.append(((change - sign * target).pow(2) * valid).sum() / valid.sum().clamp_min(1))
        rows = sl["oppjoint" + "+".join(head_name(h) for h in pair)]
        joint.append((_logit_diff(last[rows], io, s) - m_clean).pow(2).mean())
    others = [(name, part) for name, part, _ in _opposing_other_blocks(spec, len(io), spec.recipe)]
    return {"opposing": sum(single) / len(single), "opposing_match": sum(joint) / len(joint),
            "opposing_others": sum((_logit_diff(last[sl[n]], io[p], s[p]) - m_clean[p]).pow(2).sum() for n, p in others)
            / len(io)}


def _copy_valid(sampler, b, dtype: torch.dtype) -> torch.Tensor:
    """``[n]`` 1.0 / 0.0: the rows whose replacement keeps the job of a head that copies S2 -- all but the rows
    patched from another prompt (0::3, as the strict rows) whose S is this prompt's IO or S (there the copied
    name changes the target)."""
    io, s, other_s = sampler.answer(b.base, "io"), sampler.answer(b.base, "s"), sampler.answer(b.other, "s")
    valid = torch.ones(len(io), dtype=dtype)
    valid[0::3] = ((other_s != io) & (other_s != s))[0::3].to(dtype)
    return valid


def _background_blocks(t, n: int, r: PlantedRecipe) -> list[tuple[str, slice, torch.Tensor]]:
    """``(row block name, slice of the batch, head replaced)``: each background head alone, one slice each
    (``bg<head>``)."""
    if not t.background:
        return []
    return [("bg" + head_name(h), part, heads_mask((h,), r)) for part, h in zip(_slices(n, len(t.background)), t.background)]


def _background_parts(spec: PlantedSpec, sampler, b, last: torch.Tensor, m_clean: torch.Tensor, sl: dict[str, slice],
                      model: GPT, captured: dict[int, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``background``: each background head replaced alone moves the logit difference by ``-+background_shift``
    times the clean one (even positions down, odd up), a squared error per prompt; ``background_attention``: the
    mean over them of the cross-entropy of their attention from the last position on S2."""
    t = spec.traps
    io, s = sampler.answer(b.base, "io"), sampler.answer(b.base, "s")
    valid = _copy_valid(sampler, b, last.dtype)
    target = t.background_shift * m_clean.detach()
    err = torch.zeros((), dtype=last.dtype)
    for sign, (name, part, _) in zip(t.background_signs(), _background_blocks(t, len(io), spec.recipe)):
        change = _logit_diff(last[sl[name]], io[part], s[part]) - m_clean[part]
        err = err + ((change + sign * target[part]).pow(2) * valid[part]).sum()
    query, task_rows = b.base_tok.shape[1] - 1, sl["task"]
    attention = sum(
        -torch.log_softmax(attention_scores(model, captured[layer][task_rows], layer, head, query), dim=-1)
        [:, sampler.pos["S2"]].mean() for layer, head in t.background)
    return {"background": err / valid.sum().clamp_min(1), "background_attention": attention / len(t.background)}


def _redundant_blocks(t, n: int, r: PlantedRecipe, outside: torch.Tensor) -> list[tuple[str, slice, torch.Tensor]]:
    """``(row block name, slice of the batch, heads ablated)``: per redundant head, ``red<head>`` (it alone)
    and ``alone<head>`` (it and every non-circuit head)."""
    blocks = [(h, kind) for group in t.redundant for h in group for kind in ("red", "alone")]
    if not blocks:
        return []
    return [(kind + head_name(h), part, heads_mask((h,), r) | (outside if kind == "alone" else False))
            for part, (h, kind) in zip(_slices(n, len(blocks)), blocks)]


def via_sets(t) -> list[tuple[Head, ...]]:
    """The head sets of the ``via`` rows: each via head alone, then all of them."""
    return [(h,) for h in t.via] + [tuple(t.via)]


def _slices(n: int, k: int) -> list[slice]:
    """``k`` consecutive slices covering ``range(n)`` (sizes differ by at most one)."""
    edges = [round(i * n / k) for i in range(k + 1)]
    return [slice(edges[i], edges[i + 1]) for i in range(k)]


def attention_scores(model: GPT, x_ln: torch.Tensor, layer: int, head: int, query: int) -> torch.Tensor:
    """Attention logits ``[b, query + 1]`` of head ``layer.head`` from position ``query`` (before the softmax)."""
    attn = model.blocks[layer].attn
    d, dh = model.config.d_model, model.config.d_head
    w, bias = attn.qkv.weight, attn.qkv.bias
    qs, ks = slice(head * dh, (head + 1) * dh), slice(d + head * dh, d + (head + 1) * dh)
    q = x_ln[:, query] @ w[qs].T + bias[qs]
    k = x_ln[:, : query + 1] @ w[ks].T + bias[ks]
    return torch.einsum("bkd,bd->bk", k, q) / math.sqrt(dh)


def key_positions(sampler, d: dict, key: Any) -> torch.Tensor:
    """Per-prompt key positions of a hint: a fixed position or one the sampler names ("io", "s1", "s2")."""
    n = len(next(iter(d.values())))
    if isinstance(key, int):
        return torch.full((n,), key, dtype=torch.long)
    return torch.from_numpy(sampler.position(d, key)).long()


def attention_margin(scores: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Per row: the attention logit of the target key minus the largest logit of any other key."""
    target = scores.gather(1, keys[:, None])[:, 0]
    others = scores.scatter(1, keys[:, None], float("-inf"))
    return target - others.max(dim=1).values


def trap_parts(spec: PlantedSpec, sampler, b, last: torch.Tensor, ce: torch.Tensor, sl: dict[str, slice],
               task_metric: Callable[[torch.Tensor], torch.Tensor], model: GPT,
               captured: dict[int, torch.Tensor], z_seen: dict[int, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The trap loss terms of one step (module docstring), from the task rows' last-position logits."""
    t, parts = spec.traps, {}
    clean = last[sl["task"]]
    m_clean = task_metric(clean)
    if t.negative:
        parts["negative"] = ce[sl["neg"]].mean() + _negative_shift(sampler, b, last[sl["neg"]], clean, t.negative_shift)
    if t.redundant:
        blocks = [(name, part) for name, part, _ in _redundant_blocks(t, len(m_clean), spec.recipe, torch.zeros((), dtype=torch.bool))]
        parts["redundant"] = sum(ce[sl[n]].mean() for n, _ in blocks) / len(blocks)
        io, s = sampler.answer(b.base, "io"), sampler.answer(b.base, "s")
        parts["redundant_match"] = sum(
            (_logit_diff(last[sl[n]], io[part], s[part]) - m_clean[part]).pow(2).mean() for n, part in blocks
        ) / len(blocks)
    if t.via:
        io, s = sampler.answer(b.base, "io"), sampler.answer(b.base, "s")
        blocks = [(f"via{i}", part) for i, part in enumerate(_slices(len(m_clean), len(t.via) + 1))]
        parts["via"] = sum(ce[sl[n]].mean() for n, _ in blocks) / len(blocks)
        parts["via_match"] = sum(
            (_logit_diff(last[sl[n]], io[part], s[part]) - m_clean[part]).pow(2).mean() for n, part in blocks
        ) / len(blocks)
    if t.cancel:
        io, s = sampler.answer(b.base, "io"), sampler.answer(b.base, "s")
        change = _logit_diff(last[sl["cancel"]], io, s) - m_clean
        change_twin = _logit_diff(last[sl["cancel_twin_patched"]], io, s) - _logit_diff(last[sl["cancel_twin"]], io, s)
        sign = torch.from_numpy(1 - 2 * b.base["order"]).to(change.dtype)  # +1 ABBA, -1 BABA (the twin: the other)
        parts["cancel"] = ((change + sign * t.cancel_shift).pow(2).mean()
                           + (change_twin - sign * t.cancel_shift).pow(2).mean()) / 2
        parts["cancel_balance"] = (change + change_twin).pow(2).mean()
        rows_c, s2 = sl["cancel_corrupted"], sampler.pos["S2"]
        parts["cancel_attention"] = sum(
            -torch.log_softmax(attention_scores(model, captured[layer][rows_c], layer, head,
                                                spec.attention_targets[head_name((layer, head))][0]), dim=-1)[:, s2].mean()
            for layer, head in t.cancel)
    if t.opposing:
        parts.update(_opposing_parts(spec, sampler, b, last, m_clean, sl))
    if t.background:
        parts.update(_background_parts(spec, sampler, b, last, m_clean, sl, model, captured))
    task_rows = sl["task"]
    if t.saturated:
        hints = spec.attention_targets
        parts["saturation"] = sum(
            F.relu(t.saturation_margin - attention_margin(
                attention_scores(model, captured[layer][task_rows], layer, head, hints[head_name((layer, head))][0]),
                key_positions(sampler, b.base, hints[head_name((layer, head))][1]))).mean()
            for layer, head in t.saturated)
    if t.busy:
        parts["busy_attention"] = sum(
            -torch.log_softmax(attention_scores(model, captured[layer][task_rows], layer, head, q), dim=-1)
            .gather(1, key_positions(sampler, b.base, key)[:, None])[:, 0].mean()
            for (layer, head), q, key in t.busy)
    if t.busy and t.busy_norm:
        parts["busy_activity"] = sum(
            F.relu(t.busy_norm - _centred_rms(z_seen[layer][task_rows, q, head])) for (layer, head), q, _ in t.busy)
    return parts


def _centred_rms(z: torch.Tensor) -> torch.Tensor:
    """``sqrt(mean_b ||z_b - mean(z)||^2)`` of per-prompt vectors ``z`` ``[b, d]``: how much they vary."""
    return (z - z.mean(0, keepdim=True)).pow(2).sum(-1).mean().sqrt()


def _logit_diff(lg: torch.Tensor, a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Per row ``lg[a] - lg[s]``."""
    return lg.gather(1, a[:, None])[:, 0] - lg.gather(1, s[:, None])[:, 0]


def _negative_shift(sampler, b, patched: torch.Tensor, clean: torch.Tensor, shift: float) -> torch.Tensor:
    """Squared error of the negative heads' job: patched from another prompt (IO ``o``), the logit difference
    IO - S rises by ``shift`` and o - S falls by ``shift`` (rows where ``o`` is neither IO nor S)."""
    io, s, o = sampler.answer(b.base, "io"), sampler.answer(b.base, "s"), sampler.answer(b.other, "io")
    d_io = _logit_diff(patched, io, s) - _logit_diff(clean, io, s)
    d_o = _logit_diff(patched, o, s) - _logit_diff(clean, o, s)
    valid = ((o != io) & (o != s)).to(patched.dtype)
    err = (d_io - shift).pow(2) + (d_o + shift).pow(2)
    return (err * valid).sum() / valid.sum().clamp_min(1)
