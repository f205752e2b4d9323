"""Synthetic multispectral scene of rock units, for the clustering family.

The scene imitates a geological-mapping image (DESIGN.md, "clustering"):

1. **Unit map.**  One white-noise field per rock unit, Gaussian-smoothed
   (``unit_sigma`` pixels) and standardised; each pixel belongs to the unit
   whose field is largest.  This gives spatially smooth, irregular outcrops.
   A unit that would cover fewer than ``min_fraction`` of the pixels has its
   field raised until it does, so every unit occurs.
2. **Spectra.**  Each unit has a reflectance spectrum that is smooth over
   wavelength: a sloped continuum times a few Gaussian absorption features.
   Units come in pairs that share a parent spectrum and differ by a small
   perturbation (shifted / deepened features, a slightly different slope),
   so some units are spectrally close and the task is not trivial.
3. **Mixing.**  Fractional abundances are the one-hot unit map smoothed with
   a Gaussian (``mix_sigma`` pixels), so pixels near a boundary are mixtures
   of neighbouring units.  Mixing is nonlinear: abundances are combined
   linearly in single-scattering albedo (an intimate-mixing approximation of
   Hapke's model, ``w = 1 - ((1 - r) / (1 + r))^2``), converted back to
   reflectance, and a bilinear term ``bilinear * sum_{i<j} a_i a_j r_i r_j``
   (multiple scattering between units, as in the generalised bilinear model)
   is added.
4. **Illumination.**  A smooth shading field (topography-like, multiplicative,
   around 1 with relative amplitude ``shading``) scales every band of a pixel.
5. **Noise.**  Additive Gaussian noise with standard deviation ``noise`` in
   reflectance units.

The ground truth of a pixel is its unit in the unit map (step 1).  Everything
is deterministic in ``seed`` (one ``numpy.random.Generator``).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def _unit_map(rng: np.random.Generator, height: int, width: int, n_units: int,
              unit_sigma: float, min_fraction: float) -> np.ndarray:
    """Integer map ``[height, width]`` with values ``0 .. n_units-1``, each present."""
    fields = np.empty((n_units, height, width))
    for k in range(n_units):
        f = ndimage.gaussian_filter(rng.standard_normal((height, width)), unit_sigma, mode="reflect")
        fields[k] = (f - f.mean()) / (f.std() + 1e-12)
    min_pixels = max(1, int(np.ceil(min_fraction * height * width)))
    for _ in range(1000):  # raise the field of any unit that is (nearly) absent
        unit_map = fields.argmax(axis=0)
        counts = np.bincount(unit_map.ravel(), minlength=n_units)
        small = np.flatnonzero(counts < min_pixels)
        if small.size == 0:
            return unit_map
        fields[small] += 0.05
    raise RuntimeError("could not place every unit in the scene; use fewer units or a larger scene")


def _spectra(rng: np.random.Generator, n_units: int, n_bands: int) -> np.ndarray:
    """Reflectance spectra ``[n_units, n_bands]`` in (0, 1), smooth over wavelength."""
    lam = np.linspace(0.0, 1.0, n_bands)

    def spectrum(level, slope, centres, widths, depths):
        r = level + slope * (lam - 0.5)
        for c, w, d in zip(centres, widths, depths):
            r = r * (1.0 - d * np.exp(-0.5 * ((lam - c) / w) ** 2))
        return r

    n_parents = (n_units + 1) // 2
    spectra = []
    for _ in range(n_parents):
        n_feat = int(rng.integers(2, 4))
        parent = dict(
            level=rng.uniform(0.25, 0.6),
            slope=rng.uniform(-0.2, 0.3),
            centres=rng.uniform(0.1, 0.9, n_feat),
            widths=rng.uniform(0.05, 0.15, n_feat),
            depths=rng.uniform(0.15, 0.5, n_feat),
        )
        for _child in range(2):  # two units per parent: similar but distinguishable
            child = dict(
                level=parent["level"] * rng.uniform(0.9, 1.1),
                slope=parent["slope"] + rng.normal(0.0, 0.05),
                centres=parent["centres"] + rng.normal(0.0, 0.03, n_feat),
                widths=parent["widths"] * rng.uniform(0.85, 1.15, n_feat),
                depths=np.clip(parent["depths"] + rng.normal(0.0, 0.08, n_feat), 0.05, 0.8),
            )
            spectra.append(spectrum(**child))
    return np.clip(np.asarray(spectra[:n_units]), 0.02, 0.95)


def make_scene(
    height: int = 64,
    width: int = 64,
    n_units: int = 6,
    n_bands: int = 16,
    noise: float = 0.02,
    seed: int = 0,
    *,
    unit_sigma: float = 6.0,
    mix_sigma: float = 1.5,
    bilinear: float = 0.5,
    shading: float = 0.15,
    min_fraction: float = 0.02,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generate a scene.

    Returns ``X`` float32 ``[height * width, n_bands]`` (reflectance per
    pixel, row-major), ``y`` int64 ``[height * width]`` (rock unit per pixel)
    and ``unit_map`` int64 ``[height, width]`` (``y`` reshaped).
    """
    if n_units < 2 or n_bands < 2 or height < 2 or width < 2:
        raise ValueError("make_scene needs n_units, n_bands, height and width >= 2")
    rng = np.random.default_rng(seed)
    unit_map = _unit_map(rng, height, width, n_units, unit_sigma, min_fraction)
    spectra = _spectra(rng, n_units, n_bands)  # [K, B]

    # abundances: one-hot map smoothed; a linear filter keeps the sum at 1
    onehot = (unit_map[None] == np.arange(n_units)[:, None, None]).astype(np.float64)
    abund = np.stack([ndimage.gaussian_filter(o, mix_sigma, mode="reflect") for o in onehot])
    abund = abund / abund.sum(axis=0, keepdims=True)  # [K, H, W]
    a = abund.reshape(n_units, -1).T  # [N, K]

    # intimate mixing: linear in single-scattering albedo
    albedo = 1.0 - ((1.0 - spectra) / (1.0 + spectra)) ** 2  # [K, B]
    w_mix = a @ albedo  # [N, B]
    gamma = np.sqrt(np.clip(1.0 - w_mix, 0.0, 1.0))
    refl = (1.0 - gamma) / (1.0 + gamma)
    # bilinear multiple-scattering term between pairs of units
    pair = np.zeros_like(refl)
    for i in range(n_units):
        for j in range(i + 1, n_units):
            pair += (a[:, i] * a[:, j])[:, None] * (spectra[i] * spectra[j])[None, :]
    refl = refl + bilinear * pair

    # illumination / shading: smooth multiplicative field around 1
    shade = ndimage.gaussian_filter(rng.standard_normal((height, width)), 2.0 * unit_sigma, mode="reflect")
    shade = 1.0 + shading * shade / (np.abs(shade).max() + 1e-12)
    refl = refl * shade.reshape(-1, 1)

    X = refl + rng.normal(0.0, noise, refl.shape)
    y = unit_map.reshape(-1).astype(np.int64)
    return X.astype(np.float32), y, unit_map.astype(np.int64)
