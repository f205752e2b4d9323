"""Hooked transformer models: one small interface (:class:`HookedModel`) and its adapters.

- :class:`HookedGPT` over the harness's own small GPT (:mod:`harness.models.gpt`);
- :class:`HFCausalLM` over Hugging Face causal LMs (GPT-2, GPT-NeoX, Llama, Mistral, Qwen2/3;
  :mod:`harness.models.hf_causal`);
- :class:`MiniLM`, the all-MiniLM-L6-v2 sentence encoder with hook points (:mod:`harness.models.minilm`);
- named hook points (``blocks.{l}.attn.hook_z``, ``blocks.{l}.hook_resid_pre``, ...) listed by
  ``hook_points()`` and used through ``run_with_hooks`` / ``run_from`` / ``run_with_cache``;
- :func:`load_model` turns a model spec (a Hugging Face id or a directory) into one of them.
"""

from harness.models.base import FwdHooks, HookedModel, HookFn, ZFn
from harness.models.gpt import GPT, GPTConfig, HookedGPT, load_gpt, save_gpt
from harness.models.loading import hf_cache_dir, load_model
from harness.models.minilm import MiniLM, load_minilm
from harness.models.tokenizer import WordTokenizer


def __getattr__(name: str):
    # HFCausalLM is imported lazily (its callers import transformers, which is slow to import).
    if name == "HFCausalLM":
        from harness.models.hf_causal import HFCausalLM

        return HFCausalLM
    raise AttributeError(f"module 'harness.models' has no attribute {name!r}")


__all__ = [
    "FwdHooks",
    "GPT",
    "GPTConfig",
    "HFCausalLM",
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
