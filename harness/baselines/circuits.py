"""Reference circuit-finding methods every circuit method is measured against (DESIGN.md section 2).

All score attention heads, ``[n_layers, n_heads]``, higher = more likely in the
circuit, from the task's *fit* prompts only (``data.clean`` / ``data.corrupted``,
paired row by row) and its metric (``data.metric``, a
:class:`~harness.protocols.circuits.LastTokenMetric`: the mean over prompts of
a per-prompt quantity read at the last position, higher = task done better).

- ``act-patch-mean`` / ``act-patch-resample``: single-head activation patching
  (the expensive reference), batched through :meth:`HookedModel.ablate_many`;
  :func:`act_patch_loop` is the plain per-head loop it must agree with.
- ``eap``: attribution patching at node level, 2 forward + 1 backward passes.
- ``eap-ig``: integrated-gradients attribution patching (EAP-IG), on each
  layer's head outputs (see :class:`EAPIG` for how and why this differs from
  Hanna et al.'s input-embedding interpolation).
- ``acdc``: ACDC-style greedy pruning of heads (node level), with its own circuit.
- ``activity-diff``: how much each head's ``z`` changes between the clean and the corrupted prompt
  (activity, not effect), 2 forward passes.
- ``random``: seeded random scores, the chance line.

Signs: the *signed effect* of head ``h`` is ``m(clean) - m(clean with h patched)``
(positive = the head helps the task).  Ground-truth circuits contain heads that
hurt the task too (negative name movers in IOI), so by default every method
ranks heads by the magnitude of their effect (``absolute=True``).
"""

from __future__ import annotations

import numpy as np
import torch

from harness.models.base import HookedModel
from harness.baselines.circuit_mlps import mlp_eap_ig_scores, mlp_eap_scores, mlp_patch_effects
from harness.protocols.circuits import REPLACEMENTS, CircuitData, CircuitMethod, patch_replacement  # noqa: F401
from harness.core.registry import register_method

#: Largest ablate_many output (sets x prompts x logit columns) produced at once: 256 MB in float32.
MAX_OUTPUT_ELEMENTS = 2**26


# --------------------------------------------------------------------- helpers
def _to_numpy(scores: torch.Tensor) -> np.ndarray:
    return scores.detach().to("cpu", torch.float64).numpy()


def single_head_masks(n_layers: int, n_heads: int, device=None) -> torch.Tensor:
    """One mask per head, ``[n_layers * n_heads, n_layers, n_heads]`` (set ``i`` = head ``divmod(i, n_heads)``)."""
    n = n_layers * n_heads
    return torch.eye(n, dtype=torch.bool, device=device).reshape(n, n_layers, n_heads)


@torch.no_grad()
def act_patch_batched(model: HookedModel, data: CircuitData, replacement) -> np.ndarray:
    """Signed single-head patching effects ``m(clean) - m(head patched)``, ``[L, H]`` float64.

    One :meth:`~HookedModel.ablate_many` call over ``L * H`` one-head masks plus an
    empty mask (which yields the clean metric from the same cached clean run);
    only the last position and the metric's ``token_ids`` columns are unembedded.
    Split into several calls only when the output would exceed
    :data:`MAX_OUTPUT_ELEMENTS` (full-vocabulary metrics on large models).
    """
    L, H = model.n_layers, model.n_heads
    dev = model.device
    masks = torch.cat([torch.zeros(1, L, H, dtype=torch.bool, device=dev), single_head_masks(L, H, dev)], dim=0)
    ids, b = data.metric.token_ids, data.clean.shape[0]
    # ablate_many returns last-position logits [n_sets, batch, k]; with a full-vocabulary metric
    # (token_ids None, e.g. greater-than's probabilities) that would be 145 x 100 x 50257 floats
    # for GPT-2 small, so the sets go in groups whose output stays under MAX_OUTPUT_ELEMENTS
    # (each extra group redoes the clean run).
    parts, rest = [], masks
    if ids is None:
        clean_last = model.ablate_many(data.clean, masks[:1], replacement, position=-1)  # [1, b, vocab]
        parts.append(data.metric.from_last(clean_last))
        rest, k = masks[1:], clean_last.shape[-1]
    else:
        k = len(ids)
    per_call = max(1, MAX_OUTPUT_ELEMENTS // (b * k))
    for group in rest.split(per_call):
        parts.append(data.metric.from_last(model.ablate_many(data.clean, group, replacement, position=-1, token_ids=ids)))
    m = torch.cat(parts)  # [1 + L*H]
    return _to_numpy((m[0] - m[1:]).reshape(L, H))


@torch.no_grad()
def act_patch_loop(model: HookedModel, data: CircuitData, replacement) -> np.ndarray:
    """Reference for :func:`act_patch_batched`: a plain Python loop, one full
    :meth:`~HookedModel.run_with_heads_replaced` run (all positions, full vocabulary) per head.

    Returns the signed effects ``m(clean) - m(head patched)``, ``[L, H]`` float64.
    """
    L, H = model.n_layers, model.n_heads
    m_clean = data.metric.from_logits(model.logits(data.clean))
    out = np.empty((L, H), dtype=np.float64)
    for layer in range(L):
        for head in range(H):
            mask = torch.zeros(L, H, dtype=torch.bool, device=model.device)
            mask[layer, head] = True
            m = data.metric.from_logits(model.run_with_heads_replaced(data.clean, mask, replacement))
            out[layer, head] = float(m_clean - m)
    return out


def eap_scores(model: HookedModel, data: CircuitData) -> np.ndarray:
    """Signed node-level attribution patching, ``[L, H]`` float64.

    ``sum_{batch, pos, d} (z_clean - z_corrupt) * dM/dz |_clean``: the first-order
    estimate of ``m(clean) - m(head patched from corrupted)``.  One forward +
    backward on the clean prompts (:meth:`~HookedModel.head_gradients`) and one
    forward on the corrupted ones.  The metric is the mean over prompts, so the
    sum over the batch estimates the mean effect.
    """
    z_clean, z_corr, grad = _clean_corrupt_grad(model, data)
    return _to_numpy(torch.einsum("bslhd,bslhd->lh", z_clean - z_corr, grad))


def _clean_corrupt_grad(model: HookedModel, data: CircuitData) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(z_clean, z_corrupt, dM/dz at the clean run)``, each ``[b, s, L, H, d_head]`` (the gradient a fresh
    tensor): one forward + backward on the clean prompts and one forward on the corrupted ones, the common
    part of EAP and EAP-IG."""
    z_clean, grad = model.head_gradients(data.clean, data.metric.from_logits)
    with torch.no_grad():
        z_corr = model.run_with_cache(data.corrupted, return_logits=False)[1].to(z_clean.dtype)
    return z_clean, z_corr, grad


def eap_ig_scores(model: HookedModel, data: CircuitData, steps: int = 5) -> np.ndarray:
    """Signed EAP-IG on each layer's head outputs, ``[L, H]`` float64 (see :class:`EAPIG`).

    ``(z_clean - z_corrupt) . (1/steps) sum_{k=1..steps} dM/dz_l`` where the gradient
    for layer ``l``'s heads is taken at ``z_l = z_corrupt + (k/steps)(z_clean - z_corrupt)``
    with every other layer computed normally (total derivative through later layers).
    The ``k = steps`` point is the clean run itself, so ``steps=1`` is exactly EAP.
    """
    steps = int(steps)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    L, H = model.n_layers, model.n_heads
    z_clean, z_corr, grad_sum = _clean_corrupt_grad(model, data)  # the alpha = 1 gradient, summed into in place
    diff = z_clean - z_corr
    for k in range(1, steps):
        alpha = k / steps
        interp = (z_corr + alpha * diff).detach()
        for layer in range(L):
            mask = torch.zeros(L, H, dtype=torch.bool, device=model.device)
            mask[layer] = True
            g = model.replacement_gradient(data.clean, mask, interp, data.metric.from_logits)
            grad_sum[:, :, layer] += g[:, :, layer]
    return _to_numpy(torch.einsum("bslhd,bslhd->lh", diff, grad_sum / steps))


@torch.no_grad()
def activity_scores(model: HookedModel, data: CircuitData) -> np.ndarray:
    """Per-head activity ``[L, H]`` float64: the mean over prompts ``b`` and positions ``s`` of
    ``||z_clean[b, s, l, h] - z_corrupt[b, s, l, h]||_2`` (the norm over ``d_head``; units of ``z``).

    One forward pass over the clean and one over the corrupted fit prompts (:meth:`~HookedModel.run_with_cache`,
    ``z`` ``[b, s, L, H, d_head]``, the ``z`` the patching baselines replace); the difference is taken in
    float64.  Every position counts, including those before the first token where the pair differs (zero
    for every head there): a constant factor for all heads, so the ranking is that of the sum over the
    positions where the prompts differ and after.
    """
    z_clean = model.run_with_cache(data.clean, return_logits=False)[1]
    z_corr = model.run_with_cache(data.corrupted, return_logits=False)[1]
    diff = z_clean.to(torch.float64) - z_corr.to(torch.float64)
    return _to_numpy(diff.norm(dim=-1).mean(dim=(0, 1)))


# ------------------------------------------------------------------ baselines
class _ActPatch(CircuitMethod):
    replacement_kind = "resample"

    def __init__(self, absolute: bool = True):
        self.absolute = absolute

    def score_heads(self, model: HookedModel, data: CircuitData) -> np.ndarray:
        effects = act_patch_batched(model, data, patch_replacement(model, data, self.replacement_kind))
        return np.abs(effects) if self.absolute else effects

    def score_mlps(self, model: HookedModel, data: CircuitData) -> np.ndarray:
        """Each MLP's patching effect, replaced as the heads are (:func:`mlp_patch_effects`)."""
        effects = mlp_patch_effects(model, data, self.replacement_kind)
        return np.abs(effects) if self.absolute else effects


@register_method(
    "act-patch-mean",
    version="1",
    baseline=True,
    description="single-head activation patching, mean ablation (mean z over clean + corrupted fit prompts); "
    "score = |m(clean) - m(head mean-ablated)|",
)
class ActPatchMean(_ActPatch):
    """Single-head mean ablation: each head's ``z`` replaced by its mean over the clean and
    corrupted fit prompts (per position), all heads in one batched ``ablate_many`` call.
    ``absolute``: rank by ``|effect|`` (default) or by the signed effect."""

    replacement_kind = "mean"


@register_method(
    "act-patch-resample",
    version="1",
    baseline=True,
    description="single-head activation patching from the corrupted run (resample ablation); "
    "score = |m(clean) - m(head patched)|",
)
class ActPatchResample(_ActPatch):
    """Single-head resample ablation: each head's ``z`` on clean prompt ``i`` replaced by its
    ``z`` on corrupted prompt ``i``, all heads in one batched ``ablate_many`` call.
    ``absolute``: rank by ``|effect|`` (default) or by the signed effect."""

    replacement_kind = "resample"


@register_method(
    "eap",
    version="1",
    baseline=True,
    description="attribution patching at node level: |sum (z_clean - z_corrupt) . dM/dz| per head "
    "(2 forward + 1 backward)",
)
class EAP(CircuitMethod):
    """Attribution patching (Nanda 2023; Syed et al. 2023) at node level.

    Score of head ``h``: ``|sum_{batch, pos, d} (z_clean - z_corrupt) * dM/dz_h|``, the
    linear estimate of the effect of patching ``h`` from the corrupted run, its magnitude
    by default (``absolute=True``) because ground-truth circuits include heads whose
    effect is negative; ``absolute=False`` gives the signed estimate (positive = helps).
    """

    def __init__(self, absolute: bool = True):
        self.absolute = absolute

    def score_heads(self, model: HookedModel, data: CircuitData) -> np.ndarray:
        s = eap_scores(model, data)
        return np.abs(s) if self.absolute else s

    def score_mlps(self, model: HookedModel, data: CircuitData) -> np.ndarray:
        """Attribution patching of each MLP's output (:func:`mlp_eap_scores`)."""
        s = mlp_eap_scores(model, data)
        return np.abs(s) if self.absolute else s


@register_method(
    "eap-signed",
    version="1",
    baseline=True,
    description="attribution patching ranked by the signed estimate sum (z_clean - z_corrupt) . dM/dz (positive "
    "= the head helps), as when a search keeps the heads that promote the answer; on the default suite only "
    "where that matters (circuits/ioi-negative)",
)
class EAPSigned(EAP):
    """:class:`EAP` with ``absolute=False`` by default: heads ranked by how much they *help* the metric.

    The reading of attribution scores that looks for heads promoting the answer (e.g. keeping the top
    positive nodes); a suppression head such as Wang et al.'s negative name movers then ranks last although
    its effect is large.  It is the method the ``planted-ioi-negative`` trap is built to defeat, so the
    default suite runs it there only (other tasks: ``--methods eap-signed``).
    """

    default_suite_tasks = ("circuits/ioi-negative",)

    def __init__(self, absolute: bool = False):
        super().__init__(absolute=absolute)


@register_method(
    "eap-ig",
    version="1",
    baseline=True,
    description="EAP with integrated gradients (Hanna et al. 2024) adapted to nodes; interpolates each "
    "layer's head outputs between corrupted and clean (IG on activations), steps=5",
)
class EAPIG(CircuitMethod):
    """EAP-IG (Hanna et al. 2024) at node level, integrated on the activations.

    Hanna et al. interpolate the *input embeddings* between the corrupted and the
    clean prompt and average ``dM/dz`` over ``steps`` points (one forward + backward
    per step gives every node's gradient).  The public :class:`HookedModel` interface
    has no hook on the input embeddings (only on the heads' ``z``), so this
    implementation integrates on the heads' outputs instead ("IG on activations",
    as in Marks et al. 2024 and the EAP-IG code's activation variant): for layer
    ``l`` the gradient is taken with layer ``l``'s ``z`` set to ``z_corrupt + a (z_clean
    - z_corrupt)``, ``a = k/steps`` for ``k = 1..steps``, and every other layer computed
    normally.  Each layer's heads need their own pass, so this costs
    ``L * (steps - 1) + 1`` forward + backward passes (Hanna et al.: ``steps``).
    ``a = 1`` is the clean run, so ``steps=1`` is exactly EAP; as ``steps`` grows,
    the scores of one layer's heads add up to ``m(clean) - m(layer patched from
    corrupted)`` (completeness).  ``absolute`` as in :class:`EAP`.
    """

    def __init__(self, steps: int = 5, absolute: bool = True):
        self.steps = steps
        self.absolute = absolute

    def score_heads(self, model: HookedModel, data: CircuitData) -> np.ndarray:
        s = eap_ig_scores(model, data, self.steps)
        return np.abs(s) if self.absolute else s

    def score_mlps(self, model: HookedModel, data: CircuitData) -> np.ndarray:
        """EAP-IG of each MLP's output, integrated the same way (:func:`mlp_eap_ig_scores`)."""
        s = mlp_eap_ig_scores(model, data, self.steps)
        return np.abs(s) if self.absolute else s


@register_method(
    "acdc",
    version="1",
    baseline=True,
    description="ACDC-style greedy node pruning: heads visited last layer first, resample-ablated "
    "for good if the normalised metric change stays below tau",
)
class ACDC(CircuitMethod):
    """ACDC (Conmy et al. 2023) at node level, with the task metric instead of KL.

    Start with every head in the circuit.  Visit heads from the last layer to the
    first (within a layer, head 0 first).  For each, patch it from the corrupted
    run *on top of* the heads already removed and measure
    ``effect = |m(current) - m(current with the head also patched)| / |m(clean) - m(corrupted)|``
    (the corrupted metric is that of the unpatched model on the corrupted prompts;
    a gap below 1e-12 normalises by 1).  If ``effect < tau`` the head is removed
    for good.  Score of a head = its ``effect`` when visited (so kept heads, with
    ``effect >= tau``, rank above removed ones); :meth:`select_heads` returns the kept
    heads.  ``L * H`` sequential forward passes.
    """

    def __init__(self, tau: float = 0.02):
        self.tau = tau
        self._selected: tuple[int, np.ndarray] | None = None

    @torch.no_grad()
    def _run(self, model: HookedModel, data: CircuitData) -> tuple[np.ndarray, np.ndarray]:
        L, H = model.n_layers, model.n_heads
        metric = data.metric
        logits_corr, z_corr = model.run_with_cache(data.corrupted)
        m_clean = float(metric.from_logits(model.logits(data.clean)))
        gap = abs(m_clean - float(metric.from_logits(logits_corr)))
        gap = gap if gap > 1e-12 else 1.0
        removed = torch.zeros(L, H, dtype=torch.bool, device=model.device)
        scores = np.zeros((L, H), dtype=np.float64)
        m_cur = m_clean
        for layer in reversed(range(L)):
            for head in range(H):
                cand = removed.clone()
                cand[layer, head] = True
                m_new = float(metric.from_logits(model.run_with_heads_replaced(data.clean, cand, z_corr)))
                effect = abs(m_cur - m_new) / gap
                scores[layer, head] = effect
                if effect < self.tau:
                    removed, m_cur = cand, m_new
        return scores, (~removed).cpu().numpy()

    def score_heads(self, model: HookedModel, data: CircuitData) -> np.ndarray:
        scores, kept = self._run(model, data)
        self._selected = (id(data), kept)
        return scores

    def select_heads(self, model: HookedModel, data: CircuitData, scores: np.ndarray) -> np.ndarray | None:
        if self._selected is None or self._selected[0] != id(data):
            self.score_heads(model, data)
        return self._selected[1].copy()


@register_method(
    "activity-diff",
    version="1",
    baseline=True,
    description="activity, not effect: mean over fit prompts and positions of ||z_clean - z_corrupt|| per head "
    "(2 forward passes, no patching, no gradient)",
)
class ActivityDiff(CircuitMethod):
    """The activity baseline: a head's score is how much its output ``z`` changes between each clean prompt
    and its paired corrupted prompt (:func:`activity_scores`: mean over prompts and positions of the L2 norm
    over ``d_head``).  It is the common "which heads react to the input" heuristic: it measures activity, not
    effect, so a head that reacts to the corruption but that nothing downstream reads ranks like a circuit
    head.  2 forward passes, no backward.

    Predicted ROC-AUC (written before it was first run; the reasoning in brackets).  The trap cards'
    ``verification.traps.activity`` (512 fresh prompts) is the closest reading: the norm of the change
    *mean-pooled over positions*, where this score takes the norm per position then the mean, which adds up
    changes that cancel in the pooled mean, so heads with diffuse changes rise and the ranges below are wider
    than the card's numbers.  The corrupted prompt differs from the clean one in one token (IOI: S2 -> a third
    name C; greater-than: YY -> 01), so only heads at or after that position, or attending to it, change.

    - planted-ioi: ~1.0 (0.9-1.0).  The circuit heads are trained by interchange terms to carry the names,
      and in every trap model (same recipe) the non-circuit heads, the distractor heads 0.0 (previous token)
      and 1.1 (induction) included, change 3-30x less than the circuit heads (card activity 0.03-0.5 against
      0.5-2.2, busy heads aside); the strict term leaves them nothing to carry on task prompts.  planted-ioi's
      own card has no activity numbers, so this is by analogy.
    - planted-greater-than: ~0.9 (0.75-1.0).  The risk is the distractor heads: the induction head 1.1 at the
      last position (the repeated century XX) attends to the token after the first XX, i.e. YY, and the
      previous-token head 0.0 reads YY at the next position; both then change with YY as the circuit's mover
      0.3 does.  If both rank above the two relays 1.0 and 2.1: (27 - 4)/27 = 0.85.
    - ioi-negative: ~1.0 (card: every circuit head >= 0.83, the negative head 2.2 the most active at 2.17,
      every other head <= 0.24 -> 1.000).
    - ioi-redundant: ~0.99 (card: the redundant heads 1.3 and 1.6 are the most active, 5.95 each; 2.1 (0.755)
      just above the name mover 2.6 (0.741), one pair of 80 misordered -> 0.988).  Redundancy does not hide a
      head from an activity score: each redundant head is active whether or not it is needed.
    - ioi-busy: fooled, ~0.84 (0.7-0.9).  The card: the busy heads 0.2 (1.14) and 1.4 (1.28) above every
      circuit head (0.5: 0.88, 1.3: 1.01, 2.6: 0.51), 2.3 (0.58) above 2.6, and also 0.4 (0.73), 2.0 and 2.5
      (0.53, 0.52) above 2.6: 10 of 63 pairs misordered -> 0.841.  (At the last position alone the card gives
      0.714; what the heads write, z W_O, 1.000: it is the change of z, not of its effect, that fools it.)
    - ioi-saturated: ~1.0 (card: circuit heads >= 0.57, every other head <= 0.31 -> 1.000).  Saturation hides
      the gradient, not the activity.

    Measured afterwards (``harness run --tasks circuits/ioi circuits/greater_than circuits/ioi-negative
    circuits/ioi-redundant circuits/ioi-busy circuits/ioi-saturated --methods activity-diff --seeds 0 1 2``;
    ROC-AUC, the same in each seed, so ± 0.000; CPR / CMD means): planted-ioi 0.852 (.649 / .350),
    planted-greater-than 0.667 (.630 / .369), negative 1.000 (.850 / .149), redundant 1.000 (.868 / .167),
    busy 0.873 (.651 / .348), saturated 1.000 (.852 / .148).  The trap models as predicted (busy 0.873
    against ~0.84, the only one of the four it fails, where every causal method scores >= 0.979); the two
    base models wrong: the strict term makes the non-circuit heads *unread*, not inactive, and on the
    narrower base models some of them react more than circuit heads.  planted-ioi: 2.1 (0.64) and 2.2 (0.43)
    above the name mover 2.0 (0.33) in seed 0; planted-greater-than: 1.2, 0.2 and 1.3 (0.19, 0.19, 0.16)
    above every circuit head, the mover 0.3 (0.10, attention 0.997 on YY) below 2.1 and 1.0, and the
    distractor heads 0.0 and 1.1 (0.05, 0.02) quiet, so the predicted mechanism was wrong too (top-3 F1 0).
    """

    def score_heads(self, model: HookedModel, data: CircuitData) -> np.ndarray:
        return activity_scores(model, data)


@register_method(
    "random",
    version="1",
    baseline=True,
    description="seeded uniform random head scores (the chance line)",
)
class RandomScores(CircuitMethod):
    """Uniform random scores from ``numpy.random.default_rng(seed)``; no model passes."""

    def score_heads(self, model: HookedModel, data: CircuitData) -> np.ndarray:
        return np.random.default_rng(self.seed).random((model.n_layers, model.n_heads))

    def score_mlps(self, model: HookedModel, data: CircuitData) -> np.ndarray:
        """Uniform random MLP scores from their own stream (``default_rng([seed, 1])``: head scores unchanged)."""
        return np.random.default_rng([int(self.seed), 1]).random(model.n_layers)
