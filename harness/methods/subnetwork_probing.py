"""Subnetwork probing at node level: a learned hard-concrete mask per head (mask optimisation).

Subnetwork probing (Cao, Sanh & Rush 2021, "Low-Complexity Probing via Finding Subnetworks",
arXiv:2104.03514) learns a binary mask over a network's units with Louizos, Welling & Kingma's (2018,
"Learning Sparse Neural Networks through L0 Regularization", arXiv:1712.01312) hard-concrete
relaxation and an L0 penalty; Conmy et al. (2023, ACDC, arXiv:2304.14997) used it at node level as a
circuit-discovery baseline (a mask per head, the masked head's output replaced by its corrupted value,
KL to the model's output, "SP": GPT-2 IOI node ROC-AUC .852), and Edge Pruning (Bhaskar, Wettig, Zhong &
Chen 2024, arXiv:2406.16778) learns the same kind of mask over edges.  MIB (Mueller et al. 2025) finds
these mask-optimisation methods among the best.  This is the node-level version on the harness's nodes,
the heads:

- every head ``h`` has a parameter ``log_alpha_h``; a forward pass samples, per prompt and head,
  ``u ~ U(0, 1)``, ``s = sigmoid((log u - log(1 - u) + log_alpha) / beta)``,
  ``m = min(1, max(0, s (zeta - gamma) + gamma))`` (``beta = 2/3``, ``gamma = -0.1``, ``zeta = 1.1``: the
  stretched, clipped hard concrete, which puts mass on exactly 0 and exactly 1);
- the head's output becomes ``m z + (1 - m) z_ablated`` (:meth:`~HookedModel.run_with_heads_mixed`):
  ``z`` is its output in this (partially masked) run, ``z_ablated`` its output on the paired corrupted
  prompt (``ablation="resample"``, Edge Pruning's and ACDC's counterfactual) or its mean over the fit
  prompts (``"mean"``);
- loss = ``KL(p_model || p_masked)`` of the next-token distribution at the last position, averaged over
  prompts (``loss="kl"``, as Conmy et al. and Bhaskar et al.; ``loss="metric"``: the squared deviation
  of each prompt's task metric from the full model's, divided by the squared clean - corrupted gap of
  the mean metric) + ``lam * sum_h P(m_h != 0)``, the expected number of heads kept,
  ``P(m_h != 0) = sigmoid(log_alpha_h - beta log(-gamma / zeta))`` (Louizos et al., eq. 12);
- Adam on ``log_alpha`` from ``init`` = 1 (where a third of the samples are exactly 1 and 7% exactly 0,
  so the loss sees partly ablated circuits from the first step), ``steps`` full-batch steps over the fit
  prompts.

Each step is one :meth:`~HookedModel.mix_gradient` call (a forward and a backward over the fit prompts,
in position mode: the last block computes the last position only); the chain rule into ``log_alpha``
(through the sampled masks and the L0 term) is a small graph of ``[b, L, H]`` tensors.  Cost:
``steps`` forward + backward passes, plus the full run and the replacement's run.

Score of a head: its final ``log_alpha`` (the deterministic mask ``min(1, max(0, sigmoid(log_alpha)
(zeta - gamma) + gamma))`` and the expected L0 are monotone in it, but clip or saturate).  Adam moves a
parameter by up to ``lr`` per step while its gradient keeps one sign, so a head that no loss term defends
falls from the start (more slowly once the L0 term's gradient fades, below ``log_alpha`` ~ -1.6: the
defenceless heads of the planted models end near -7), one the loss needs stops falling where its sampled
masks start to hurt, and the final values rank heads by how long, and how hard, the loss defended them:
a full ranking from one run, without a sweep of ``lam``.  :meth:`select_heads` is the method's own
circuit: heads whose deterministic mask is above 1/2 (``log_alpha > 0``).

Differences from the papers: node level (heads only, no MLPs or edges); a fixed ``lam`` (Edge Pruning
instead drives the expected sparsity to a target with a Lagrangian; Conmy et al. sweep ``lam``); one mask
sample per prompt and step (a sample per batch in Louizos et al.; per prompt gives more samples per
pass at no extra cost); the task's fit prompts as the training set.

Predicted ROC-AUC on the trap models (written from the mechanism before measuring; measured numbers in
the README, "Circuit trap models"):

- planted-ioi, planted-greater-than: ~1.0 (every circuit head's ablation raises the KL, no other head's).
- negative: ~1.0 with KL (ablating 2.2 shifts the output distribution, so the KL keeps it; a loss
  that only maximised the metric would drop it, ``loss="metric"`` here is a deviation both ways).
- redundant: 0.9-1.0.  Masking 1.3 or 1.6 alone costs no KL, so both fall with the non-circuit heads
  until their samples are often near 0 together; from then on the KL defends the pair (the L0 term
  favours keeping one, and one of them may keep falling), but both started losing ground later than
  the non-circuit heads, whose fall nothing slows, so both should still rank above them; a head that
  is eventually dropped costs at most (3 * 20 + 10) / 80 = 0.875 if it sinks to the middle.
- busy: ~1.0 (nothing reads the busy heads: masking them leaves the output unchanged, whatever their
  activity).
- saturated: ~1.0, possibly a little less.  The masks are real interpolations in a real forward pass,
  not a linearisation at the clean point: the gradient with respect to 0.5's or 1.3's mask is ~0 where
  2.6's softmax stays saturated (masks near 1), but the L0 term lowers their masks until the samples
  reach the range where 2.6's attention switches (mix coefficients near 0, given a margin of 15-45
  logits), and there the KL rises steeply and holds them; the defence is weaker than for heads with a
  linear effect, so they may rank lower among the circuit heads, not below the non-circuit ones.

Measured afterwards (seeds 0-2): as predicted except on negative, 0.963 ± 0.093: the model puts
probability 0.998 on the answer, so removing 2.2 only makes it more confident (metric +12%, KL 0.0035
nats, less than the L0 price of a head); ``loss="metric"`` scores 0.992 there.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from harness.core.registry import register_method
from harness.models.base import HookedModel
from harness.protocols.circuits import REPLACEMENTS, CircuitData, CircuitMethod, patch_replacement

#: Louizos et al.'s stretch interval (gamma, zeta) and temperature beta.
GAMMA, ZETA, BETA = -0.1, 1.1, 2.0 / 3.0
LOSSES = ("kl", "metric")
#: Uniform samples are kept in [EPS, 1 - EPS] so that log u and log(1 - u) are finite.
EPS = 1e-6


# ------------------------------------------------------------ hard concrete
def hard_concrete(log_alpha: torch.Tensor, u: torch.Tensor, beta: float = BETA) -> torch.Tensor:
    """Hard-concrete sample ``min(1, max(0, sigmoid((log u - log(1 - u) + log_alpha) / beta) (zeta - gamma)
    + gamma))`` for uniform ``u`` (broadcast with ``log_alpha``); differentiable in ``log_alpha``."""
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / beta)
    return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


def expected_l0(log_alpha: torch.Tensor, beta: float = BETA) -> torch.Tensor:
    """``P(mask != 0) = sigmoid(log_alpha - beta log(-gamma / zeta))`` per entry (Louizos et al., eq. 12)."""
    return torch.sigmoid(log_alpha - beta * math.log(-GAMMA / ZETA))


def deterministic_mask(log_alpha: torch.Tensor) -> torch.Tensor:
    """The test-time mask ``min(1, max(0, sigmoid(log_alpha) (zeta - gamma) + gamma))`` (Louizos et al., eq. 13)."""
    return (torch.sigmoid(log_alpha) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


# --------------------------------------------------------------- training
@torch.no_grad()
def mask_loss(model: HookedModel, data: CircuitData, loss: str):
    """``(loss_fn, token_ids)``: ``loss_fn`` maps the last-position logits of a masked run (``[b, vocab]``
    for ``"kl"``, the metric's ``token_ids`` columns for ``"metric"``) to the scalar faithfulness loss."""
    if loss == "kl":
        target = torch.log_softmax(model.run_with_hooks(data.clean, position=-1).double(), dim=-1)
        p = target.exp()

        def kl(last: torch.Tensor) -> torch.Tensor:
            return (p * (target - torch.log_softmax(last.double(), dim=-1))).sum(-1).mean()

        return kl, None
    if loss == "metric":
        ids, metric = data.metric.token_ids, data.metric
        full = metric.per_prompt_fn(model.run_with_hooks(data.clean, position=-1, token_ids=ids)).double()
        corrupted = float(metric.from_last(model.run_with_hooks(data.corrupted, position=-1, token_ids=ids)))
        gap = abs(float(full.mean()) - corrupted)
        scale = gap if gap > 1e-12 else 1.0

        def deviation(last: torch.Tensor) -> torch.Tensor:
            return (((metric.per_prompt_fn(last).double() - full) / scale) ** 2).mean()

        return deviation, ids
    raise ValueError(f"unknown loss {loss!r}; use one of {LOSSES}")


def learn_log_alpha(model: HookedModel, data: CircuitData, *, steps: int = 40, lr: float = 0.3,
                    lam: float = 0.01, init: float = 1.0, ablation: str = "resample", loss: str = "kl",
                    seed: int = 0) -> tuple[torch.Tensor, dict[str, float]]:
    """Train the per-head ``log_alpha`` ``[L, H]`` (see the module docstring); returns it (detached, on the
    model's device) and diagnostics: the last step's faithfulness loss and the final expected L0.

    The uniform samples come from a CPU ``torch.Generator`` seeded with ``seed`` (so a seed gives the same
    masks on every device) and are moved to the model's device."""
    if ablation not in REPLACEMENTS:
        raise ValueError(f"unknown ablation {ablation!r}; use one of {REPLACEMENTS}")
    if int(steps) < 1 or not lr > 0 or not lam >= 0:
        raise ValueError(f"need steps >= 1, lr > 0 and lam >= 0, got steps={steps}, lr={lr}, lam={lam}")
    loss_fn, ids = mask_loss(model, data, loss)
    rep = patch_replacement(model, data, ablation)
    L, H, b = model.n_layers, model.n_heads, data.clean.shape[0]
    dev, dtype = model.device, model.dtype
    log_alpha = torch.full((L, H), float(init), dtype=dtype, device=dev, requires_grad=True)
    opt = torch.optim.Adam([log_alpha], lr=float(lr))
    gen = torch.Generator().manual_seed(int(seed))
    for _ in range(int(steps)):
        u = torch.rand((b, L, H), generator=gen, dtype=torch.float64).clamp(EPS, 1 - EPS).to(dev, dtype)
        with torch.enable_grad():
            mask = hard_concrete(log_alpha, u)
            value, grad = model.mix_gradient(data.clean, mask.detach(), rep, loss_fn, position=-1, token_ids=ids)
            total = (mask * grad.to(dtype)).sum() + float(lam) * expected_l0(log_alpha).sum()
            opt.zero_grad()
            total.backward()
        opt.step()
    log_alpha = log_alpha.detach()
    return log_alpha, {"loss": float(value), "expected_l0": float(expected_l0(log_alpha).sum())}


# ------------------------------------------------------------------- method
@register_method(
    "subnetwork-probing",
    version="1",
    description="mask optimisation at node level: subnetwork probing (Cao et al. 2021, arXiv:2104.03514) as in "
    "ACDC's comparison (Conmy et al. 2023): a hard-concrete mask per head (Louizos et al. 2018) interpolating "
    "its output with the corrupted run's, Adam on KL to the model + lam * expected L0; score = final log_alpha",
)
class SubnetworkProbing(CircuitMethod):
    """Subnetwork probing over heads (see :mod:`harness.methods.subnetwork_probing`).

    ``steps`` / ``lr``: Adam steps (full batch) and learning rate on ``log_alpha``; ``lam``: weight of the
    expected number of heads kept; ``init``: initial ``log_alpha``; ``ablation``: what a masked head gets
    (``"resample"``: the paired corrupted prompt's ``z``; ``"mean"``: the mean ``z`` over the fit prompts);
    ``loss``: ``"kl"`` (to the model's next-token distribution) or ``"metric"`` (squared deviation of the
    task metric, normalised by the clean - corrupted gap).  :meth:`select_heads`: ``log_alpha > 0``.
    """

    selftest_params = {"steps": 10}

    def __init__(self, steps: int = 40, lr: float = 0.3, lam: float = 0.01, init: float = 1.0,
                 ablation: str = "resample", loss: str = "kl"):
        self.steps = steps
        self.lr = lr
        self.lam = lam
        self.init = init
        self.ablation = ablation
        self.loss = loss
        self._selected: tuple[int, np.ndarray] | None = None

    def score_heads(self, model: HookedModel, data: CircuitData) -> np.ndarray:
        log_alpha, self.diagnostics_ = learn_log_alpha(
            model, data, steps=int(self.steps), lr=float(self.lr), lam=float(self.lam), init=float(self.init),
            ablation=self.ablation, loss=self.loss, seed=self.seed)
        scores = log_alpha.to("cpu", torch.float64).numpy()
        self._selected = (id(data), scores > 0)
        return scores

    def select_heads(self, model: HookedModel, data: CircuitData, scores: np.ndarray) -> np.ndarray | None:
        if self._selected is None or self._selected[0] != id(data):
            self.score_heads(model, data)
        return self._selected[1].copy()
