"""Hugging Face GPT-2-family models as a :class:`~harness.models.base.HookedModel`.

The per-head output ``z`` is the *input* of each layer's ``attn.c_proj`` (the
heads' outputs concatenated, ``[b, s, H * d_head]``). A forward pre-hook on
every ``c_proj`` reshapes it to ``[b, s, H, d_head]`` and hands it to the active
``z_fn`` (which runs the hooks at ``blocks.{l}.attn.hook_z``); with no ``z_fn``
active the hooks do nothing, so the wrapped model behaves exactly as before.

The primitives are the model's own modules, which the forward template
(:mod:`harness.models.forward`) drives block by block: ``wte + wpe``, then per
layer ``ln_1`` -> ``attn`` (the real ``GPT2Attention``, given an additive causal mask built here,
its ``c_proj`` hooked) ->
residual -> ``ln_2`` -> MLP -> residual, then ``ln_f`` and ``lm_head``. So a run
can start from a cached residual stream at any layer, and in position mode
(:meth:`_attn_at`) compute attention for just the one query position read out
in the last block. The MLP's tanh-GELU runs as one
fused ``F.gelu(approximate="tanh")`` kernel instead of transformers' Python
``NewGELUActivation`` (same function, rounding-level differences, about a third
of the CPU time otherwise); pass ``fused_gelu=False`` for the module itself.
Uses no private transformers function; tested under the oldest and newest transformers that
``pyproject.toml`` admits (README); ``Conv1D`` weights are ``[in, out]``.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from harness.errors import HarnessError
from harness.models.base import HookedModel, ZFn


# transformers' names for the tanh approximation of GELU (NewGELU, FastGELU, GELUTanh): the same
# function written differently; GPT-2 uses "gelu_new", a chain of ~8 element-wise kernels on CPU.
_TANH_GELUS = ("gelu_new", "gelu_fast", "gelu_pytorch_tanh")


class HFGPT2(HookedModel):
    """Wrap a ``transformers.GPT2LMHeadModel`` and its tokenizer.

    The model is put in eval mode and (with ``freeze=True``, the default) its
    parameters stop requiring gradients: :meth:`head_gradients` differentiates
    with respect to ``z`` only and does not need them.
    """

    def __init__(self, model, tokenizer, model_id: str = "gpt2", device: torch.device | str | None = None,
                 freeze: bool = True, fused_gelu: bool = True):
        config = model.config
        if getattr(config, "model_type", None) != "gpt2" or not hasattr(model, "transformer"):
            raise HarnessError(
                f"HFGPT2 wraps GPT-2-family models (GPT2LMHeadModel); got {type(model).__name__} "
                f"(model_type {getattr(config, 'model_type', None)!r})"
            )
        if getattr(config, "add_cross_attention", False):
            raise HarnessError("HFGPT2 does not support GPT-2 models with cross-attention")
        if device is not None:
            model = model.to(device)
        model.eval()
        if freeze:
            model.requires_grad_(False)
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.model_id = model_id
        self.n_layers = config.n_layer
        self.n_heads = config.n_head
        self.d_model = config.n_embd
        self.d_head = self.d_model // self.n_heads
        self.d_mlp = config.n_inner if config.n_inner is not None else 4 * config.n_embd
        self._blocks = list(model.transformer.h)
        self._fused_gelu = fused_gelu and config.activation_function in _TANH_GELUS
        self._z_fn: ZFn | None = None
        self._hook_handles = [
            block.attn.c_proj.register_forward_pre_hook(self._make_hook(layer))
            for layer, block in enumerate(self._blocks)
        ]

    @property
    def device(self) -> torch.device:
        return self.model.transformer.wte.weight.device

    def __repr__(self) -> str:
        return f"HFGPT2({self.model_id!r}, n_layers={self.n_layers}, n_heads={self.n_heads}, d_model={self.d_model})"

    def remove_hooks(self) -> None:
        """Detach the ``c_proj`` pre-hooks from the wrapped model (the adapter is unusable afterwards)."""
        for handle in self._hook_handles:
            handle.remove()
        self._hook_handles = []

    # --------------------------------------------------------------- hooks
    def _make_hook(self, layer: int):
        def hook(module, args):
            z_fn = self._z_fn
            if z_fn is None:
                return None
            merged = args[0]
            z = merged.reshape(*merged.shape[:-1], self.n_heads, self.d_head)
            return (z_fn(layer, z).reshape(merged.shape), *args[1:])

        return hook

    @contextlib.contextmanager
    def _hooked(self, z_fn: ZFn | None) -> Iterator[None]:
        if self._z_fn is not None:
            raise RuntimeError("HFGPT2 runs are not re-entrant")
        if not self._hook_handles:
            raise RuntimeError("this HFGPT2 adapter's hooks were removed")
        self._z_fn = z_fn
        try:
            yield
        finally:
            self._z_fn = None

    # --------------------------------------------------------------- tokens
    def _encode(self, prompt: str) -> list[int]:
        return list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])

    def _decode_one(self, token: int) -> str:
        return self.tokenizer.decode([token])

    def token_id(self, word: str) -> int | None:
        ids = self._encode(word)
        return ids[0] if len(ids) == 1 else None

    # ----------------------------------------------------------- primitives
    @property
    def W_O(self) -> torch.Tensor:
        # Conv1D computes x @ weight + bias with weight [in = H * d_head, out = d_model].
        return torch.stack([b.attn.c_proj.weight.reshape(self.n_heads, self.d_head, self.d_model) for b in self._blocks])

    @property
    def b_O(self) -> torch.Tensor:
        return torch.stack([b.attn.c_proj.bias for b in self._blocks])

    def _check_length(self, s: int) -> None:
        if s > self.config.n_positions:
            raise ValueError(f"sequence length {s} exceeds the model's context n_positions = {self.config.n_positions}")

    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        self._check_length(tokens.shape[1])
        tr = self.model.transformer
        return tr.drop(tr.wte(tokens) + tr.wpe(torch.arange(tokens.shape[1], device=tokens.device)))

    @staticmethod
    def _mask(resid: torch.Tensor) -> torch.Tensor:
        """The additive causal mask ``[1, 1, s, s]`` (0 where a query may attend, the dtype's minimum elsewhere).

        Built here, not by transformers' mask helpers (private, and their signature changes between
        releases); every attention implementation (eager, sdpa) of every release adds it to the scores.
        """
        s = resid.shape[1]
        future = torch.ones(s, s, dtype=torch.bool, device=resid.device).triu(1)
        return torch.zeros(s, s, dtype=resid.dtype, device=resid.device).masked_fill(
            future, torch.finfo(resid.dtype).min)[None, None]

    def _attn(self, layer: int, resid: torch.Tensor, z_fn: ZFn | None) -> torch.Tensor:
        block = self._blocks[layer]
        with self._hooked(z_fn):
            attn_out = block.attn(block.ln_1(resid), attention_mask=self._mask(resid))[0]
        return resid + attn_out

    def _scaling(self, layer: int) -> float:
        """GPT-2's attention-score scale: ``1/sqrt(d_head)`` (if ``scale_attn_weights``), ``/ (layer + 1)`` (if
        ``scale_attn_by_inverse_layer_idx``), as the model's config says."""
        scale = self.d_head ** -0.5 if getattr(self.config, "scale_attn_weights", True) else 1.0
        if getattr(self.config, "scale_attn_by_inverse_layer_idx", False):
            scale /= float(layer + 1)
        return scale

    def _mlp(self, layer: int, resid_mid: torch.Tensor) -> torch.Tensor:
        block = self._blocks[layer]
        mlp = block.mlp
        if self._fused_gelu:  # same function as the block's GELU module, one fused kernel
            h = mlp.c_proj(torch.nn.functional.gelu(mlp.c_fc(block.ln_2(resid_mid)), approximate="tanh"))
        else:
            h = mlp(block.ln_2(resid_mid))
        return resid_mid + h

    def _attn_at(self, layer: int, resid: torch.Tensor, z_fn: ZFn | None, position: int) -> torch.Tensor:
        """Attention for one query position: keys/values up to it, then ``c_proj`` there only, ``[b, 1, d]``."""
        block = self._blocks[layer]
        attn = block.attn
        p, b = position, resid.shape[0]
        q, k, v = attn.c_attn(block.ln_1(resid[:, : p + 1])).split(self.d_model, dim=2)
        q = q[:, p:].reshape(b, 1, self.n_heads, self.d_head).transpose(1, 2)  # [b, H, 1, d]
        k = k.reshape(b, p + 1, self.n_heads, self.d_head).transpose(1, 2)  # [b, H, p+1, d]
        v = v.reshape(b, p + 1, self.n_heads, self.d_head).transpose(1, 2)
        weights = torch.softmax((q @ k.transpose(-1, -2)) * getattr(attn, "scaling", self._scaling(layer)), dim=-1)
        z = (weights @ v).transpose(1, 2)  # [b, 1, H, d_head]
        if z_fn is not None:
            z = z_fn(layer, z)
        return resid[:, p : p + 1] + attn.c_proj(z.reshape(b, 1, self.d_model))  # c_proj's hook inactive here

    def _ln_final(self, resid: torch.Tensor) -> torch.Tensor:
        return self.model.transformer.ln_f(resid)

    @property
    def _W_U(self) -> torch.Tensor:
        return self.model.lm_head.weight

    @property
    def _b_U(self) -> torch.Tensor | None:
        return self.model.lm_head.bias
