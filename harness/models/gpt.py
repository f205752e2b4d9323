"""The harness's own small GPT, nanoGPT-style, in one readable file.

- ``GPTConfig``: sizes. ``d_mlp = 0`` gives an attention-only model; ``layer_norm``
  switches every LayerNorm (pre-LN blocks and the final one) on or off.
- ``GPT``: a plain ``nn.Module``; ``GPT(config)(tokens)`` returns logits and is
  trainable as usual. Pre-LN blocks, learned positional embeddings, causal
  multi-head attention that materialises the per-head output ``z`` ``[b, s, h,
  d_head]``, then an optional ``z_fn(layer, z) -> z`` (the per-head replaceable
  point; differentiable, so a training loss may include ablated runs), then the
  output projection ``W_O``; an optional GELU MLP. No dropout: training is
  deterministic given the seed.
- ``HookedGPT``: the :class:`~harness.models.base.HookedModel` adapter, with a
  :class:`~harness.models.tokenizer.WordTokenizer`.
- ``save_gpt`` / ``load_gpt``: safetensors weights + a JSON file (config,
  vocabulary and a free-form model card) in one directory. Never pickle.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from harness.core.card import CardFormat
from harness.errors import HarnessError
from harness.models.base import HookedModel, ZFn
from harness.models.layered import LayeredForward
from harness.models.split_qkv import SplitQKVGPT
from harness.models.tokenizer import WordTokenizer

#: The JSON file that marks a directory as one of our saved GPTs.
GPT_JSON = "gpt.json"
GPT_WEIGHTS = "model.safetensors"
GPT_FORMAT = "harness-gpt"
GPT_FORMAT_VERSION = 1


@dataclass
class GPTConfig:
    n_layers: int
    n_heads: int
    d_model: int
    d_mlp: int  # 0 = attention-only
    vocab_size: int
    n_ctx: int
    layer_norm: bool = True

    def __post_init__(self) -> None:
        for name in ("n_layers", "n_heads", "d_model", "vocab_size", "n_ctx"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"GPTConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.d_mlp < 0:
            raise ValueError(f"GPTConfig.d_mlp must be >= 0 (0 = attention-only), got {self.d_mlp}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "GPTConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown GPTConfig fields: {sorted(unknown)}")
        return cls(**data)


def _layer_norm(config: GPTConfig) -> nn.Module:
    return nn.LayerNorm(config.d_model) if config.layer_norm else nn.Identity()


class Attention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_heads, self.d_head = config.n_heads, config.d_head
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)  # W_Q, W_K, W_V of all heads
        self.out = nn.Linear(config.d_model, config.d_model)  # W_O; input is z of all heads, concatenated

    def heads(self, x: torch.Tensor, position: int | None = None) -> torch.Tensor:
        """Per-head outputs ``z`` ``[b, s, h, d_head]`` (``[b, 1, h, d_head]`` for one query ``position``)."""
        b, s, _ = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.n_heads, self.d_head).permute(2, 0, 3, 1, 4)  # each [b, h, s, d]
        if position is None:
            z = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # one query: it may attend to every key up to and including itself
            position %= s
            z = F.scaled_dot_product_attention(q[:, :, position : position + 1], k[:, :, : position + 1], v[:, :, : position + 1])
        return z.transpose(1, 2)

    def forward(self, x: torch.Tensor, z_fn: ZFn | None = None, layer: int = 0, position: int | None = None) -> torch.Tensor:
        z = self.heads(x, position)
        if z_fn is not None:  # the per-head replaceable point
            z = z_fn(layer, z)
        return self.out(z.flatten(2))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.fc_in = nn.Linear(config.d_model, config.d_mlp)
        self.fc_out = nn.Linear(config.d_mlp, config.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(F.gelu(self.fc_in(x)))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln1 = _layer_norm(config)
        self.attn = Attention(config)
        self.ln2 = _layer_norm(config) if config.d_mlp else None
        self.mlp = MLP(config) if config.d_mlp else None

    def forward_attn(self, x: torch.Tensor, z_fn: ZFn | None = None, layer: int = 0, position: int | None = None) -> torch.Tensor:
        attn_out = self.attn(self.ln1(x), z_fn, layer, position)
        residual = x if position is None else x[:, position % x.shape[1]].unsqueeze(1)
        return residual + attn_out

    def forward_mlp(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.mlp is None else x + self.mlp(self.ln2(x))

    def forward(self, x: torch.Tensor, z_fn: ZFn | None = None, layer: int = 0, position: int | None = None) -> torch.Tensor:
        """Residual after the block; with ``position``, only that position's (``[b, 1, d]``)."""
        return self.forward_mlp(self.forward_attn(x, z_fn, layer, position))


def gpt2_init_(module: nn.Module, n_layers: int, std: dict[str, float] | None = None) -> None:
    """GPT-2 initialisation of ``module``'s parameters in place, in ``named_parameters`` order.

    Biases 0, layer-norm gains 1, residual-stream outputs (``attn.out``, ``mlp.fc_out``)
    N(0, 0.02 / sqrt(2 n_layers)), parameters named in ``std`` N(0, std[name]), the rest
    N(0, 0.02).  One function for every model built from these blocks, so their
    initialisations (and seeded rebuilds) agree.
    """
    residual_std = 0.02 / math.sqrt(2 * n_layers)
    for name, p in module.named_parameters():
        if name.endswith("bias"):
            nn.init.zeros_(p)
        elif ".ln" in name or name.startswith("ln_f"):
            nn.init.ones_(p)
        elif name.endswith(("attn.out.weight", "mlp.fc_out.weight")):
            nn.init.normal_(p, std=residual_std)
        elif std and name in std:
            nn.init.normal_(p, std=std[name])
        else:
            nn.init.normal_(p, std=0.02)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_embed = nn.Embedding(config.n_ctx, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_f = _layer_norm(config)
        self.unembed = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 initialisation (:func:`gpt2_init_`)."""
        gpt2_init_(self, self.config.n_layers)

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        s = tokens.shape[1]
        if s > self.config.n_ctx:
            raise ValueError(f"sequence length {s} exceeds the model's context n_ctx = {self.config.n_ctx}")
        return self.embed(tokens) + self.pos_embed(torch.arange(s, device=tokens.device))

    def forward(self, tokens: torch.Tensor, z_fn: ZFn | None = None) -> torch.Tensor:
        """Logits ``[b, s, vocab]``; ``z_fn(layer, z)`` (optional) may rewrite each layer's ``z``."""
        x = self.embed_tokens(tokens)
        for layer, block in enumerate(self.blocks):
            x = block(x, z_fn, layer)
        return self.unembed(self.ln_f(x))


class HookedGPT(HookedModel, LayeredForward):
    """:class:`HookedModel` over our :class:`GPT` and a :class:`WordTokenizer`."""

    def __init__(self, model: GPT, tokenizer: WordTokenizer, model_id: str = "gpt", card: dict | None = None,
                 device: torch.device | str | None = None):
        if len(tokenizer) != model.config.vocab_size:
            raise ValueError(f"tokenizer has {len(tokenizer)} words but the model's vocab_size is {model.config.vocab_size}")
        if device is not None:
            model = model.to(device)
        self.model = model
        self.tokenizer = tokenizer
        self.config = model.config
        self.card = dict(card or {})
        self.model_id = model_id
        self.n_layers, self.n_heads = model.config.n_layers, model.config.n_heads
        self.d_model, self.d_head = model.config.d_model, model.config.d_head
        self.d_mlp = model.config.d_mlp

    @property
    def device(self) -> torch.device:  # follows the module if it is moved
        return self.model.embed.weight.device

    def __repr__(self) -> str:
        return f"HookedGPT({self.model_id!r}, {self.config})"

    # tokens
    def _encode(self, prompt: str) -> list[int]:
        return self.tokenizer.encode(prompt)

    def _encode_offsets(self, prompt: str) -> list[tuple[int, int, int]]:
        return self.tokenizer.encode_offsets(prompt)

    def _decode_one(self, token: int) -> str:
        return self.tokenizer.id_to_token(token)

    def token_id(self, word: str) -> int | None:
        return self.tokenizer.token_to_id(word)

    # primitives
    @property
    def W_O(self) -> torch.Tensor:
        # nn.Linear computes z_flat @ weight.T; weight.T is [H * d_head, d_model].
        return torch.stack([b.attn.out.weight.T.reshape(self.n_heads, self.d_head, self.d_model) for b in self.model.blocks])

    @property
    def b_O(self) -> torch.Tensor:
        return torch.stack([b.attn.out.bias for b in self.model.blocks])

    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(tokens)

    def _attn(self, layer: int, resid: torch.Tensor, z_fn: ZFn | None) -> torch.Tensor:
        return self.model.blocks[layer].forward_attn(resid, z_fn, layer)

    def _mlp(self, layer: int, resid_mid: torch.Tensor) -> torch.Tensor:
        return self.model.blocks[layer].forward_mlp(resid_mid)

    def _attn_at(self, layer: int, resid: torch.Tensor, z_fn: ZFn | None, position: int) -> torch.Tensor:
        return self.model.blocks[layer].forward_attn(resid, z_fn, layer, position)

    def _ln_final(self, resid: torch.Tensor) -> torch.Tensor:
        return self.model.ln_f(resid)

    @property
    def _W_U(self) -> torch.Tensor:
        return self.model.unembed.weight

    def _split_qkv(self) -> SplitQKVGPT:
        """Runs with every head's q / k / v input split out (edge-level methods, :mod:`harness.models.edges`)."""
        return SplitQKVGPT(self.model, self.edge_graph())


# ---------------------------------------------------------------- save / load
#: Saved GPT directories: ``model.safetensors`` + ``gpt.json`` (config, vocabulary, card).
GPT_CARD = CardFormat(name=GPT_FORMAT, version=GPT_FORMAT_VERSION, json_name=GPT_JSON, what="harness GPT",
                      weights_name=GPT_WEIGHTS)


def save_gpt(model: HookedGPT, directory: str | Path, card: dict | None = None) -> Path:
    """Write ``model.safetensors`` and ``gpt.json`` (config, vocabulary, card) into ``directory``.

    ``card`` (default: ``model.card``) is a free-form JSON-serialisable dict, e.g.
    the training recipe and verification numbers.
    """
    if not isinstance(model, HookedGPT):
        raise TypeError(f"save_gpt expects a HookedGPT (model + tokenizer), got {type(model).__name__}")
    meta = {
        "model_id": model.model_id,
        "config": model.config.to_dict(),
        "tokenizer": model.tokenizer.to_dict(),
        "card": dict(model.card if card is None else card),
    }
    return GPT_CARD.write(directory, model.model.state_dict(), meta)


def is_gpt_dir(directory: str | Path) -> bool:
    return GPT_CARD.holds(directory)


def load_gpt(directory: str | Path, device: torch.device | str = "cpu") -> HookedGPT:
    """Load a model written by :func:`save_gpt`."""
    directory = Path(directory)
    meta = GPT_CARD.read(directory)
    try:
        config = GPTConfig.from_dict(meta["config"])
        tokenizer = WordTokenizer.from_dict(meta["tokenizer"])
    except (KeyError, TypeError, ValueError) as e:
        raise HarnessError(f"{directory / GPT_JSON} has an invalid config or tokenizer: {e}") from None
    model = GPT(config)
    GPT_CARD.load_state(model, directory, assign=True)  # assign: keep the saved dtype
    model.eval()
    model_id = meta.get("model_id") or f"gpt:{directory.name}"
    return HookedGPT(model, tokenizer, model_id=model_id, card=meta.get("card") or {}, device=device)
