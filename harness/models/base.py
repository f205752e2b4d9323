"""The hooked-model interface every circuit method uses (DESIGN.md section 1, "Models").

:class:`HookedModel` is assembled from one mixin per job:

- :mod:`harness.models.tokens`: prompts <-> token ids (``encode``, ``to_tokens``,
  ``to_str_tokens``, ``token_id``);
- :mod:`harness.models.forward`: the forward template with named hook points
  (``hook_embed``, ``blocks.{l}.hook_resid_pre``, ``blocks.{l}.attn.hook_z``,
  ``blocks.{l}.hook_resid_mid``, ``blocks.{l}.hook_resid_post``,
  ``ln_final.hook_normalized``) and the public ways to run it (``run_with_hooks``,
  ``run_from``, ``run_with_cache``, ``logits``, ``unembed``, ``hook_points``);
- :mod:`harness.models.patching`: replacing / ablating heads (``run_with_heads_replaced``,
  ``mean_z``, ``head_results``, the batched ``ablate_many``) and interpolating them with a
  replacement (``run_with_heads_mixed``), on the hook points;
- :mod:`harness.models.gradients`: ``head_gradients``, ``replacement_gradient`` and ``mix_gradient``,
  on the hook points;
- :mod:`harness.models.edges`: edge-level runs over :class:`~harness.models.graph.EdgeGraph` (``edge_graph``,
  ``edge_run``, ``edge_gradients``, ``run_with_edges``), for adapters with split q / k / v inputs
  (``_split_qkv``: the harness GPT; others raise a ``HarnessError``);
- :mod:`harness.models.mlp_nodes`: MLP outputs as circuit nodes (``mlp_outputs``, ``run_with_mlp_replaced``,
  ``mlp_gradients``, ``mlp_replacement_gradient``), on the hook points.

Adapters implement the token primitives (``_encode``, ``_decode_one``, ``token_id``), ``W_O``,
``b_O``, ``_ln_final``, ``_W_U``, ``_b_U`` and one run between two hook points (``_run``):
:class:`~harness.models.gpt.HookedGPT` through the per-layer template of
:class:`~harness.models.layered.LayeredForward` (``_embed``, ``_attn``, ``_attn_at``, ``_mlp``),
:class:`~harness.models.hf_causal.HFCausalLM` by hooking a Hugging Face model's own forward.
Code outside :mod:`harness.models` uses public members only.

Gradient policy: :meth:`logits`, :meth:`run_with_hooks`, :meth:`run_with_cache`,
:meth:`run_with_heads_replaced` and :meth:`run_with_heads_mixed` follow the caller's grad mode (so a training
loss can include ablated runs; wrap them in ``torch.no_grad()`` for analysis);
:meth:`ablate_many` and :meth:`mean_z` always run without autograd;
:meth:`head_gradients` (and the other gradients) enable autograd themselves and return detached tensors.
"""

from __future__ import annotations

import torch

from harness.models.edges import EdgesMixin
from harness.models.forward import FwdHooks, HookedForward, HookFn, ZFn
from harness.models.gradients import GradientsMixin
from harness.models.mlp_nodes import MLPNodesMixin
from harness.models.patching import PatchingMixin
from harness.models.tokens import TokensMixin


class HookedModel(TokensMixin, HookedForward, PatchingMixin, GradientsMixin, EdgesMixin, MLPNodesMixin):
    """A transformer whose attention heads can be read, replaced and differentiated.

    Attributes: ``n_layers``, ``n_heads``, ``d_model``, ``d_head``, ``d_mlp`` (0 if
    attention-only), ``device``, ``model_id`` (a short human-readable id recorded
    in result records).
    """

    n_layers: int
    n_heads: int
    d_model: int
    d_head: int
    d_mlp: int
    device: torch.device
    model_id: str


__all__ = ["FwdHooks", "HookFn", "HookedModel", "ZFn"]
