"""Hooked transformer models: one small interface (:class:`HookedModel`) and its adapters.

- :class:`HookedGPT` over the harness's own small GPT (:mod:`harness.models.gpt`);
- :class:`HFGPT2` over Hugging Face GPT-2-family models (:mod:`harness.models.hf_gpt2`);
- :class:`MiniLM`, the all-MiniLM-L6-v2 sentence encoder with hook points (:mod:`harness.models.minilm`);
- named hook points (``blocks.{l}.attn.hook_z``, ``blocks.{l}.hook_resid_pre``, ...) listed by
  ``hook_points()`` and used through ``run_with_hooks`` / ``run_from`` / ``run_with_cache``;
- :func:`load_model` turns a model spec (``"gpt2"`` or a directory) into one of them.
"""

from harness.models.base import FwdHooks, HookedModel, HookFn, ZFn
from harness.models.gpt import GPT, GPTConfig, HookedGPT, load_gpt, save_gpt
from harness.models.loading import hf_cache_dir, load_model
from harness.models.minilm import MiniLM, load_minilm
from harness.models.tokenizer import WordTokenizer


def __getattr__(name: str):
    # HFGPT2 imports transformers lazily only when used (transformers is slow to import).
    if name == "HFGPT2":
        from harness.models.hf_gpt2 import HFGPT2

        return HFGPT2
    raise AttributeError(f"module 'harness.models' has no attribute {name!r}")


__all__ = [
    "FwdHooks",
    "GPT",
    "GPTConfig",
    "HFGPT2",
    "HookedGPT",
    "HookFn",
    "HookedModel",
    "MiniLM",
    "WordTokenizer",
    "ZFn",
    "hf_cache_dir",
    "load_gpt",
    "load_minilm",
    "load_model",
    "save_gpt",
]
