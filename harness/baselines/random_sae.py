"""``random-sae``: an untrained TopK SAE, the control for what training an SAE buys.

The dictionary is ``random-dict``'s (``expansion * d`` random unit rows, seeded by the cell's
seed; ``b_dec`` the train split's mean), read as an SAE: encoder = the decoder's transpose,
``b_enc = 0``, codes = the ``k`` largest ``(x - b_dec) . u_i``, ReLU'd (the ``topk``
architecture, so ``L0 <= k``, ``k = d // 12`` by default as for the trained TopK SAEs).
``random-dict`` encodes the same dictionary by matching pursuit, which picks atoms greedily
against the residual and so reconstructs far better; ``random-sae`` has the encoder of a
trained TopK SAE, so ``topk-sae`` against ``random-sae`` is what training the dictionary
adds (to the sparse probes above all).
"""

from __future__ import annotations

import torch

from harness.baselines.reconstruction import RandomDictionary
from harness.core.registry import register_method
from harness.errors import HarnessError
from harness.protocols.reconstruction import SparseCodes, codes_to
from harness.sae import SAE, TopKConfig


@register_method("random-sae", version="1", baseline=True,
                 description="untrained TopK SAE: random-dict's unit dictionary, encoder = its transpose (L0 <= k)")
class RandomSAE(RandomDictionary):
    def fit(self, acts: torch.Tensor) -> "RandomSAE":
        super().fit(acts)
        atoms = self.atoms_
        self.sae_ = SAE(atoms.clone(), torch.zeros(atoms.shape[0]), atoms, self.mean_, TopKConfig(k=self.k_))
        self.sae_.to(self.device)
        return self

    def encode(self, acts: torch.Tensor) -> SparseCodes:
        if not hasattr(self, "sae_"):
            raise HarnessError("random-sae: call fit() first")
        return self.sae_.encode(acts.to(self.device))

    def decode(self, codes: SparseCodes) -> torch.Tensor:
        return self.sae_.decode(codes_to(codes, self.sae_.W_dec.device)).cpu()
