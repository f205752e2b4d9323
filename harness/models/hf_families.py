"""Where each Hugging Face causal-LM family keeps its parts, by ``config.model_type``.

The generic adapter (:mod:`harness.models.hf_causal`) needs, per family, only public
attributes of the model: the decoder layers, each layer's attention module and its
output projection (whose *input* is the heads' outputs concatenated, ``z``), the
final norm, the sizes from the config, and whether the block has a parallel
residual (GPT-NeoX's default: ``x + attn(ln1(x)) + mlp(ln2(x))``). Adding a family
is one :class:`Family` entry; a model whose type is not here gets an error naming
the supported types.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from harness.errors import HarnessError


@dataclass(frozen=True)
class Family:
    """Attribute paths (relative to ``model.base_model``) and config keys of one model family."""

    layers: str  # the decoder layers (an nn.ModuleList)
    attn: str  # a layer's attention module
    out_proj: str  # the attention module's output projection (input: z of all heads)
    final_norm: str  # the final norm, applied to the last layer's output
    n_layers: str
    n_heads: str
    d_model: str
    d_mlp: str
    n_ctx: str
    conv1d: bool = False  # GPT-2's Conv1D stores weights [in, out], nn.Linear [out, in]

    def parallel_residual(self, config: Any) -> bool:
        """Whether attention and MLP both read the block's input (GPT-NeoX's ``use_parallel_residual``)."""
        return bool(getattr(config, "use_parallel_residual", False))


_GPT2 = Family(layers="h", attn="attn", out_proj="c_proj", final_norm="ln_f", n_layers="n_layer",
               n_heads="n_head", d_model="n_embd", d_mlp="n_inner", n_ctx="n_positions", conv1d=True)
_NEOX = Family(layers="layers", attn="attention", out_proj="dense", final_norm="final_layer_norm",
               n_layers="num_hidden_layers", n_heads="num_attention_heads", d_model="hidden_size",
               d_mlp="intermediate_size", n_ctx="max_position_embeddings")
_LLAMA = Family(layers="layers", attn="self_attn", out_proj="o_proj", final_norm="norm",
                n_layers="num_hidden_layers", n_heads="num_attention_heads", d_model="hidden_size",
                d_mlp="intermediate_size", n_ctx="max_position_embeddings")

#: ``config.model_type`` -> family. Llama-style decoders (rotary, RMSNorm, gated MLP, grouped
#: key/value heads) share one layout.
FAMILIES: dict[str, Family] = {
    "gpt2": _GPT2,
    "gpt_neox": _NEOX,
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
}


def family_of(config: Any, where: str = "the model") -> Family:
    """The :class:`Family` of a transformers config (or its ``to_dict()``); HarnessError naming the supported types."""
    model_type = config.get("model_type") if isinstance(config, dict) else getattr(config, "model_type", None)
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    archs = (config.get("architectures") if isinstance(config, dict) else getattr(config, "architectures", None)) or []
    what = ", ".join(archs) if archs else f"model_type {model_type!r}"
    raise HarnessError(
        f"{where} is a {what} model; the hooked Hugging Face adapter supports model_type "
        f"{', '.join(repr(t) for t in FAMILIES)} (GPT-2, GPT-NeoX/Pythia, Llama/Mistral/Qwen2/Qwen3); "
        "a new family is one entry in harness/models/hf_families.py"
    )


def attr_path(root: torch.nn.Module, path: str) -> Any:
    """``root.a.b`` for ``path`` ``"a.b"``; HarnessError naming the missing attribute."""
    obj = root
    for part in path.split("."):
        if not hasattr(obj, part):
            raise HarnessError(f"{type(root).__name__} has no attribute {path!r} where its family keeps it; "
                               "the model does not match its config's model_type")
        obj = getattr(obj, part)
    return obj


def out_proj_per_head(proj: torch.nn.Module, n_heads: int, conv1d: bool) -> torch.Tensor:
    """An output projection's weight per head, ``[H, d_head, d_model]`` (``z_h @ W[h]`` is head h's write)."""
    weight = proj.weight if conv1d else proj.weight.T  # [H * d_head, d_model]
    return weight.reshape(n_heads, weight.shape[0] // n_heads, weight.shape[1])
