"""The on-disk format of an SAE (a user's own, or one the harness trained): save and load.

A directory with

- ``sae.safetensors``: ``W_enc`` ``[d_in, n_latents]``, ``b_enc`` ``[n_latents]``,
  ``W_dec`` ``[n_latents, d_in]``, ``b_dec`` ``[d_in]`` (the SAELens layout; any
  float dtype, read as float32), and the architecture's per-latent tensors if it has any
  (``threshold`` ``[n_latents]`` for ``jumprelu``, as in SAELens and Gemma Scope);
- ``sae.json``: ``{"activation": "topk", "k": 32}``: ``"activation"`` names a
  registered architecture (:mod:`harness.sae.registry`: ``topk`` | ``relu`` |
  ``argmax`` | ``discrete`` | ``jumprelu`` | ``batchtopk`` | ``matryoshka``), followed by its config's
  saved fields (``k`` for topk; ``k`` and ``threshold`` for batchtopk; also ``prefixes`` for
  matryoshka); optionally ``"d_in"`` / ``"n_latents"`` (checked against the
  weights) and ``"apply_b_dec_to_input"`` (default true: encode ``x - b_dec``;
  false: encode ``x``).

:func:`load_sae` also reads SAEs saved by SAELens and sparsify, told apart by their file
names (:mod:`harness.sae.interop`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from harness.core.card import read_json_object, read_safetensors, write_safetensors
from harness.core.io import atomic_write_text
from harness.errors import ConfigError, HarnessError
from harness.sae.model import SAE
from harness.sae.registry import architecture_names, get_architecture

SAE_WEIGHTS = "sae.safetensors"
SAE_JSON = "sae.json"
TENSORS = ("W_enc", "b_enc", "W_dec", "b_dec")


def save_sae(sae: SAE, directory: str | Path) -> Path:
    """Write ``sae.safetensors`` + ``sae.json`` into ``directory`` (created if needed, each file atomically)."""
    directory = Path(directory)
    tensors = {"W_enc": sae.W_enc.t(), "b_enc": sae.b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec, **sae.extra}
    write_safetensors(directory / SAE_WEIGHTS, tensors)
    meta = {"activation": sae.architecture, "d_in": sae.d_in, "n_latents": sae.n_latents,
            **sae.arch.to_json(sae.config)}
    atomic_write_text(directory / SAE_JSON, json.dumps(meta, indent=2) + "\n")
    return directory


def read_sae_dir(directory: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(sae.json as a dict, the tensors of sae.safetensors as float32)`` of an SAE directory.

    The only place that reads the files (:class:`HarnessError` with the reason if they are missing,
    unreadable, or lack a tensor); :func:`load_sae` checks what they mean.
    """
    wpath, jpath = directory / SAE_WEIGHTS, directory / SAE_JSON
    if not wpath.is_file() or not jpath.is_file():
        raise HarnessError(
            f"{directory} is not an SAE directory: expected {SAE_WEIGHTS} (W_enc [d_in, n_latents], b_enc, "
            f"W_dec [n_latents, d_in], b_dec) and {SAE_JSON} ({{\"activation\": \"topk\", \"k\": 32}})"
        )
    meta = read_json_object(jpath)
    t = read_safetensors(wpath)
    require_tensors(t, TENSORS, wpath)
    return meta, {n: v.float() for n, v in t.items() if v.is_floating_point()}


def require_tensors(t: dict[str, torch.Tensor], names: tuple[str, ...], wpath: Path, why: str = "") -> None:
    """:class:`HarnessError` naming the tensors of ``names`` that ``t`` (read from ``wpath``) lacks."""
    missing = [n for n in names if n not in t]
    if missing:
        raise HarnessError(f"{wpath} lacks tensor(s) {', '.join(missing)}{why} (has: {', '.join(sorted(t))})")


def load_sae(directory: str | Path, k: int | None = None) -> SAE:
    """Read an SAE directory (see the module docstring), or one saved by SAELens or sparsify (detected from the
    file names: :func:`harness.sae.interop.detect_layout`); ``k`` overrides the saved ``k`` (TopK SAEs)."""
    from harness.sae.interop import detect_layout, load_foreign

    directory = Path(directory).expanduser()
    layout = detect_layout(directory)
    if layout != "harness":
        return load_foreign(directory, layout, k)
    meta, t = read_sae_dir(directory)
    jpath = directory / SAE_JSON
    W_enc, b_enc, W_dec, b_dec = (t[n] for n in TENSORS)
    if W_dec.dim() != 2:
        raise HarnessError(f"W_dec must be 2-D [n_latents, d_in], got {list(W_dec.shape)}")
    n, d = W_dec.shape
    if W_enc.shape != (d, n):
        raise HarnessError(f"W_enc must be [d_in, n_latents] = {[d, n]} (W_dec is [n_latents, d_in] = {[n, d]}), "
                           f"got {list(W_enc.shape)}")
    for key, want in (("d_in", d), ("n_latents", n)):
        if key in meta and int(meta[key]) != want:
            raise HarnessError(f"{jpath} says {key} = {meta[key]} but the weights have {want}")
    name = meta.get("activation")
    if name not in architecture_names():
        raise HarnessError(f"{jpath}: 'activation' must be one of {', '.join(architecture_names())}, got {name!r}")
    arch = get_architecture(name)
    require_tensors(t, arch.extra_tensors, directory / SAE_WEIGHTS, f" (a {name} SAE needs them)")
    try:
        config = arch.from_json(meta, {"k": k})
        return SAE(W_enc.t().contiguous(), b_enc, W_dec.contiguous(), b_dec, config, info={"path": str(directory)},
                   extra={n: t[n] for n in arch.extra_tensors})
    except ConfigError as e:
        raise HarnessError(f"{directory}: {e}") from None
