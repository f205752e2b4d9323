"""Sparse autoencoders for the reconstruction family (fit / encode / decode).

- ``topk-sae``: TopK SAE (Gao et al. 2024) with AuxK against dead latents;
  sparse-backward training (:mod:`harness.sae.autograd`), embedding-bag decode.
- ``g-sae``: gradient-TopK SAE (Olmo et al. 2024): latents selected by
  ``z + beta * z * |W_dec^T grad_x L|`` (gradients from the task, globally
  rescaled so that ``E|g|^2 = d``); the same TopK machinery otherwise.  With
  ``grad_at_encode=False`` held-out tokens are encoded as a plain TopK SAE
  (no label-dependent gradient at inference).
- ``relu-sae``: ReLU SAE with an L1 penalty (its L0 follows ``l1_coef``).
- ``argmax-sae``: the argmax-code idea of the circuits method's discrete SAE
  (O'Neill & Bui 2024): a ReLU + L1 SAE with few latents whose code of a token
  is its single largest latent (L0 = 1).  It is trained by the harness's ReLU-SAE
  trainer (:func:`harness.sae.relu.train_relu_sae`), not by the ``discrete-sae``
  circuit method's own loop, whose initialisation, L1 schedule and optimiser differ.
- ``jumprelu-sae``: JumpReLU SAE (Rajamanoharan et al. 2024, "Jumping Ahead"): a learned threshold
  per latent, an L0 penalty trained through straight-through estimators
  (:mod:`harness.sae.jumprelu`); its L0 follows ``l0_coef``.  Defaults, in the normalised units of
  training (per-dimension variance about 1): ``init_threshold = 1`` (about one standard deviation of a
  pre-activation at initialisation, so a sixth of the latents fire at the start rather than half),
  ``bandwidth = 0.1``, ``l0_coef = 0.03`` (L0 about d/12 on ``reconstruction/synthetic-64``; chosen there,
  seed 0, among 16 settings of coefficient 0.01-0.1, initial threshold 0.05-1 and bandwidth 0.05-0.2:
  at coefficient 0.01, threshold and bandwidth 0.05 it ended at L0 17 and MMCS 0.55 in these short runs).
- ``batchtopk-sae``: BatchTopK SAE (Bussmann, Leask & Nanda 2024): the ``k * B`` largest activations of a
  training batch, one global threshold at inference (:mod:`harness.sae.batchtopk`); TopK's kernels and AuxK.
- ``matryoshka-sae``: Matryoshka SAE (Bussmann et al. 2025): BatchTopK codes, loss summed over ``levels``
  nested prefixes of the dictionary (:mod:`harness.sae.matryoshka`).
- ``user-sae``: a user's own SAE from a directory (``path=...``) holding
  ``sae.safetensors`` + ``sae.json``; see :mod:`harness.sae.io` for the
  format.  Nothing is fitted.

``n_latents`` defaults to ``expansion * d`` and ``k`` to ``d // 12``
(:func:`harness.protocols.reconstruction.default_k`, shared with the
baselines).  Every method trains on ``self.device``.
"""

from __future__ import annotations

import torch

from harness.core.registry import register_method
from harness.errors import ConfigError, HarnessError
from harness.protocols.reconstruction import ReconstructionMethod, SparseCodes, codes_to, default_k
from harness.sae import (
    SAE,
    ArgmaxConfig,
    load_sae,
    train_batchtopk_sae,
    train_jumprelu_sae,
    train_matryoshka_sae,
    train_relu_sae,
    train_topk_sae,
)


#: The newer architectures join the default suite on the known-truth tasks, where "which SAE finds the real
#: features" has an answer; on the language-model tasks they run when named (--methods), which keeps the
#: family's default suite under its time budget.
KNOWN_TRUTH_TASKS = ("reconstruction/synthetic-*",)


class _SAEMethod(ReconstructionMethod):
    selftest_params = {"epochs": 1}
    sae: SAE | None = None
    last_train_stats = None

    def _n_latents(self, d: int) -> int:
        n = self.n_latents if getattr(self, "n_latents", None) else int(self.expansion) * d
        if n < 1:
            raise ConfigError(f"n_latents must be >= 1, got {n}")
        return int(n)

    def _loop(self, acts: torch.Tensor) -> dict:
        """The shared training-loop arguments: ``n_latents``, epochs, batch size, learning rate, seed."""
        return {"n_latents": self._n_latents(acts.shape[1]), "epochs": int(self.epochs),
                "batch_size": int(self.batch_size), "lr": float(self.lr), "seed": self.seed}

    def _need(self) -> SAE:
        if self.sae is None:
            raise HarnessError(f"{self.name}: call fit() before encode() / decode()")
        return self.sae

    def encode(self, acts: torch.Tensor, grads: torch.Tensor | None = None) -> SparseCodes | torch.Tensor:
        return self._need().encode(acts.to(self.device))

    def decode(self, codes: SparseCodes | torch.Tensor) -> torch.Tensor:
        sae = self._need()  # the task hands the validated codes over on the CPU; the weights may be elsewhere
        return sae.decode(codes_to(codes, sae.W_dec.device)).cpu()


@register_method("topk-sae", version="1",
                 description="TopK SAE with AuxK (Gao et al. 2024); sparse backward, embedding-bag decode")
class TopKSAE(_SAEMethod):
    def __init__(self, k: int | None = None, expansion: int = 4, n_latents: int | None = None, epochs: int = 6,
                 batch_size: int = 512, lr: float = 5e-3, auxk_coef: float = 1 / 32):
        self.k, self.expansion, self.n_latents = k, expansion, n_latents
        self.epochs, self.batch_size, self.lr, self.auxk_coef = epochs, batch_size, lr, auxk_coef

    def fit(self, acts: torch.Tensor, grads: torch.Tensor | None = None) -> "_SAEMethod":
        self.sae, self.last_train_stats = train_topk_sae(
            acts.to(self.device), self._n_latents(acts.shape[1]), default_k(acts.shape[1], self.k),
            epochs=int(self.epochs), batch_size=int(self.batch_size), lr=float(self.lr), seed=self.seed,
            auxk_coef=float(self.auxk_coef),
        )
        return self


@register_method("g-sae", version="1",
                 description="gradient-TopK SAE (Olmo et al. 2024): TopK over z + beta*z*|W_dec^T grad L|")
class GradientTopKSAE(_SAEMethod):
    uses_gradients = True

    def __init__(self, k: int | None = None, beta: float = 1.0, expansion: int = 4, n_latents: int | None = None,
                 epochs: int = 6, batch_size: int = 512, lr: float = 5e-3, auxk_coef: float = 1 / 32,
                 grad_at_encode: bool = True):
        self.k, self.beta, self.expansion, self.n_latents = k, beta, expansion, n_latents
        self.epochs, self.batch_size, self.lr, self.auxk_coef = epochs, batch_size, lr, auxk_coef
        self.grad_at_encode = grad_at_encode

    def fit(self, acts: torch.Tensor, grads: torch.Tensor | None = None) -> "_SAEMethod":
        if grads is None:
            raise HarnessError("g-sae needs downstream-loss gradients, and this task provides none")
        self.sae, self.last_train_stats = train_topk_sae(
            acts.to(self.device), self._n_latents(acts.shape[1]), default_k(acts.shape[1], self.k),
            epochs=int(self.epochs), batch_size=int(self.batch_size), lr=float(self.lr), seed=self.seed,
            auxk_coef=float(self.auxk_coef), grads=grads.to(self.device), grad_beta=float(self.beta),
        )
        return self

    def encode(self, acts: torch.Tensor, grads: torch.Tensor | None = None) -> SparseCodes | torch.Tensor:
        sae = self._need()
        if not self.grad_at_encode:
            return sae.replace(grad_beta=0.0).encode(acts.to(self.device))
        if grads is None:
            raise HarnessError("g-sae encodes with gradients (grad_at_encode=True) but got none")
        return sae.encode(acts.to(self.device), grads.to(self.device))


@register_method("relu-sae", version="1",
                 description="ReLU SAE with an L1 penalty (L0 set by l1_coef)")
class ReLUSAE(_SAEMethod):
    def __init__(self, l1_coef: float = 0.1, expansion: int = 4, n_latents: int | None = None, epochs: int = 6,
                 batch_size: int = 512, lr: float = 1e-2):
        self.l1_coef, self.expansion, self.n_latents = l1_coef, expansion, n_latents
        self.epochs, self.batch_size, self.lr = epochs, batch_size, lr

    def fit(self, acts: torch.Tensor, grads: torch.Tensor | None = None) -> "_SAEMethod":
        self.sae, self.last_train_stats = train_relu_sae(
            acts.to(self.device), self._n_latents(acts.shape[1]), l1_coef=float(self.l1_coef),
            epochs=int(self.epochs), batch_size=int(self.batch_size), lr=float(self.lr), seed=self.seed,
        )
        return self


@register_method("argmax-sae", version="1",
                 description="argmax-code ReLU SAE after O'Neill & Bui 2024 (harness trainer, not discrete-sae's): "
                             "code = argmax latent, L0 = 1")
class ArgmaxSAE(_SAEMethod):
    def __init__(self, n_latents: int = 200, l1_coef: float = 0.1, epochs: int = 6, batch_size: int = 512,
                 lr: float = 1e-2):
        self.n_latents, self.l1_coef = n_latents, l1_coef
        self.epochs, self.batch_size, self.lr = epochs, batch_size, lr

    def fit(self, acts: torch.Tensor, grads: torch.Tensor | None = None) -> "_SAEMethod":
        self.sae, self.last_train_stats = train_relu_sae(
            acts.to(self.device), int(self.n_latents), l1_coef=float(self.l1_coef), epochs=int(self.epochs),
            batch_size=int(self.batch_size), lr=float(self.lr), seed=self.seed, config=ArgmaxConfig(),
        )
        return self


@register_method("jumprelu-sae", version="1",
                 description="JumpReLU SAE (Rajamanoharan et al. 2024, 'Jumping Ahead'): learned per-latent "
                             "thresholds, L0 penalty through straight-through estimators (L0 set by l0_coef)")
class JumpReLUSAE(_SAEMethod):
    default_suite_tasks = KNOWN_TRUTH_TASKS

    def __init__(self, l0_coef: float = 0.03, bandwidth: float = 0.1, init_threshold: float = 1.0,
                 expansion: int = 4, n_latents: int | None = None, epochs: int = 6, batch_size: int = 512,
                 lr: float = 5e-3):
        self.l0_coef, self.bandwidth, self.init_threshold = l0_coef, bandwidth, init_threshold
        self.expansion, self.n_latents = expansion, n_latents
        self.epochs, self.batch_size, self.lr = epochs, batch_size, lr

    def fit(self, acts: torch.Tensor, grads: torch.Tensor | None = None) -> "_SAEMethod":
        self.sae, self.last_train_stats = train_jumprelu_sae(
            acts.to(self.device), l0_coef=float(self.l0_coef), bandwidth=float(self.bandwidth),
            init_threshold=float(self.init_threshold), **self._loop(acts),
        )
        return self


@register_method("batchtopk-sae", version="1",
                 description="BatchTopK SAE (Bussmann et al. 2024): top k*B activations per training batch, one "
                             "global threshold at inference; AuxK, sparse backward")
class BatchTopKSAE(TopKSAE):
    """TopK's parameters, BatchTopK's training and inference."""

    default_suite_tasks = KNOWN_TRUTH_TASKS

    def fit(self, acts: torch.Tensor, grads: torch.Tensor | None = None) -> "_SAEMethod":
        self.sae, self.last_train_stats = train_batchtopk_sae(
            acts.to(self.device), k=default_k(acts.shape[1], self.k), auxk_coef=float(self.auxk_coef),
            **self._loop(acts),
        )
        return self


@register_method("matryoshka-sae", version="1",
                 description="Matryoshka SAE (Bussmann et al. 2025): BatchTopK codes, loss summed over nested "
                             "dictionary prefixes (levels halvings)")
class MatryoshkaSAE(_SAEMethod):
    default_suite_tasks = KNOWN_TRUTH_TASKS

    def __init__(self, k: int | None = None, levels: int = 5, expansion: int = 4, n_latents: int | None = None,
                 epochs: int = 6, batch_size: int = 512, lr: float = 5e-3, auxk_coef: float = 1 / 32):
        self.k, self.levels, self.expansion, self.n_latents = k, levels, expansion, n_latents
        self.epochs, self.batch_size, self.lr, self.auxk_coef = epochs, batch_size, lr, auxk_coef

    def fit(self, acts: torch.Tensor, grads: torch.Tensor | None = None) -> "_SAEMethod":
        self.sae, self.last_train_stats = train_matryoshka_sae(
            acts.to(self.device), k=default_k(acts.shape[1], self.k), levels=int(self.levels),
            auxk_coef=float(self.auxk_coef), **self._loop(acts),
        )
        return self


@register_method("user-sae", version="1",
                 description="your own SAE: path=DIR with sae.safetensors (W_enc, b_enc, W_dec, b_dec) + sae.json")
class UserSAE(_SAEMethod):
    """Evaluate a pretrained SAE without writing code: ``--methods user-sae --param path=DIR``.

    ``k`` (optional) overrides the JSON's ``k`` of a topk SAE (so ``--grid k=...``
    sweeps a TopK SAE's sparsity at inference).
    """

    selftest_params: dict = {}  # nothing to shorten: it loads the user's SAE

    in_default_suite = False
    input_keys = ("path",)  # the SAE directory: its content joins the cell's identity

    def __init__(self, path: str | None = None, k: int | None = None):
        self.path, self.k = path, k

    def fit(self, acts: torch.Tensor, grads: torch.Tensor | None = None) -> "_SAEMethod":
        if not self.path:
            raise ConfigError("user-sae needs path=DIR (a directory with sae.safetensors and sae.json)")
        sae = load_sae(self.path, k=self.k).to(self.device)
        if sae.d_in != acts.shape[1]:
            raise HarnessError(f"the SAE at {self.path} reads d_in = {sae.d_in} but this task's activations have "
                               f"d = {acts.shape[1]}")
        self.sae = sae
        return self
