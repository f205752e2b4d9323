"""Discrete-SAE circuit finding (O'Neill & Bui 2024, arXiv:2405.12522).

"Sparse Autoencoders Enable Scalable and Reliable Circuit Identification in
Language Models": train one sparse autoencoder on the attention heads' outputs
for a handful of *positive* prompts (the model can do the task: the clean
prompts) and *negative* prompts (it cannot: the corrupted ones), discretise
each (prompt, head) vector into an integer code (its argmax latent), and score
each head by how many codes it shows on positive prompts but never on negative
ones.  No ablations, one forward pass, seconds on a CPU.

Steps (shapes: ``n`` prompts, ``s`` positions, ``L`` layers, ``H`` heads):

1. pick ``n_examples`` clean prompts and their paired corrupted prompts
   (a seeded subset of the fit split; all of them if there are fewer);
2. one forward pass over the ``2n`` prompts caches every head's ``z``
   ``[2n, s, L, H, d_head]`` (``source="z"``) or its contribution to the
   residual stream ``z @ W_O`` (``source="result"``, ``d_model`` wide);
3. mean-pool over positions: one vector per (prompt, head), ``[2n, L, H, d]``;
4. normalise (``normalise``): ``"none"`` (only one global scale factor so that
   the mean squared norm is 1, which leaves the geometry untouched and keeps
   ``l1`` meaningful across models), ``"head"`` (per-head standardisation: each
   head's vectors minus that head's mean over the ``2n`` prompts, divided by
   their RMS norm), or ``"unit"`` (each vector scaled to unit L2 norm);
5. train ONE SAE on all ``2n * L * H`` vectors, shared by every head, with no
   head embedding (the SAE sees only the head's output):
   ``f = ReLU((x - b_dec) W_enc + b_enc)``, ``x_hat = f W_dec + b_dec``, loss
   ``mean ||x - x_hat||^2 + l1 * mean ||f||_1``, Adam (``lr``), ``epochs`` passes in
   shuffled mini-batches of ``batch_size``, decoder rows kept at unit norm;
6. code of a (prompt, head) = argmax of its encoder pre-activation (= the
   argmax latent of ``f`` whenever any latent is active);
7. score of a head = number of distinct codes it shows on positive prompts
   and on no negative prompt (an integer >= 0, higher = more likely in the
   circuit).

The paper's reported node ROC-AUC on GPT-2 small: IOI .868, greater-than .855
(DESIGN.md section 2).  Deterministic for a fixed seed (subset, initialisation
and shuffling all come from it) on a given device and thread count.

Choices the paper's summary (abstract, DESIGN.md) leaves open, and what was
measured for them on the planted 3 x 4 models (ROC-AUC, mean of seeds 0-4, at
the time of writing): ``normalise="none"`` (IOI .85, greater-than .54) beats
``"unit"`` (.77 / .46) and ``"head"`` (.65 / .46): standardising each head
amplifies the noise of heads that do nothing, and noisy heads then show many
"positive-only" codes; ``source="result"`` scored IOI .90 / greater-than .48;
``l1`` 0.003-0.1, ``n_latents`` 50-200 and ``epochs`` 30-100 change little.  On
the planted greater-than model the method is near chance with every setting
tried (its corrupted prompts differ from the clean ones in one token, and the
mean-pooled head outputs hardly move).  The SAE is the registry's ``discrete``
architecture (:mod:`harness.sae.discrete`: its initialisation, one-CPU-thread
training and hand-written Adam, which ``torch.optim.Adam`` would not reproduce
to the last bit).
"""

from __future__ import annotations

import numpy as np
import torch

from harness.core.registry import register_method
from harness.models.base import HookedModel
from harness.protocols.circuits import CircuitData, CircuitMethod
from harness.sae import SAE, train_discrete_sae

NORMALISATIONS = ("none", "head", "unit")
SOURCES = ("z", "result")


def normalise_vectors(x: torch.Tensor, how: str) -> torch.Tensor:
    """Normalise per-(prompt, head) vectors ``x`` ``[n, L, H, d]`` (see the module docstring, step 4)."""
    if how == "none":
        rms = x.pow(2).sum(-1).mean().sqrt()
        return x / rms.clamp_min(1e-12)
    if how == "head":
        centred = x - x.mean(dim=0, keepdim=True)
        rms = centred.pow(2).sum(-1).mean(dim=0, keepdim=True).sqrt()  # [1, L, H]
        return centred / rms.clamp_min(1e-12).unsqueeze(-1)
    if how == "unit":
        return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    raise ValueError(f"unknown normalise {how!r}; use one of {NORMALISATIONS}")


def unique_positive_codes(codes_pos: torch.Tensor, codes_neg: torch.Tensor, n_codes: int) -> torch.Tensor:
    """Per head, the number of distinct codes in ``codes_pos`` that never occur in ``codes_neg``.

    ``codes_pos`` ``[n_pos, L, H]``, ``codes_neg`` ``[n_neg, L, H]``: integer codes in
    ``[0, n_codes)``.  Returns a LongTensor ``[L, H]``.
    """
    L, H = codes_pos.shape[1:]

    def present(codes: torch.Tensor) -> torch.Tensor:
        seen = torch.zeros(L, H, n_codes, dtype=torch.bool, device=codes.device)
        seen.scatter_(2, codes.permute(1, 2, 0).long(), True)
        return seen  # [L, H, n_codes]

    return (present(codes_pos) & ~present(codes_neg)).sum(-1)


@register_method(
    "discrete-sae",
    version="1",
    description="O'Neill & Bui 2024: one SAE over all heads' mean-pooled outputs on clean (positive) and "
    "corrupted (negative) prompts; head score = # argmax codes seen on positives but never on negatives",
)
class DiscreteSAE(CircuitMethod):
    """Discrete-SAE circuit finding; see the module docstring for the algorithm.

    Knobs: ``n_latents`` (SAE width, 200), ``l1`` (sparsity coefficient),
    ``n_examples`` (positive prompts, and as many negative ones, 10),
    ``normalise`` (``"none"`` / ``"head"`` / ``"unit"``), ``epochs`` and ``batch_size``
    (mini-batch passes over the ``2 n L H`` vectors), ``lr`` (Adam), ``source``
    (``"z"``: per-head ``z``; ``"result"``: ``z @ W_O``).  After :meth:`score_heads`,
    ``diagnostics_`` holds the SAE's final loss, MSE, L0 and number of codes used.
    """

    selftest_params = {"epochs": 2, "n_latents": 16}
    input_keys = ()  # normalise and source are names, not paths

    def __init__(
        self,
        n_latents: int = 200,
        l1: float = 0.03,
        n_examples: int = 10,
        normalise: str = "none",
        epochs: int = 30,
        lr: float = 1e-2,
        batch_size: int = 512,
        source: str = "z",
    ):
        self.n_latents, self.l1, self.n_examples, self.normalise = n_latents, l1, n_examples, normalise
        self.epochs, self.lr, self.batch_size, self.source = epochs, lr, batch_size, source
        self.diagnostics_: dict = {}

    # ------------------------------------------------------------------ steps
    def _check(self) -> None:
        if self.normalise not in NORMALISATIONS:
            raise ValueError(f"normalise must be one of {NORMALISATIONS}, got {self.normalise!r}")
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")
        for name in ("n_latents", "n_examples", "epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @torch.no_grad()
    def head_vectors(self, model: HookedModel, data: CircuitData) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean-pooled per-head vectors of the positive and negative prompts, each ``[n, L, H, d]``."""
        n_total = data.clean.shape[0]
        n = min(int(self.n_examples), n_total)
        rng = np.random.default_rng(self.seed)
        idx = torch.as_tensor(np.sort(rng.choice(n_total, size=n, replace=False)), dtype=torch.long,
                              device=data.clean.device)
        tokens = torch.cat([data.clean[idx], data.corrupted[idx]], dim=0)
        _, z = model.run_with_cache(tokens, return_logits=False)  # [2n, s, L, H, d_head]
        pooled = z.mean(dim=1)  # [2n, L, H, d_head]; pooling first: head_results is linear
        if self.source == "result":
            pooled = model.head_results(pooled)  # [2n, L, H, d_model]
        pooled = pooled.to(self.device, torch.float32)
        return pooled[:n], pooled[n:]

    def fit_sae(self, x: torch.Tensor) -> SAE:
        """Train the SAE on ``x`` ``[N, d]`` (deterministic in ``self.seed``); sets ``diagnostics_``."""
        sae, _ = train_discrete_sae(x, int(self.n_latents), l1=self.l1, epochs=int(self.epochs),
                                    batch_size=int(self.batch_size), lr=float(self.lr), seed=self.seed)
        with torch.no_grad():
            x_hat, f = sae.arch.forward(sae, x)  # the discrete architecture's dense forward
            mse = float((x - x_hat).pow(2).sum(-1).mean())
            l1 = float(f.abs().sum(-1).mean())
            self.diagnostics_ = {
                "loss": mse + self.l1 * l1,
                "mse": mse,
                "fvu": mse / max(float((x - x.mean(0)).pow(2).sum(-1).mean()), 1e-12),
                "l0": float((f > 0).float().sum(-1).mean()),
            }
        return sae

    def score_heads(self, model: HookedModel, data: CircuitData) -> np.ndarray:
        self._check()
        pos, neg = self.head_vectors(model, data)
        n, L, H, d = pos.shape
        x = normalise_vectors(torch.cat([pos, neg], dim=0), self.normalise)  # [2n, L, H, d]
        sae = self.fit_sae(x.reshape(-1, d))
        codes = sae.encode(x.reshape(-1, d)).indices.reshape(2 * n, L, H)  # argmax latent per (prompt, head)
        self.diagnostics_["codes_used"] = int(torch.unique(codes).numel())
        scores = unique_positive_codes(codes[:n], codes[n:], int(self.n_latents))
        return scores.to("cpu", torch.float64).numpy()
