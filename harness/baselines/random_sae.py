"""``random-sae``: an untrained TopK SAE, the control for what training an SAE buys.

Decoder rows: ``expansion * d`` random unit directions (Gaussian, seeded by the cell's seed);
encoder: their transpose (``W_enc = W_dec``), ``b_enc = 0``; ``b_dec`` the train split's mean;
codes: the ``k`` largest ``(x - b_dec) . u_i``, ReLU'd (the ``topk`` architecture, so
``L0 <= k``, ``k = d // 12`` by default as for the trained TopK SAEs).  Nothing is fitted but
the mean.  Unlike ``random-dict`` (matching pursuit over a random dictionary, which picks atoms
greedily against the residual and so reconstructs well), this has the same encoder as a
trained TopK SAE: the difference in sparse-probing accuracy between ``topk-sae`` and
``random-sae`` is what training the dictionary adds.
"""

from __future__ import annotations

import torch

from harness.core.registry import register_method
from harness.errors import ConfigError, HarnessError
from harness.protocols.reconstruction import ReconstructionMethod, SparseCodes, codes_to, default_k
from harness.sae import SAE, TopKConfig


@register_method("random-sae", version="1", baseline=True,
                 description="untrained TopK SAE: random unit decoder, encoder = its transpose, b_dec = mean (L0 <= k)")
class RandomSAE(ReconstructionMethod):
    def __init__(self, k: int | None = None, expansion: int = 4):
        self.k, self.expansion = k, expansion

    def fit(self, acts: torch.Tensor) -> "RandomSAE":
        d = acts.shape[1]
        n, k = int(self.expansion) * d, default_k(d, self.k)
        if not 1 <= k <= n:
            raise ConfigError(f"random-sae needs 1 <= k <= n_latents = expansion * d = {n}, got k = {k}")
        gen = torch.Generator().manual_seed(int(self.seed))
        W = torch.randn(n, d, generator=gen)
        W /= W.norm(dim=1, keepdim=True)
        self.sae_ = SAE(W.clone(), torch.zeros(n), W, acts.float().mean(0), TopKConfig(k=k)).to(self.device)
        return self

    def encode(self, acts: torch.Tensor) -> SparseCodes:
        if not hasattr(self, "sae_"):
            raise HarnessError("random-sae: call fit() first")
        return self.sae_.encode(acts.to(self.device))

    def decode(self, codes: SparseCodes) -> torch.Tensor:
        return self.sae_.decode(codes_to(codes, self.sae_.W_dec.device)).cpu()
