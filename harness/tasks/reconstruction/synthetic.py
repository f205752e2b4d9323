"""Synthetic activations made of a known dictionary in superposition (the known-truth reconstruction tasks).

Per seed, on the CPU with one ``torch.Generator`` (so the data are the same on every machine and device),
seeded with :func:`stream_seed` (the cell's seed mixed with a constant by numpy's ``SeedSequence``: a
method that seeds its own generator with the plain cell seed, like ``random-dict``, must not draw the
true dictionary):

1. the dictionary: ``n_features`` directions in ``d`` dimensions, i.i.d. Gaussian rows scaled to unit norm
   (``n_features > d``: superposition, no exact orthogonal basis exists);
2. firing probabilities falling off as a power law, ``p_i = mean_active * (i + 1)^-power_law / Z`` with
   ``Z = sum_i (i + 1)^-power_law``, so that ``mean_active`` features fire per sample on average;
3. ``n_groups`` correlated groups of ``group_size`` features each (members drawn at random, disjoint): a
   feature fires when a standard Gaussian ``u_i`` exceeds ``Phi^-1(1 - p_i)``, and within a group
   ``u_i = sqrt(rho) s_g + sqrt(1 - rho) e_i`` share the group's ``s_g`` (``rho = group_correlation``), a
   Gaussian copula: the members co-fire while each keeps its firing probability ``p_i`` exactly;
4. magnitudes of active features uniform in ``[magnitude_min, magnitude_max]``;
5. ``x = sum_i c_i f_i + noise_std * N(0, I_d)`` (``c_i`` = magnitude if active, else 0).

The held-out split is drawn before the train split, so changing ``n_train`` leaves it alone.  Rows are
drawn in blocks of :data:`BLOCK` (part of the stream's definition).  :func:`generate` returns the
activations and the :class:`KnownTruth` the task scores against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from harness.errors import ConfigError

#: rows drawn per block (fixes the order of the random stream; also bounds memory: BLOCK x n_features)
BLOCK = 4096
#: mixed with the cell's seed into the generator's seed (:func:`stream_seed`)
SALT = 0x5EED_D1C7


def stream_seed(seed: int) -> int:
    """The generator's seed for the cell seed ``seed``: ``SeedSequence([seed, SALT])``'s first 63 bits."""
    return int(np.random.SeedSequence([int(seed), SALT]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


@dataclass(frozen=True)
class SyntheticConfig:
    """The generator's parameters (all of them enter a record's identity); see the module docstring."""

    d: int = 64
    n_features: int = 256
    mean_active: float = 5.0
    power_law: float = 0.5
    n_groups: int = 16
    group_size: int = 4
    group_correlation: float = 0.7
    magnitude_min: float = 0.5
    magnitude_max: float = 1.5
    noise_std: float = 0.0
    n_train: int = 65536
    n_test: int = 2048


@dataclass
class KnownTruth:
    """``dictionary`` ``[n_features, d]`` (unit rows), ``frequencies`` ``[n_features]`` (firing probabilities
    ``p_i``), ``test_active`` ``[n_test, n_features]`` bool (which features fire in each held-out row)."""

    dictionary: torch.Tensor
    frequencies: torch.Tensor
    test_active: torch.Tensor


def frequencies(config: SyntheticConfig) -> torch.Tensor:
    """``p_i`` ``[n_features]`` float64 (module docstring, step 2); :class:`ConfigError` if one exceeds 1."""
    w = torch.arange(1, config.n_features + 1, dtype=torch.float64).pow(-float(config.power_law))
    p = config.mean_active * w / w.sum()
    if float(p[0]) > 1.0:
        raise ConfigError(
            f"mean_active = {config.mean_active} with power_law = {config.power_law} gives the most frequent "
            f"feature a firing probability of {float(p[0]):.3g} > 1: lower mean_active or power_law, or raise "
            f"n_features (e.g. --set power_law=0.5)"
        )
    return p


def check_config(config: SyntheticConfig) -> None:
    """:class:`ConfigError` naming the key and the fix for parameters the generator cannot honour."""
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(f"synthetic activations: {message}")

    for key in ("d", "n_features", "n_train", "n_test"):
        need(getattr(config, key) >= 1, f"{key} must be >= 1, got {getattr(config, key)} (--set {key}=...)")
    need(0 < config.mean_active <= config.n_features,
         f"mean_active must lie in (0, n_features = {config.n_features}], got {config.mean_active}")
    need(config.power_law >= 0, f"power_law must be >= 0 (0: equal frequencies), got {config.power_law}")
    need(config.n_groups >= 0, f"n_groups must be >= 0 (0: no correlated groups), got {config.n_groups}")
    need(config.n_groups == 0 or config.group_size >= 2,
         f"group_size must be >= 2 for correlated groups, got {config.group_size} (or --set n_groups=0)")
    need(config.n_groups * config.group_size <= config.n_features,
         f"n_groups * group_size = {config.n_groups * config.group_size} exceeds n_features = {config.n_features}: "
         "lower n_groups or group_size")
    need(0 <= config.group_correlation <= 1, f"group_correlation must lie in [0, 1], got {config.group_correlation}")
    need(0 <= config.magnitude_min <= config.magnitude_max and config.magnitude_max > 0,
         f"need 0 <= magnitude_min <= magnitude_max and magnitude_max > 0, got {config.magnitude_min} and "
         f"{config.magnitude_max}")
    need(config.noise_std >= 0, f"noise_std must be >= 0, got {config.noise_std}")
    frequencies(config)


class _Sampler:
    """Draws rows of (activations, active features) from one generator (module docstring, steps 3-5)."""

    def __init__(self, config: SyntheticConfig, dictionary: torch.Tensor, gen: torch.Generator) -> None:
        self.config, self.dictionary, self.gen = config, dictionary, gen
        p = frequencies(config)
        self.threshold = torch.special.ndtri(1.0 - p).float()  # u_i > threshold_i with probability p_i
        n_members = config.n_groups * config.group_size
        self.members = torch.randperm(config.n_features, generator=gen)[:n_members]
        self.group_of = torch.arange(n_members) // max(1, config.group_size)

    def draw(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x [n, d] float32, active [n, n_features] bool)``."""
        xs, actives = [], []
        for start in range(0, n, BLOCK):
            x, active = self._block(min(BLOCK, n - start))
            xs.append(x)
            actives.append(active)
        return torch.cat(xs), torch.cat(actives)

    def _block(self, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        u = torch.randn(rows, c.n_features, generator=self.gen)
        if c.n_groups:
            rho = float(c.group_correlation)
            shared = torch.randn(rows, c.n_groups, generator=self.gen)
            u[:, self.members] = math.sqrt(rho) * shared[:, self.group_of] + math.sqrt(1 - rho) * u[:, self.members]
        active = u > self.threshold
        mags = torch.rand(rows, c.n_features, generator=self.gen) * (c.magnitude_max - c.magnitude_min) + c.magnitude_min
        x = (mags * active) @ self.dictionary
        if c.noise_std > 0:
            x += c.noise_std * torch.randn(rows, c.d, generator=self.gen)
        return x, active


def generate(config: SyntheticConfig, seed: int) -> tuple[torch.Tensor, torch.Tensor, KnownTruth]:
    """``(train [n_train, d], test [n_test, d], truth)`` for ``seed``, float32 on the CPU (module docstring)."""
    check_config(config)
    gen = torch.Generator().manual_seed(stream_seed(seed))
    dictionary = torch.randn(config.n_features, config.d, generator=gen)
    dictionary /= dictionary.norm(dim=1, keepdim=True)
    sampler = _Sampler(config, dictionary, gen)
    test, test_active = sampler.draw(config.n_test)
    train, _ = sampler.draw(config.n_train)
    return train, test, KnownTruth(dictionary, frequencies(config).float(), test_active)
