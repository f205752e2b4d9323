"""SAEs saved by other libraries: which layout a directory has, loading SAELens and sparsify SAEs, exporting to SAELens.

The file names decide the layout (:func:`detect_layout`):

============ ============================================ ==============================================
layout       files                                        tensors
============ ============================================ ==============================================
``harness``  ``sae.safetensors`` + ``sae.json``           :mod:`harness.sae.io`
``saelens``  ``sae_weights.safetensors`` + ``cfg.json``   ``W_enc`` ``[d_in, d_sae]``, ``b_enc`` ``[d_sae]``,
                                                          ``W_dec`` ``[d_sae, d_in]``, ``b_dec`` ``[d_in]``
``sparsify`` ``sae.safetensors`` + ``cfg.json``           ``encoder.weight`` ``[num_latents, d_in]``,
                                                          ``encoder.bias``, ``W_dec`` ``[num_latents, d_in]``,
                                                          ``b_dec``
============ ============================================ ==============================================

SAELens (``SAE.save_model``; ``cfg.json`` of version 6, or of 5 with ``activation_fn_str`` /
``activation_fn_kwargs``): ``architecture`` ``"standard"`` is
``relu((x - b_dec) W_enc + b_enc)`` (the harness's ``relu``); ``"topk"`` (or 5's
``"standard"`` with ``activation_fn_str: "topk"``) keeps the ``k`` largest pre-activations,
ReLU'd (the harness's ``topk``).  ``rescale_acts_by_decoder_norm`` (TopK: select and
scale by ``pre * |W_dec_i|``, decode ``acts / |W_dec_i|``) is folded into the weights, which
gives the same codes.  ``apply_b_dec_to_input`` is kept; ``reshape_activations: "hook_z"``
needs nothing (the harness's z rows are the heads concatenated in that order).  Refused,
with the reason: other architectures (``jumprelu``, ``gated``, transcoders, ...; any
tensor besides the four), ``normalize_activations`` other than ``"none"`` (a per-input or
dataset-wide rescaling the files alone do not define), a fine-tuning scaling factor.

sparsify (``SparseCoder.save_to_disk``): ``cfg.json`` holds ``d_in``, ``k``,
``num_latents`` (0: ``expansion_factor * d_in``) and flags; codes are the ``k`` largest
``relu((x - b_dec) W^T + b)`` (the harness's ``topk``; ReLU before or after the top-k
gives the same codes).  Refused: ``activation: "groupmax"``, transcoders
(``transcode``), skip connections (``W_skip``), ``signed``.

:func:`save_saelens` writes the harness's ``relu``, ``topk`` (not a g-SAE's gradient
selection) and ``argmax`` (= TopK with ``k = 1``) SAEs in SAELens 6's layout.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch

from harness.core.card import read_json_object, read_safetensors, write_safetensors
from harness.core.io import atomic_write_text
from harness.errors import ConfigError, HarnessError
from harness.sae.io import SAE_JSON, SAE_WEIGHTS
from harness.sae.model import SAE
from harness.sae.registry import get_architecture

SAELENS_WEIGHTS, SAELENS_CFG = "sae_weights.safetensors", "cfg.json"
SPARSIFY_WEIGHTS, SPARSIFY_CFG = "sae.safetensors", "cfg.json"
#: layout -> (weights file, config file); checked in this order, the first whose two files exist wins
LAYOUTS = {
    "harness": (SAE_WEIGHTS, SAE_JSON),
    "saelens": (SAELENS_WEIGHTS, SAELENS_CFG),
    "sparsify": (SPARSIFY_WEIGHTS, SPARSIFY_CFG),
}
#: the SAELens format version :func:`save_saelens` writes (``metadata.sae_lens_version``)
SAELENS_FORMAT = "6.0.0"


def detect_layout(directory: str | Path) -> str:
    """``"harness"``, ``"saelens"`` or ``"sparsify"`` from the files in ``directory``; :class:`ConfigError`
    naming every layout's files when none matches."""
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise ConfigError(f"SAE directory {directory} does not exist (or is not a directory)")
    for layout, files in LAYOUTS.items():
        if all((directory / f).is_file() for f in files):
            return layout
    expected = "; ".join(f"{name}: {' + '.join(files)}" for name, files in LAYOUTS.items())
    nested = sorted(p.name for p in directory.iterdir() if p.is_dir() and (p / SPARSIFY_CFG).is_file())
    hint = f" (its sub-directories {', '.join(nested[:5])} hold cfg.json: pass one of them)" if nested else ""
    raise ConfigError(f"{directory} holds no SAE in a layout the harness reads{hint}; expected one of: {expected}")


def _tensors(path: Path, names: dict[str, str]) -> dict[str, torch.Tensor]:
    """``{our name: float32 tensor}`` of the file's tensors ``names`` (file name -> our name); any other tensor
    in the file is refused (it belongs to an architecture the harness does not have)."""
    t = read_safetensors(path)
    if "scaling_factor" in t and bool((t["scaling_factor"] == 1).all()):
        del t["scaling_factor"]  # SAELens wrote an all-ones factor for a while: no effect
    missing = [n for n in names if n not in t]
    extra = sorted(set(t) - set(names))
    if missing or extra:
        raise ConfigError(f"{path}: expected exactly the tensors {', '.join(names)}"
                          + (f"; missing {', '.join(missing)}" if missing else "")
                          + (f"; unsupported extra {', '.join(extra)} (an architecture the harness lacks)"
                             if extra else ""))
    return {ours: t[theirs].float() for theirs, ours in names.items()}


def _check_dims(path: Path, cfg: dict[str, Any], W_dec: torch.Tensor, keys: tuple[str, str]) -> None:
    """``cfg[keys[0]]`` (the input width) and ``cfg[keys[1]]`` (the latents, when given and non-zero) fit ``W_dec``."""
    n, d = W_dec.shape
    for key, want in zip(keys, (d, n)):
        if cfg.get(key) and int(cfg[key]) != want:
            raise ConfigError(f"{path} says {key} = {cfg[key]} but the weights have {want}")


def _build(arch: str, W_enc: torch.Tensor, b_enc: torch.Tensor, W_dec: torch.Tensor, b_dec: torch.Tensor,
           saved: dict[str, Any], k: int | None, info: dict[str, Any]) -> SAE:
    """An :class:`SAE` of the harness architecture ``arch`` (``W_enc`` ``[n, d]``); ``saved`` as ``sae.json``'s
    config entries, ``k`` overriding a saved ``k``."""
    try:
        config = get_architecture(arch).from_json(saved, {"k": k})
        return SAE(W_enc.contiguous(), b_enc, W_dec.contiguous(), b_dec, config, info=info)
    except ConfigError as e:
        raise ConfigError(f"{info.get('path')}: {e}") from None


# ---------------------------------------------------------------------- SAELens
def _saelens_architecture(cfg: dict[str, Any], where: Path) -> tuple[str, int | None]:
    """``(harness architecture, k)`` of a SAELens ``cfg.json`` (version 6, or 5's ``activation_fn_str``)."""
    arch = cfg.get("architecture", "standard")
    act = cfg.get("activation_fn", cfg.get("activation_fn_str", "relu"))
    k = cfg.get("k", (cfg.get("activation_fn_kwargs") or {}).get("k"))
    if arch == "topk" or (arch == "standard" and act == "topk"):
        return "topk", k
    if arch == "standard" and act == "relu":
        return "relu", None
    raise ConfigError(f"{where}: SAELens architecture {arch!r} (activation {act!r}) has no harness equivalent; "
                      "supported: 'standard' (ReLU) and 'topk'")


def _saelens_checks(cfg: dict[str, Any], where: Path) -> None:
    """Refuse what changes the computation beyond the four tensors (see the module docstring)."""
    norm = cfg.get("normalize_activations", "none")
    if norm not in ("none", None, False):
        raise ConfigError(f"{where}: normalize_activations = {norm!r} rescales the activations by factors the files "
                          "do not hold; fold them into the weights (SAELens: fold_activation_norm_scaling_factor) "
                          "and save with normalize_activations = 'none'")
    if cfg.get("finetuning_scaling_factor"):
        raise ConfigError(f"{where}: a fine-tuning scaling factor of the codes is not supported")
    if cfg.get("reshape_activations", "none") not in ("none", "hook_z"):
        raise ConfigError(f"{where}: reshape_activations = {cfg['reshape_activations']!r} is not supported")


def load_saelens(directory: str | Path, k: int | None = None) -> SAE:
    """An SAE saved by SAELens (``cfg.json`` + ``sae_weights.safetensors``); ``k`` overrides a TopK SAE's ``k``."""
    directory = Path(directory).expanduser()
    cfg = read_json_object(directory / SAELENS_CFG)
    arch, saved_k = _saelens_architecture(cfg, directory / SAELENS_CFG)
    _saelens_checks(cfg, directory / SAELENS_CFG)
    t = _tensors(directory / SAELENS_WEIGHTS, {"W_enc": "W_enc", "b_enc": "b_enc", "W_dec": "W_dec", "b_dec": "b_dec"})
    W_enc, b_enc, W_dec = t["W_enc"].t(), t["b_enc"], t["W_dec"]
    if W_dec.dim() != 2 or W_enc.shape != W_dec.shape:
        raise ConfigError(f"{directory / SAELENS_WEIGHTS}: W_enc must be [d_in, d_sae] and W_dec [d_sae, d_in]; got "
                          f"{list(t['W_enc'].shape)} and {list(W_dec.shape)}")
    _check_dims(directory / SAELENS_CFG, cfg, W_dec, ("d_in", "d_sae"))
    if arch == "topk" and cfg.get("rescale_acts_by_decoder_norm"):
        norms = W_dec.norm(dim=1)  # select on pre * |W_dec_i|, decode acts / |W_dec_i|: fold into the weights
        W_enc, b_enc, W_dec = W_enc * norms[:, None], b_enc * norms, W_dec / norms[:, None]
    saved = {"k": saved_k, "apply_b_dec_to_input": bool(cfg.get("apply_b_dec_to_input", True))}
    return _build(arch, W_enc, b_enc, W_dec, t["b_dec"], saved, k, {"path": str(directory), "layout": "saelens"})


# ---------------------------------------------------------------------- sparsify
def load_sparsify(directory: str | Path, k: int | None = None) -> SAE:
    """A sparse coder saved by EleutherAI's sparsify (``cfg.json`` + ``sae.safetensors``); ``k`` overrides its ``k``."""
    directory = Path(directory).expanduser()
    where = directory / SPARSIFY_CFG
    cfg = read_json_object(where)
    for flag, why in (("transcode", "a transcoder predicts another activation than its input"),
                      ("skip_connection", "a skip connection adds x W_skip to the reconstruction"),
                      ("signed", "signed codes are not ReLU'd")):
        if cfg.get(flag):
            raise ConfigError(f"{where}: {flag} = true is not supported ({why})")
    if cfg.get("activation", "topk") != "topk":
        raise ConfigError(f"{where}: activation {cfg.get('activation')!r} is not supported (only 'topk')")
    if "d_in" not in cfg or "k" not in cfg:
        raise ConfigError(f"{where}: a sparsify cfg.json has 'd_in' and 'k'; this one has {', '.join(sorted(cfg))}")
    t = _tensors(directory / SPARSIFY_WEIGHTS,
                 {"encoder.weight": "W_enc", "encoder.bias": "b_enc", "W_dec": "W_dec", "b_dec": "b_dec"})
    _check_dims(where, cfg, t["W_dec"], ("d_in", "num_latents"))
    saved = {"k": cfg["k"], "apply_b_dec_to_input": True}
    return _build("topk", t["W_enc"], t["b_enc"], t["W_dec"], t["b_dec"], saved, k,
                  {"path": str(directory), "layout": "sparsify"})


LOADERS: dict[str, Callable[..., SAE]] = {"saelens": load_saelens, "sparsify": load_sparsify}


def load_foreign(directory: str | Path, layout: str, k: int | None = None) -> SAE:
    """Load ``directory`` of a detected non-harness ``layout`` (see :data:`LOADERS`)."""
    try:
        return LOADERS[layout](directory, k=k)
    except KeyError:
        raise HarnessError(f"no loader for SAE layout {layout!r}; known: {', '.join(LOADERS)}") from None


# ---------------------------------------------------------------------- export
def _saelens_config(sae: SAE) -> dict[str, Any]:
    """The SAELens ``architecture`` and ``k`` entries of ``sae``'s ``cfg.json``."""
    name, config = sae.architecture, sae.config
    if name == "relu":
        return {"architecture": "standard"}
    if name == "argmax":  # the largest ReLU'd pre-activation: TopK with k = 1
        return {"architecture": "topk", "k": 1, "rescale_acts_by_decoder_norm": False}
    if name == "topk" and getattr(config, "grad_beta", 0.0) <= 0:
        return {"architecture": "topk", "k": int(config.k), "rescale_acts_by_decoder_norm": False}
    if name == "topk":
        raise ConfigError("a g-SAE selects latents with downstream gradients, which SAELens cannot; export "
                          "sae.replace(grad_beta=0.0) to save it as a plain TopK SAE")
    raise ConfigError(f"an SAE of architecture {name!r} has no SAELens equivalent; exportable: relu, topk, argmax")


def save_saelens(sae: SAE, directory: str | Path) -> Path:
    """Write ``sae`` as SAELens 6 saves one (``cfg.json`` + ``sae_weights.safetensors``, float32) into ``directory``."""
    directory = Path(directory)
    cfg = {
        **_saelens_config(sae),
        "d_in": sae.d_in, "d_sae": sae.n_latents, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": bool(sae.config.apply_b_dec_to_input), "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {"sae_lens_version": SAELENS_FORMAT, "sae_lens_training_version": SAELENS_FORMAT},
    }
    tensors = {"W_enc": sae.W_enc.t().float(), "b_enc": sae.b_enc.float(), "W_dec": sae.W_dec.float(),
               "b_dec": sae.b_dec.float()}
    write_safetensors(directory / SAELENS_WEIGHTS, tensors)
    atomic_write_text(directory / SAELENS_CFG, json.dumps(cfg, indent=2) + "\n")
    return directory
