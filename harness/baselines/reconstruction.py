"""Reference methods of the reconstruction family, each at the sparsity of the SAE it is compared with.

``k`` defaults to ``d // 12`` as for the TopK SAEs
(:func:`harness.protocols.reconstruction.default_k`).

- ``pca``: the top-``k`` principal components of the train split (so L0 = ``k``,
  the same number of active dimensions as a TopK SAE with that ``k``); codes
  are the ``k`` coefficients.  The best any rank-``k`` linear code can do in
  squared error, but dense: every token uses the same ``k`` directions.
- ``random-dict``: a random Gaussian dictionary of ``expansion * d`` unit atoms
  (seeded) and matching pursuit with ``k`` steps on the centred activations
  (L0 <= ``k``): what sparsity alone buys without learning the dictionary.
- ``identity``: codes = the activations, decode = identity (the upper bound:
  FVU 0, loss recovered 1, L0 = d).
"""

from __future__ import annotations

import torch

from harness.errors import ConfigError, HarnessError
from harness.protocols.reconstruction import ReconstructionMethod, SparseCodes, default_k
from harness.core.registry import register_method
from harness.sae.kernels import sparse_decode


@register_method("pca", version="1", baseline=True,
                 description="top-k principal components of the train split (L0 = k)")
class PCABaseline(ReconstructionMethod):
    def __init__(self, k: int | None = None):
        self.k = k

    def fit(self, acts: torch.Tensor) -> "PCABaseline":
        acts = acts.double()
        k = default_k(acts.shape[1], self.k)
        if not 1 <= k <= acts.shape[1]:
            raise ConfigError(f"pca needs 1 <= k <= d = {acts.shape[1]}, got k = {k}")
        self.mean_ = acts.mean(0)
        centred = acts - self.mean_
        # eigenvectors of the d x d covariance, largest first (float64 for stable ordering)
        evals, evecs = torch.linalg.eigh(centred.t() @ centred)
        order = torch.argsort(evals, descending=True)[:k]
        comps = evecs[:, order]
        # fix the sign (largest-magnitude entry positive) so the code is deterministic
        signs = torch.sign(comps.gather(0, comps.abs().argmax(0, keepdim=True)))
        self.components_ = (comps * signs).float()  # [d, k]
        self.mean_ = self.mean_.float()
        return self

    def encode(self, acts: torch.Tensor) -> torch.Tensor:
        return (acts.float() - self.mean_) @ self.components_

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return codes.float() @ self.components_.t() + self.mean_


@register_method("random-dict", version="1", baseline=True,
                 description="random unit dictionary (expansion*d atoms) + k-step matching pursuit (L0 <= k)")
class RandomDictionary(ReconstructionMethod):
    def __init__(self, k: int | None = None, expansion: int = 4):
        self.k, self.expansion = k, expansion

    def fit(self, acts: torch.Tensor) -> "RandomDictionary":
        d = acts.shape[1]
        n = int(self.expansion) * d
        self.k_ = default_k(d, self.k)
        if not 1 <= self.k_ <= n:
            raise ConfigError(f"{self.name} needs 1 <= k <= n_latents = {n}, got k = {self.k_}")
        gen = torch.Generator().manual_seed(int(self.seed))
        D = torch.randn(n, d, generator=gen)
        self.atoms_ = D / D.norm(dim=1, keepdim=True)
        self.gram_ = self.atoms_ @ self.atoms_.t()  # [n, n]
        self.mean_ = acts.float().mean(0)
        return self

    @torch.no_grad()
    def encode(self, acts: torch.Tensor, chunk_rows: int = 2048) -> SparseCodes:
        if not hasattr(self, "atoms_"):
            raise HarnessError("random-dict: call fit() first")
        k = self.k_
        N = acts.shape[0]
        idx = torch.empty(N, k, dtype=torch.long)
        val = torch.empty(N, k)
        for i in range(0, N, chunk_rows):
            r = acts[i : i + chunk_rows].float() - self.mean_
            corr = r @ self.atoms_.t()  # correlations with every atom, updated through the Gram matrix
            rows = torch.arange(r.shape[0])
            for j in range(k):
                best = corr.abs().argmax(1)
                coef = corr[rows, best]
                idx[i : i + r.shape[0], j] = best
                val[i : i + r.shape[0], j] = coef
                corr -= coef[:, None] * self.gram_[best]
        return SparseCodes(idx, val, self.atoms_.shape[0])

    def decode(self, codes: SparseCodes) -> torch.Tensor:
        return sparse_decode(codes.indices, codes.values, self.atoms_, self.mean_)


@register_method("identity", version="1", baseline=True,
                 description="codes = activations, decode = identity (upper bound; L0 = d)")
class IdentityBaseline(ReconstructionMethod):
    def fit(self, acts: torch.Tensor) -> "IdentityBaseline":
        return self

    def encode(self, acts: torch.Tensor) -> torch.Tensor:
        return acts.float().clone()

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return codes.float().clone()
