"""Verification of a planted-circuit model: the numbers stored in its card and the checks that accept it.

On ``verify_prompts`` fresh prompts: task accuracy and mean metric; per head,
the relative drop of the mean task metric under single-head resample ablation
(the acceptance number), corrupted-prompt patching and mean ablation; the
designated circuit's faithfulness; per head, the distractor-loss increase under
mean ablation; where each circuit head attends.  :func:`evaluate_checks` turns
the numbers into pass / fail against :data:`~harness.embedded.planted.specs.THRESHOLDS`,
:func:`check_card` refuses a card that fails.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from harness.core.seeding import torch_threads
from harness.embedded.planted.samplers import fill_positions, induction_batch, induction_loss
from harness.embedded.planted.specs import THRESHOLDS, Head, PlantedRecipe, PlantedSpec, Traps, circuit_mask, head_name
from harness.embedded.planted.trainer import attention_logprobs
from harness.embedded.planted.traps import trap_checks, trap_numbers
from harness.errors import HarnessError
from harness.models.gpt import HookedGPT
from harness.data import prompts as P


def _split(model: HookedGPT, task: str, n: int, seed: int):
    from harness.data import circuits as D

    return D.ioi_split(model, n, seed) if task == "ioi" else D.greater_than_split(model, n, seed)


def _accuracy(task: str, split, logits_last: torch.Tensor) -> tuple[float, float]:
    per = split.metric.per_prompt_fn(
        logits_last if split.metric.token_ids is None else logits_last[:, split.metric.token_ids]
    )
    positive = float((per > 0).float().mean())
    if task == "ioi":  # the split's answer ids are CPU tensors: compare them where the logits are
        acc = float((logits_last.argmax(-1) == split.info["io_ids"].to(logits_last.device)).float().mean())
    else:
        acc = positive
    return acc, positive


@torch.no_grad()
def verify(model: HookedGPT, spec: PlantedSpec, recipe: PlantedRecipe | None = None,
           n_prompts: int | None = None) -> dict[str, Any]:
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
        singles = torch.zeros(L * H, L, H, dtype=torch.bool, device=model.device)
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
        circuit = circuit_mask(spec, r)
        masks = torch.stack([~circuit, torch.ones_like(circuit), torch.zeros_like(circuit)])
        out = model.ablate_many(split.clean, masks, mean_corrupt, token_ids=ids)
        m_c, m_e, m_f = (float(x) for x in metric.per_prompt_fn(out).mean(-1))
        faith = (m_c - m_e) / (m_f - m_e) if m_f != m_e else float("nan")

        base_loss, effect = _distractor_effects(model, singles, r.verify_seed + 2, split.clean.shape[1])
        traps = trap_numbers(model, spec, split, z_source, z_corrupt, mean_corrupt, clean_metric) if spec.traps else None
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
    if traps is not None:
        result["traps"] = traps
    result["checks"] = evaluate_checks(result, in_circuit, L, H, spec.traps)
    result["passed"] = all(c["passed"] for c in result["checks"].values())
    return result


def _distractor_effects(model: HookedGPT, singles: torch.Tensor, seed: int, seq: int) -> tuple[float, list[float]]:
    """The distractor's induction loss, and its increase when each head (``singles[i]``) is mean-ablated."""
    rng = np.random.default_rng(seed)
    dist, dist_mask = induction_batch(rng, 256, seq, len(model.tokenizer))  # drawn on the CPU
    dist, dist_mask = dist.to(model.device), dist_mask.to(model.device)
    base_loss = float(induction_loss(model.logits(dist), dist, dist_mask))
    mean_d = model.mean_z(dist)
    effect = []
    for i in range(singles.shape[0]):
        lg = model.run_with_heads_replaced(dist, singles[i], mean_d)
        effect.append(float(induction_loss(lg, dist, dist_mask)) - base_loss)
    return base_loss, effect


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
        probs = attention_logprobs(model.model, captured[layer], layer, head).exp()  # [b, q, k]
        entry: dict[str, Any] = {"from_last": [round(float(p), 3) for p in probs[:, -1].mean(0)]}
        hint = spec.attention_targets.get(head_name((layer, head)))
        if hint is not None:
            query, key = hint
            keys = _hint_keys_from_tokens(spec, tokens, key)
            entry["hint"] = [query, key]
            keys = keys.to(probs.device)
            entry["hint_attention"] = round(float(probs[:, query].gather(1, keys[:, None]).mean()), 3)
        out[head_name((layer, head))] = entry
    return out


def _hint_keys_from_tokens(spec: PlantedSpec, tokens: torch.Tensor, key) -> torch.Tensor:
    """Per-prompt key positions of an attention hint, read off IOI prompts (S1 is where S2's name occurs)."""
    if isinstance(key, int):
        return torch.full((tokens.shape[0],), key, dtype=torch.long, device=tokens.device)
    pos = fill_positions(P.IOI_TEMPLATES[0])
    a, b, s2 = pos["A"][0], pos["B"][0], pos["S2"][0]
    s1 = torch.where(tokens[:, a] == tokens[:, s2], a, b)
    return {"s1": s1, "io": a + b - s1, "s2": torch.full_like(s1, s2)}[key]


def evaluate_checks(v: dict[str, Any], circuit: set[Head], L: int, H: int,
                    traps: Traps | None = None) -> dict[str, dict[str, Any]]:
    """Each acceptance check on verification numbers ``v``: ``{name: {passed, value, threshold, detail}}``.

    With ``traps``, the negative, redundant and sign-cancelling heads (and the opposing pairs, outside the
    circuit: not by the non-circuit heads' maximum drop) are checked by their own rules
    (:func:`harness.embedded.planted.traps.trap_checks`) instead of the circuit heads' minimum drop.
    """
    t = THRESHOLDS
    heads = [(layer, head) for layer in range(L) for head in range(H)]
    drop = v["resample_drop"]
    exempt = set(traps.negative) | {h for g in traps.redundant for h in g} | set(traps.cancel) if traps else set()
    opposing = {h for pair in traps.opposing for h in pair} if traps else set()  # checked by their own rules
    circ = [(h, drop[h[0]][h[1]]) for h in heads if h in circuit and h not in exempt]
    non = [(h, drop[h[0]][h[1]]) for h in heads if h not in circuit and h not in opposing]
    eff = [(h, v["distractor_effect"][h[0]][h[1]]) for h in heads if h not in circuit]
    worst_c = min(circ, key=lambda x: x[1]) if circ else ((-1, -1), float("nan"))
    worst_n = max(non, key=lambda x: abs(x[1])) if non else ((-1, -1), 0.0)
    best_e = max(eff, key=lambda x: x[1]) if eff else ((-1, -1), float("nan"))
    checks = {
        "accuracy": {
            "passed": bool(v["accuracy"] >= t["accuracy"] and v["mean_metric"] > 0),
            "value": v["accuracy"], "threshold": t["accuracy"],
            "detail": f"task accuracy {v['accuracy']:.3f} (>= {t['accuracy']}), mean metric {v['mean_metric']:.3f} (> 0)",
        },
        "circuit_heads_matter": {
            "passed": bool(circ and worst_c[1] >= t["circuit_min_drop"]),
            "value": worst_c[1], "threshold": t["circuit_min_drop"],
            "detail": f"smallest resample drop of a circuit head: {head_name(worst_c[0])} {worst_c[1]:.3f} "
                      f"(>= {t['circuit_min_drop']})",
        },
        "noncircuit_heads_negligible": {
            "passed": bool(abs(worst_n[1]) <= t["noncircuit_max_abs_drop"]),
            "value": worst_n[1], "threshold": t["noncircuit_max_abs_drop"],
            "detail": f"largest |resample drop| of a non-circuit head: {head_name(worst_n[0])} {worst_n[1]:.3f} "
                      f"(<= {t['noncircuit_max_abs_drop']})",
        },
        "distractor_uses_noncircuit_heads": {
            "passed": bool(eff and best_e[1] >= t["distractor_min_effect"]),
            "value": best_e[1], "threshold": t["distractor_min_effect"],
            "detail": f"largest induction-loss increase from a non-circuit head: {head_name(best_e[0])} "
                      f"{best_e[1]:.3f} nats (>= {t['distractor_min_effect']})",
        },
    }
    if traps:
        checks.update(trap_checks(v, traps, circuit))
    return checks


def check_card(card: dict[str, Any], where: str = "model") -> None:
    """Refuse (HarnessError naming the failed check) a card whose verification numbers fail a threshold."""
    v = card.get("verification") if isinstance(card, dict) else None
    if not isinstance(v, dict):
        raise HarnessError(f"{where}: its model card has no verification numbers; rebuild it (harness models build)")
    try:
        circuit = {tuple(int(x) for x in h) for h in card["circuit_heads"]}
        drop = v["resample_drop"]
        checks = evaluate_checks(v, circuit, len(drop), len(drop[0]), Traps.from_dict(card.get("traps")))
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise HarnessError(f"{where}: its model card's verification numbers are incomplete ({type(e).__name__}: {e})") from None
    failed = [(name, c) for name, c in checks.items() if not c["passed"]]
    if failed:
        raise HarnessError(
            f"{where} failed verification and is refused: "
            + "; ".join(f"check {name!r} failed: {c['detail']}" for name, c in failed)
        )
