"""``load_model(spec, device)``: one entry point from a model spec string to a HookedModel.

Specs:
- a Hugging Face id (``"gpt2"``, ``"EleutherAI/pythia-70m"``, ...) of a supported family
  (:data:`~harness.models.hf_families.FAMILIES`: GPT-2, GPT-NeoX, Llama, Mistral, Qwen2, Qwen3):
  loaded from the local Hugging Face cache only, never downloaded;
- a directory written by :func:`harness.models.gpt.save_gpt` (holds ``gpt.json``);
- a directory written by ``save_pretrained`` holding such a model and its tokenizer.

Weights are read from safetensors only: a model whose weights exist only as pickle files
(``pytorch_model.bin``) is refused unless ``allow_pickle_weights`` (``--allow-pickle-weights``), and
then ``transformers`` still reads them with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from harness.core.card import read_json_object
from harness.errors import HarnessError
from harness.models.base import HookedModel
from harness.models.gpt import GPT_CARD, GPT_JSON, load_gpt
from harness.models.hf_families import FAMILIES, family_of

SUPPORTED_MODEL_TYPES = tuple(FAMILIES)
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")

_DOWNLOAD_HINT = (
    "python -c \"from transformers import AutoModelForCausalLM, AutoTokenizer; "
    "AutoModelForCausalLM.from_pretrained('{name}'); AutoTokenizer.from_pretrained('{name}')\""
)


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, resolved from the environment *now* (HF_HUB_CACHE, HF_HOME, XDG_CACHE_HOME)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def load_model(spec: str, device: torch.device | str = "cpu", allow_pickle_weights: bool = False) -> HookedModel:
    """Resolve a model spec (see the module docstring) to a :class:`HookedModel` on ``device``."""
    if not isinstance(spec, str) or not spec.strip():
        raise HarnessError(f"model spec must be a non-empty string, got {spec!r}")
    path = Path(spec).expanduser()
    if path.is_dir():
        return _load_directory(path, device, allow_pickle_weights)
    if path.exists():
        raise HarnessError(f"model spec {spec!r} is a file; expected a Hugging Face id such as 'gpt2' or a model directory")
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec:
        raise HarnessError(f"model directory {spec!r} does not exist")
    return _load_hub_id(spec, device, allow_pickle_weights)


def _check_safetensors(path: Path, allow_pickle_weights: bool) -> None:
    """A directory with pickle weights and no safetensors is refused unless pickle weights are allowed."""
    if allow_pickle_weights or any(path.glob("*.safetensors")):
        return
    pickled = sorted(p.name for p in path.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    if pickled:
        raise HarnessError(
            f"{path} holds its weights only as pickle files ({', '.join(pickled)}); the harness reads safetensors: "
            "re-save with model.save_pretrained(DIR) (safetensors by default), or pass --allow-pickle-weights "
            "(read with torch.load(weights_only=True))"
        )


def _load_directory(path: Path, device, allow_pickle_weights: bool = False) -> HookedModel:
    if GPT_CARD.holds(path):
        return load_gpt(path, device)
    if (path / "config.json").is_file():
        family_of(read_json_object(path / "config.json"), str(path))
        if not any((path / f).is_file() for f in _TOKENIZER_FILES):
            raise HarnessError(
                f"{path} holds a Hugging Face model but no tokenizer (none of {', '.join(_TOKENIZER_FILES)}); "
                "save it next to the model with tokenizer.save_pretrained"
            )
        _check_safetensors(path, allow_pickle_weights)
        return _load_hf(str(path), device, model_id=f"hf:{path.name}", cache_dir=None,
                        allow_pickle_weights=allow_pickle_weights)
    raise HarnessError(
        f"{path} holds no model: expected {GPT_JSON} + model.safetensors (a harness GPT written by save_gpt) "
        "or config.json + weights + tokenizer files (a causal LM written by save_pretrained)"
    )


def _load_hub_id(name: str, device, allow_pickle_weights: bool = False) -> HookedModel:
    from transformers import AutoConfig

    cache = hf_cache_dir()
    try:
        config = AutoConfig.from_pretrained(name, local_files_only=True, cache_dir=str(cache))
    except (OSError, ValueError) as e:
        hint = _DOWNLOAD_HINT.format(name=name)
        raise HarnessError(
            f"model {name!r} is not in the local Hugging Face cache ({cache}) and the harness never downloads "
            f"(it supports model types {', '.join(SUPPORTED_MODEL_TYPES)}); "
            f"on a machine with network run: {hint} -- then copy that cache here and set HF_HOME to the directory "
            f"that contains its 'hub' folder (or pass a directory written by save_pretrained or save_gpt as the model spec) "
            f"[{type(e).__name__}]"
        ) from None
    family_of(config, name)
    return _load_hf(name, device, model_id=name, cache_dir=str(cache), allow_pickle_weights=allow_pickle_weights)


def _load_hf(source: str, device, model_id: str, cache_dir: str | None, allow_pickle_weights: bool = False) -> HookedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

    from harness.models.hf_causal import HFCausalLM

    kwargs = dict(local_files_only=True, cache_dir=cache_dir)
    # safetensors only unless pickle weights are allowed (transformers then reads them with weights_only=True)
    weights = {} if allow_pickle_weights else {"use_safetensors": True}
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs, **weights).float()  # no dtype argument: renamed in 5.0
    except (OSError, ValueError) as e:
        hint = "" if allow_pickle_weights else " (safetensors only; --allow-pickle-weights also reads pickle weights)"
        raise HarnessError(f"cannot load the model weights from {source}{hint}: {e}") from None
    # A directory's tokenizer.json is the whole tokenizer (normaliser, pre-tokenizer, model): load it as
    # written. AutoTokenizer would pick a class from the model type and, in transformers 5, rebuild a
    # Qwen2/Llama tokenizer's pipeline around the saved vocabulary (a word-level tokenizer saved next to a
    # Qwen2 model then splits words differently from the one the model was trained with).
    tokenizer_cls = PreTrainedTokenizerFast if (Path(source) / "tokenizer.json").is_file() else AutoTokenizer
    try:
        tokenizer = tokenizer_cls.from_pretrained(source, **kwargs)
    except (OSError, ValueError, TypeError) as e:
        raise HarnessError(
            f"cannot load the tokenizer of {source} (save it next to the model with tokenizer.save_pretrained): {e}"
        ) from None
    if len(tokenizer) <= 1:  # transformers 5 returns an empty GPT2Tokenizer when no files are found
        raise HarnessError(f"the tokenizer of {source} is empty; save it with tokenizer.save_pretrained")
    return HFCausalLM(model, tokenizer, model_id=model_id, device=device)
