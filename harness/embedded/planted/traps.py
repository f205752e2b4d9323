"""Verification of the planted traps: the numbers in the card's ``verification.traps`` and their checks.

Every number comes from an intervention or a reading no scored circuit method uses as such (joint
ablations, attention patterns and logit margins, the per-head activity the activity-based methods see,
and the linear estimate compared with the real ablation):

- ``redundant`` (per group) and ``busy_joint`` (the busy heads as one group): each head's single drop
  and the group's joint drop (resample, corrupted-prompt patching, mean ablation); for a redundant
  group also ``minimal_*_drop``: each head ablated together with every non-circuit head, i.e. the
  circuit without that head (each such circuit must be faithful: the ground truth is their union);
- ``activity`` / ``activity_last``: per head, the mean over prompts of ``||z_clean - z_corrupt||`` of its
  output mean-pooled over positions (what the discrete-SAE method encodes) / at the last position;
  ``activity_result``: the same for what it writes to the residual stream (pooled ``z @ W_O``);
- ``linear_estimate_drop``: per head, the first-order estimate of its corrupted-patch drop,
  ``sum (z_clean - z_corrupt) . dM/dz / M`` (what attribution patching computes) next to the real
  ``corrupted_patch_drop`` of the main grid;
- ``opposing`` (per opposing pair): each head's single drop and the pair's joint drop (resample,
  corrupted-prompt patching, mean ablation); its check weighs the single drops against the largest circuit
  head's drop under the same ablation, read from the main grids (the single drops must outweigh it for the
  trap to bite);
- ``background_joint`` (background heads): each background head's single drop and all of them together
  (resample, corrupted-prompt patching, mean ablation), and ``via_below_background`` (with via heads): on
  random sets of as many prompts as a task fits on, the fraction where every via head's |mean linear
  estimate| is below every background head's (what makes attribution patching rank them under the
  background);
- ``cancel`` (per sign-cancelling head) and ``per_prompt_abs_drop``: per-prompt drops
  ``d_i = (m_i(clean) - m_i(ablated)) / m(clean)`` (``m`` the mean metric over prompts), under resample,
  corrupted-prompt patching and mean ablation: per head the mean over prompts of ``|d_i|``, and per
  cancelling head also the mean drop (what the mean metric sees), the mean on ABBA and on BABA prompts,
  the fraction of prompts whose ``d_i`` has the order's sign (+ on ABBA, - on BABA) and how many
  non-circuit heads have a larger ``|mean resample drop|``;
- ``path_attention`` (sharpened traps): each saturated head's attention on its key along the straight path
  from the corrupted to the clean outputs of each via head's layer (:data:`PATH_ALPHAS`): how wide the stretch
  of the path over which it switches, per prompt;
- ``attention``: for the busy and saturated heads, the mean attention on their hint's key, and for the
  saturated heads the attention-logit margin of that key over every other key (mean and 5th percentile).

:func:`trap_checks` turns them into pass / fail against :data:`TRAP_THRESHOLDS`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from harness.embedded.planted.specs import Head, PlantedSpec, Traps, head_name, heads_mask
from harness.embedded.planted.trainer import attention_logprobs
from harness.embedded.planted.trap_training import attention_margin, attention_scores
from harness.models.gpt import HookedGPT

#: Acceptance thresholds of the traps (in code, not in the card, so a card cannot lower them).
TRAP_THRESHOLDS = {
    "negative_max_drop": -0.1,  # a negative head's resample ablation raises the metric by >= 10%
    "redundant_max_single_drop": 0.05,  # one redundant head ablated: |drop| as small as a non-circuit head's
    "redundant_min_joint_drop": 0.3,  # the group ablated together: as large as a circuit head's
    "redundant_max_minimal_drop": 0.1,  # the circuit without one redundant head (all else ablated) is faithful
    "busy_min_attention": 0.8,  # a busy head attends to its hint's key
    "busy_min_relative_activity": 0.5,  # its activity >= half the circuit heads' mean activity
    "busy_max_joint_drop": 0.05,  # every busy head ablated together: as inert as one non-circuit head
    "via_min_drop": 0.3,  # a head acting through a saturated head: its corrupted-patch drop
    "via_max_linear_ratio": 0.1,  # |linear estimate| <= 10% of that drop
    "cancel_min_abs_drop": 0.3,  # a cancelling head: mean over prompts of |per-prompt resample drop|
    "cancel_min_abs_drop_other": 0.2,  # the same under corrupted-prompt patching and mean ablation
    # fraction of prompts whose drop has the order's sign, under each ablation (resample: ~1/24 of the prompts get
    # a source whose copied name is their own, a drop ~0 of either sign, so 0.95 would be at the edge by design)
    "cancel_min_sign_agreement": 0.9,
    "cancel_max_mean_drop": 0.05,  # |drop of the mean metric| under each ablation: as small as a non-circuit head's
    "cancel_noncircuit_max_abs_drop": 0.1,  # every non-circuit head: mean |per-prompt resample drop|
    # an opposing head alone: its drop (suppressor) or minus it (promoter), under each ablation, at least this and
    # at least the largest circuit head's drop under that ablation (so that single-head effects rank it first)
    "opposing_min_single_drop": 1.0,
    "opposing_max_joint_drop": 0.05,  # the pair ablated together: as inert as one non-circuit head
    # a sharpened saturated head: the mean fraction of the path from a via layer's corrupted to clean outputs over which
    # it switches (attention on its key in (1e-6, 1 - 1e-6)): a tenth of EAP-IG's point spacing at 5 steps (0.2)
    "sharpen_max_switch_width": 0.02,
    # a background head alone: its drop (even positions) or minus it (odd), under each ablation, at least this (its
    # target is background_shift, 0.025): a small effect of a consistent sign
    "background_min_signed_drop": 0.01,
    "background_min_attention": 0.5,  # a background head attends from the last position to S2
    "background_max_joint_drop": 0.05,  # every background head ablated together: as inert as one non-circuit head
    # the fraction of random prompt sets of a task's size (VIA_SUBSET prompts of the verification split) on which
    # every via head's |mean linear estimate| is below every background head's: attribution patching then ranks the
    # via heads under the background on (almost) any prompt set
    "via_min_below_background": 0.95,
}


def _round(x: float) -> float:
    return round(float(x), 6)


def _grid(t: torch.Tensor) -> list[list[float]]:
    return [[_round(v) for v in row] for row in t.tolist()]


def _attention_inputs(model: HookedGPT, tokens: torch.Tensor, z_fn=None) -> dict[int, torch.Tensor]:
    """Each layer's attention input (after ``ln1``) on ``tokens`` (``z_fn``: the forward's head-output hook)."""
    captured: dict[int, torch.Tensor] = {}
    hooks = [block.ln1.register_forward_hook(lambda mod, inp, out, layer=layer: captured.__setitem__(layer, out))
             for layer, block in enumerate(model.model.blocks)]
    try:
        model.model(tokens, z_fn)
    finally:
        for hook in hooks:
            hook.remove()
    return captured


def _hint_keys(tokens: torch.Tensor, key: Any) -> torch.Tensor:
    from harness.embedded.planted.verifier import _hint_keys_from_tokens

    return _hint_keys_from_tokens(None, tokens, key)


def _head_attention(model: HookedGPT, captured, tokens, head: Head, query: int, key: Any,
                    margin: bool) -> dict[str, float]:
    layer, h = head
    keys = _hint_keys(tokens, key).to(tokens.device)
    probs = attention_logprobs(model.model, captured[layer], layer, h).exp()[:, query]
    out = {"query": query, "key": key, "attention": _round(probs.gather(1, keys[:, None]).mean())}
    if margin:
        m = attention_margin(attention_scores(model.model, captured[layer], layer, h, query), keys)
        out["margin_mean"] = _round(m.mean())
        out["margin_p05"] = _round(torch.quantile(m.double(), 0.05))
    return out


@torch.no_grad()
def _joint_drops(model: HookedGPT, split, groups, replacements: dict[str, Any], clean_metric: float, r,
                 outside: torch.Tensor | None = None) -> list[dict]:
    """Per group of heads: each head's single drop and the joint drop, under each replacement; with
    ``outside`` (a mask), also each head's drop when it is ablated together with every head of ``outside``
    (``minimal_*``: the circuit without that head, everything else ablated)."""
    out = []
    for group in groups:
        sets = [heads_mask(group, r)] + [heads_mask((h,), r) for h in group]
        sets += [heads_mask((h,), r) | outside for h in group] if outside is not None else []
        masks = torch.stack(sets).to(model.device)
        entry: dict[str, Any] = {"heads": [list(h) for h in group]}
        for name, rep in replacements.items():
            lg = model.ablate_many(split.clean, masks, rep, token_ids=split.metric.token_ids)
            drops = (1 - split.metric.per_prompt_fn(lg).mean(-1) / clean_metric).tolist()
            entry[f"joint_{name}_drop"] = _round(drops[0])
            entry[f"single_{name}_drop"] = [_round(d) for d in drops[1:1 + len(group)]]
            if outside is not None:
                entry[f"minimal_{name}_drop"] = [_round(d) for d in drops[1 + len(group):]]
        out.append(entry)
    return out


def trap_numbers(model: HookedGPT, spec: PlantedSpec, split, z_source, z_corrupt, mean_corrupt,
                 clean_metric: float) -> dict[str, Any]:
    """The trap verification numbers of ``spec`` on ``split`` (module docstring)."""
    t, r = spec.traps, spec.recipe
    out: dict[str, Any] = {}
    reps = {"resample": z_source, "corrupted_patch": z_corrupt, "mean_ablation": mean_corrupt}
    if t.redundant:
        outside = ~heads_mask(spec.circuit, r)
        out["redundant"] = _joint_drops(model, split, t.redundant, reps, clean_metric, r, outside)
    if t.busy:
        out["busy_joint"] = _joint_drops(model, split, [tuple(h for h, _, _ in t.busy)], reps, clean_metric, r)[0]
    if t.cancel:
        out.update(_cancel_numbers(model, spec, split, reps, clean_metric))
    if t.opposing:
        out["opposing"] = _joint_drops(model, split, t.opposing, reps, clean_metric, r)
    if t.background:
        out["background_joint"] = _joint_drops(model, split, [t.background], reps, clean_metric, r)[0]
    z_clean, grad = model.head_gradients(split.clean, split.metric.from_logits)
    with torch.no_grad():
        diff = z_clean - z_corrupt
        out["activity"] = _grid(diff.mean(dim=1).norm(dim=-1).mean(dim=0))
        out["activity_last"] = _grid(diff[:, -1].norm(dim=-1).mean(dim=0))
        out["activity_result"] = _grid(model.head_results(diff.mean(dim=1)).norm(dim=-1).mean(dim=0))
        out["linear_estimate_drop"] = _grid(torch.einsum("bslhd,bslhd->lh", diff, grad) / clean_metric)
        if t.via and t.background:
            out["via_below_background"] = _via_below_background(torch.einsum("bslhd,bslhd->blh", diff, grad), t)
        captured = _attention_inputs(model, split.clean)
        attention = {}
        for head, query, key in t.busy:
            attention[head_name(head)] = _head_attention(model, captured, split.clean, head, query, key, False)
        for head in t.saturated:
            query, key = spec.attention_targets[head_name(head)]
            attention[head_name(head)] = _head_attention(model, captured, split.clean, head, query, key, True)
        for head in t.background:
            attention[head_name(head)] = _head_attention(model, captured, split.clean, head, split.clean.shape[1] - 1,
                                                         "s2", False)
        if t.sharpen:
            out["path_attention"] = _path_attention(model, spec, split, z_clean.detach(), z_corrupt)
    if attention:
        out["attention"] = attention
    return out


#: Prompts per random subset in ``via_below_background`` (the circuits tasks' ``n_fit``) and how many subsets.
VIA_SUBSET, VIA_SUBSETS, VIA_SUBSET_SEED = 32, 1000, 0


def _via_below_background(terms: torch.Tensor, t: Traps) -> dict[str, Any]:
    """On random subsets of the prompts (``VIA_SUBSETS`` of ``VIA_SUBSET``, seeded): the fraction on which every via
    head's |mean linear estimate| is below every background head's.  ``terms`` ``[b, L, H]``: each prompt's term of
    the linear estimate."""
    rng = np.random.default_rng(VIA_SUBSET_SEED)
    per = terms.double().cpu().numpy()
    via, bg = [tuple(h) for h in t.via], [tuple(h) for h in t.background]
    size, below = min(VIA_SUBSET, len(per)), 0  # (a verification split smaller than a task's: all of it)
    for _ in range(VIA_SUBSETS):
        m = np.abs(per[rng.choice(len(per), size, replace=False)].mean(0))
        below += max(m[h] for h in via) < min(m[h] for h in bg)
    return {"fraction": _round(below / VIA_SUBSETS), "subset": size, "subsets": VIA_SUBSETS}


#: Points of the straight path from the corrupted to the clean outputs of one layer where ``path_attention`` is read.
PATH_ALPHAS = tuple(i / 40 for i in range(41))
#: A softmax is "switching" while its attention on the key is in (band, 1 - band): the gradient through it is then
#: at least ~band times its largest (p (1 - p)); outside, gradient methods see ~nothing of the switch.
SWITCH_BAND = 1e-6


def _path_attention(model: HookedGPT, spec: PlantedSpec, split, z_clean: torch.Tensor,
                    z_corrupt: torch.Tensor) -> dict[str, dict[str, float]]:
    """Per layer of a ``via`` head and saturated head: that head's attention on its hint's key with the layer's head
    outputs at ``z_corrupt + alpha (z_clean - z_corrupt)`` (every other layer computed normally), alpha on the grid
    :data:`PATH_ALPHAS`: ``switch_width``, the mean over prompts of the fraction of the path where the attention is
    in (:data:`SWITCH_BAND`, 1 - :data:`SWITCH_BAND`) (how wide a stretch the softmax's switch takes, against EAP-IG's point spacing), and
    ``attention_at``, the mean attention at alpha = 0, 0.2, 0.4, ..., 1."""
    out: dict[str, dict[str, float]] = {}
    for layer in sorted({h[0] for h in spec.traps.via}):
        per_alpha = []
        for alpha in PATH_ALPHAS:
            z_a = z_corrupt[:, :, layer] + alpha * (z_clean[:, :, layer] - z_corrupt[:, :, layer])
            captured = _attention_inputs(model, split.clean, lambda lay, z, z_a=z_a, at=layer: z_a.to(z.dtype) if lay == at else z)
            per_alpha.append([_key_attention(model, captured, split.clean, head, *spec.attention_targets[head_name(head)])
                              for head in spec.traps.saturated])
        for i, head in enumerate(spec.traps.saturated):
            att = torch.stack([a[i] for a in per_alpha])  # [alphas, prompts]
            switching = ((att > SWITCH_BAND) & (att < 1 - SWITCH_BAND)).double().mean(0)
            out[f"layer {layer} -> {head_name(head)}"] = {
                "switch_width": _round(switching.mean()),
                "attention_at": {f"{a:.1f}": _round(att[j].mean()) for j, a in enumerate(PATH_ALPHAS) if j % 8 == 0},
            }
    return out


def _key_attention(model: HookedGPT, captured, tokens, head: Head, query: int, key: Any) -> torch.Tensor:
    """Per prompt ``[b]``: head ``head``'s attention from ``query`` on its hint's key."""
    keys = _hint_keys(tokens, key).to(tokens.device)
    probs = attention_logprobs(model.model, captured[head[0]], head[0], head[1]).exp()[:, query]
    return probs.gather(1, keys[:, None])[:, 0]


@torch.no_grad()
def _cancel_numbers(model: HookedGPT, spec: PlantedSpec, split, replacements: dict[str, Any],
                    clean_metric: float) -> dict[str, Any]:
    """Per-prompt drops of every head (``per_prompt_abs_drop``) and the cancelling heads' summary (``cancel``)."""
    r = spec.recipe
    L, H = r.n_layers, r.n_heads
    masks = torch.zeros(L * H + 1, L, H, dtype=torch.bool)
    for i in range(L * H):
        masks[i + 1, i // H, i % H] = True
    masks = masks.to(model.device)
    sign = torch.tensor([1.0 if o == "ABBA" else -1.0 for o in split.info["orders"]], dtype=torch.float64)
    abba = sign > 0
    circuit = {tuple(h) for h in spec.circuit}
    abs_grids, heads = {}, {head_name(h): {"head": list(h)} for h in spec.traps.cancel}
    for name, rep in replacements.items():
        per = split.metric.per_prompt_fn(
            model.ablate_many(split.clean, masks, rep, token_ids=split.metric.token_ids)).double().cpu()
        d = (per[0:1] - per[1:]) / clean_metric  # [L*H, n]
        abs_grids[name] = _grid(d.abs().mean(-1).view(L, H))
        mean = d.mean(-1).view(L, H)
        for h in spec.traps.cancel:
            di = d[h[0] * H + h[1]]
            noncircuit_above = sum(1 for l in range(L) for k in range(H)
                                   if (l, k) not in circuit and abs(float(mean[l, k])) >= abs(float(mean[h])))
            heads[head_name(h)][name] = {
                "abs_drop": _round(di.abs().mean()), "mean_drop": _round(di.mean()),
                "abba_drop": _round(di[abba].mean()), "baba_drop": _round(di[~abba].mean()),
                "sign_agreement": _round((torch.sign(di) == sign).double().mean()),
                "noncircuit_heads_above": noncircuit_above,
            }
    return {"per_prompt_abs_drop": abs_grids, "cancel": heads}


def _check(passed: bool, value: float, threshold: float, detail: str) -> dict[str, Any]:
    return {"passed": bool(passed), "value": value, "threshold": threshold, "detail": detail}


def _cancel_checks(tv: dict[str, Any], circuit: set[Head]) -> dict[str, dict[str, Any]]:
    """The sign-cancellation trap's checks on ``v["traps"]`` (``tv``): each prompt changes, the mean does not."""
    th, checks = TRAP_THRESHOLDS, {}
    cancel = tv["cancel"]
    others = ("corrupted_patch", "mean_ablation")
    h, value = min(((k, c["resample"]["abs_drop"]) for k, c in cancel.items()), key=lambda x: x[1])
    checks["cancel_heads_change_each_prompt"] = _check(
        value >= th["cancel_min_abs_drop"], value, th["cancel_min_abs_drop"],
        f"smallest mean |per-prompt resample drop| of a cancelling head: {h} {value:.3f} "
        f"(>= {th['cancel_min_abs_drop']})")
    h, rep, value = min(((k, o, c[o]["abs_drop"]) for k, c in cancel.items() for o in others), key=lambda x: x[2])
    checks["cancel_heads_change_each_prompt_other_ablations"] = _check(
        value >= th["cancel_min_abs_drop_other"], value, th["cancel_min_abs_drop_other"],
        f"smallest mean |per-prompt drop| of a cancelling head under corrupted patching or mean ablation: "
        f"{h} {rep} {value:.3f} (>= {th['cancel_min_abs_drop_other']})")
    h, rep, value = min(((k, o, c[o]["sign_agreement"]) for k, c in cancel.items() for o in ("resample", *others)),
                        key=lambda x: x[2])
    checks["cancel_signs_follow_order"] = _check(
        value >= th["cancel_min_sign_agreement"], value, th["cancel_min_sign_agreement"],
        f"smallest fraction of prompts whose drop has the order's sign (+ ABBA, - BABA): {h} {rep} "
        f"{value:.3f} (>= {th['cancel_min_sign_agreement']})")
    h, rep, value = max(((k, o, c[o]["mean_drop"]) for k, c in cancel.items()
                         for o in ("resample", *others)), key=lambda x: abs(x[2]))
    checks["cancel_mean_effect_negligible"] = _check(
        abs(value) <= th["cancel_max_mean_drop"], value, th["cancel_max_mean_drop"],
        f"largest |drop of the mean metric| of a cancelling head: {h} {rep} {value:.3f} "
        f"(<= {th['cancel_max_mean_drop']})")
    grid = tv["per_prompt_abs_drop"]["resample"]
    h, value = max((((l, k), grid[l][k]) for l in range(len(grid)) for k in range(len(grid[0]))
                    if (l, k) not in circuit), key=lambda x: x[1])
    checks["noncircuit_heads_change_no_prompt"] = _check(
        value <= th["cancel_noncircuit_max_abs_drop"], value, th["cancel_noncircuit_max_abs_drop"],
        f"largest mean |per-prompt resample drop| of a non-circuit head: {head_name(h)} {value:.3f} "
        f"(<= {th['cancel_noncircuit_max_abs_drop']})")
    return checks


def _opposing_checks(v: dict[str, Any], circuit: set[Head]) -> dict[str, dict[str, Any]]:
    """The opposing pairs' checks: each head alone outweighs every circuit head (the largest circuit head's drop
    under the same ablation, from the main grids ``v[<ablation>_drop]``), the pair together is inert."""
    th, checks, reps, tv = TRAP_THRESHOLDS, {}, ("resample", "corrupted_patch", "mean_ablation"), v["traps"]
    circuit_max = {rep: max(v[f"{rep}_drop"][h[0]][h[1]] for h in circuit) for rep in reps}
    # per head and ablation: its signed drop (suppressor +, promoter -) and the bar it must clear
    singles = [(tuple(g["heads"][i]), rep, sign * g[f"single_{rep}_drop"][i],
                max(th["opposing_min_single_drop"], circuit_max[rep]))
               for g in tv["opposing"] for i, sign in enumerate((1.0, -1.0)) for rep in reps]
    h, rep, value, bar = min(singles, key=lambda x: x[2] - x[3])
    checks["opposing_singles_outweigh_circuit"] = _check(
        value >= bar, value, bar,
        f"smallest single drop of an opposing head (suppressor: drop, promoter: minus the drop) over resample, "
        f"corrupted patching and mean ablation, against max({th['opposing_min_single_drop']}, the largest circuit "
        f"head's drop under the same ablation): {head_name(h)} {rep} {value:.3f} (>= {bar:.3f})")
    g, rep = max(((g, rep) for g in tv["opposing"] for rep in reps), key=lambda x: abs(x[0][f"joint_{x[1]}_drop"]))
    value = g[f"joint_{rep}_drop"]
    checks["opposing_pairs_inert"] = _check(
        abs(value) <= th["opposing_max_joint_drop"], value, th["opposing_max_joint_drop"],
        f"largest |drop| with an opposing pair ablated together: {'+'.join(head_name(tuple(x)) for x in g['heads'])} "
        f"{rep} {value:.3f} (<= {th['opposing_max_joint_drop']})")
    return checks


def _background_checks(v: dict[str, Any], traps: Traps) -> dict[str, dict[str, Any]]:
    """The background's checks: each head moves the metric a little with its sign, together they do not, and (with
    ``via`` heads) the via heads' linear estimates lie well below every background head's."""
    th, tv, checks = TRAP_THRESHOLDS, v["traps"], {}
    bg, reps = tv["background_joint"], ("resample", "corrupted_patch", "mean_ablation")
    signed = [(sign * bg[f"single_{rep}_drop"][i], tuple(h), rep)
              for i, (sign, h) in enumerate(zip(traps.background_signs(), bg["heads"])) for rep in reps]
    value, h, rep = min(signed)
    checks["background_heads_move_metric"] = _check(
        value >= th["background_min_signed_drop"], value, th["background_min_signed_drop"],
        f"smallest signed single drop of a background head (suppressor of S: drop, promoter: minus the drop) over "
        f"resample, corrupted patching and mean ablation: {head_name(h)} {rep} {value:.3f} "
        f"(>= {th['background_min_signed_drop']})")
    att = min((tv["attention"][head_name(h)]["attention"], h) for h in traps.background)
    checks["background_heads_attend"] = _check(
        att[0] >= th["background_min_attention"], att[0], th["background_min_attention"],
        f"smallest attention from the last position on S2 of a background head: {head_name(att[1])} {att[0]:.3f} "
        f"(>= {th['background_min_attention']})")
    value, rep = max(((bg[f"joint_{rep}_drop"], rep) for rep in reps), key=lambda x: abs(x[0]))
    checks["background_jointly_inert"] = _check(
        abs(value) <= th["background_max_joint_drop"], value, th["background_max_joint_drop"],
        f"largest |drop| with every background head ablated together: {rep} {value:.3f} "
        f"(<= {th['background_max_joint_drop']})")
    if traps.via:
        value = tv["via_below_background"]["fraction"]
        checks["via_below_background"] = _check(
            value >= th["via_min_below_background"], value, th["via_min_below_background"],
            f"fraction of random sets of {VIA_SUBSET} prompts on which every via head's |mean linear estimate| is "
            f"below every background head's: {value:.3f} (>= {th['via_min_below_background']})")
    return checks


def trap_checks(v: dict[str, Any], traps: Traps, circuit: set[Head]) -> dict[str, dict[str, Any]]:
    """Each trap's acceptance checks on verification numbers ``v`` (``v["traps"]`` and the main grids)."""
    th, tv, checks = TRAP_THRESHOLDS, v["traps"], {}
    drop, corrupted = v["resample_drop"], v["corrupted_patch_drop"]
    if traps.negative:
        worst = max(traps.negative, key=lambda h: drop[h[0]][h[1]])
        value = drop[worst[0]][worst[1]]
        checks["negative_heads_raise_metric"] = _check(
            value <= th["negative_max_drop"], value, th["negative_max_drop"],
            f"largest resample drop of a negative head: {head_name(worst)} {value:.3f} (<= {th['negative_max_drop']})")
    if traps.redundant:
        singles = [(tuple(g["heads"][i]), d) for g in tv["redundant"] for i, d in enumerate(g["single_resample_drop"])]
        h, value = max(singles, key=lambda x: abs(x[1]))
        checks["redundant_singles_negligible"] = _check(
            abs(value) <= th["redundant_max_single_drop"], value, th["redundant_max_single_drop"],
            f"largest |single resample drop| of a redundant head: {head_name(h)} {value:.3f} "
            f"(<= {th['redundant_max_single_drop']})")
        minimal = [(tuple(g["heads"][i]), d) for g in tv["redundant"] for i, d in enumerate(g["minimal_resample_drop"])]
        h, value = max(minimal, key=lambda x: abs(x[1]))
        checks["redundant_minimal_circuits_faithful"] = _check(
            abs(value) <= th["redundant_max_minimal_drop"], value, th["redundant_max_minimal_drop"],
            f"largest |resample drop| with a redundant head and every non-circuit head ablated (the circuit "
            f"without it): {head_name(h)} {value:.3f} (<= {th['redundant_max_minimal_drop']})")
        g = min(tv["redundant"], key=lambda g: g["joint_resample_drop"])
        value = g["joint_resample_drop"]
        checks["redundant_joint_matters"] = _check(
            value >= th["redundant_min_joint_drop"], value, th["redundant_min_joint_drop"],
            f"smallest joint resample drop of a redundant group: {'+'.join(head_name(tuple(x)) for x in g['heads'])} "
            f"{value:.3f} (>= {th['redundant_min_joint_drop']})")
    if traps.busy:
        act = np.array(tv["activity"])
        circ_mean = float(np.mean([act[h] for h in circuit]))
        rel = min((float(act[h]) / max(circ_mean, 1e-12), h) for h, _, _ in traps.busy)
        att = min((tv["attention"][head_name(h)]["attention"], h) for h, _, _ in traps.busy)
        checks["busy_heads_attend"] = _check(
            att[0] >= th["busy_min_attention"], att[0], th["busy_min_attention"],
            f"smallest hint attention of a busy head: {head_name(att[1])} {att[0]:.3f} (>= {th['busy_min_attention']})")
        joint = tv["busy_joint"]["joint_resample_drop"]
        checks["busy_heads_inert"] = _check(
            abs(joint) <= th["busy_max_joint_drop"], joint, th["busy_max_joint_drop"],
            f"|resample drop| with every busy head ablated together: {joint:.3f} (<= {th['busy_max_joint_drop']})")
        checks["busy_heads_active"] = _check(
            rel[0] >= th["busy_min_relative_activity"], rel[0], th["busy_min_relative_activity"],
            f"smallest activity of a busy head relative to the circuit heads' mean: {head_name(rel[1])} "
            f"{rel[0]:.3f} (>= {th['busy_min_relative_activity']})")
    if traps.cancel:
        checks.update(_cancel_checks(tv, circuit))
    if traps.opposing:
        checks.update(_opposing_checks(v, circuit))
    if traps.background:
        checks.update(_background_checks(v, traps))
    if traps.sharpen:
        path, value = max(((p, a["switch_width"]) for p, a in tv["path_attention"].items()), key=lambda x: x[1])
        checks["sharpened_switch_narrow"] = _check(
            value <= th["sharpen_max_switch_width"], value, th["sharpen_max_switch_width"],
            f"largest mean fraction of the corrupted -> clean path of a via head's layer over which a sharpened "
            f"saturated head's attention on its key is in (1e-6, 1 - 1e-6): {path} {value:.3f} "
            f"(<= {th['sharpen_max_switch_width']})")
    if traps.via:
        lin = tv["linear_estimate_drop"]
        worst_drop = min((corrupted[h[0]][h[1]], h) for h in traps.via)
        ratio = max((abs(lin[h[0]][h[1]]) / max(abs(corrupted[h[0]][h[1]]), 1e-12), h) for h in traps.via)
        checks["via_heads_matter"] = _check(
            worst_drop[0] >= th["via_min_drop"], worst_drop[0], th["via_min_drop"],
            f"smallest corrupted-patch drop of a head acting through a saturated head: {head_name(worst_drop[1])} "
            f"{worst_drop[0]:.3f} (>= {th['via_min_drop']})")
        checks["saturation_hides_gradient"] = _check(
            ratio[0] <= th["via_max_linear_ratio"], ratio[0], th["via_max_linear_ratio"],
            f"largest |linear estimate| / corrupted-patch drop of such a head: {head_name(ratio[1])} "
            f"{ratio[0]:.3f} (<= {th['via_max_linear_ratio']})")
    return checks
