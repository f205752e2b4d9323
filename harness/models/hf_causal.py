"""Hugging Face causal LMs (GPT-2, GPT-NeoX/Pythia, Llama/Mistral/Qwen2/Qwen3) as a :class:`HookedModel`.

Every run is the model's own public forward (``model.base_model(input_ids=...)``) with
PyTorch module hooks attached for its duration; no transformers function or private
attribute is used, so the adapter follows whatever attention implementation and
signature a release has. The named hook points map onto modules of the family
(:mod:`harness.models.hf_families`):

- ``hook_embed`` and ``blocks.{l}.hook_resid_pre``: the hidden state entering decoder
  layer ``l`` (a forward pre-hook on the layer; ``hook_embed`` is layer 0's, after the
  embedding dropout);
- ``blocks.{l}.attn.hook_z``: the *input* of the attention's output projection
  (``c_proj`` / ``dense`` / ``o_proj``), the heads' outputs concatenated, reshaped to
  ``[b, s, H, d_head]``;
- ``blocks.{l}.hook_resid_mid``: ``resid_pre + attention output`` (a forward hook on the
  attention module; a replacement changes the attention output to ``new - resid_pre``, so
  the layer's own sum gives ``new`` up to float rounding).
  In parallel-residual blocks (GPT-NeoX) the MLP reads ``resid_pre``, not this sum;
- ``blocks.{l}.hook_resid_post``: the layer's output (a forward hook on the layer);
- ``ln_final.hook_normalized``: the base model's last hidden state (after its final norm).

The logits are the unembedding of that state, computed here so that ``token_ids`` and
position mode read only what they need. Position mode hands the last block's hooks the
read-out position only (``s`` = 1), as the per-layer template does, though the model
computes every position. :meth:`run_from` recomputes the layers before its start on
placeholder tokens (``resumable`` is False): callers that resume often
(:meth:`~harness.models.patching.PatchingMixin.ablate_many`, the reconstruction
activations) run full forwards with hooks instead.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from harness.errors import HarnessError
from harness.models.base import HookedModel
from harness.models.forward import HookFn, _fire, point_names
from harness.models.hf_families import attr_path, family_of, out_proj_per_head


# transformers' names for the tanh approximation of GELU (NewGELU, FastGELU, GELUTanh): the same function
# written differently; GPT-2's "gelu_new" is a chain of ~8 element-wise kernels on the CPU.
_TANH_GELUS = ("gelu_new", "gelu_fast", "gelu_pytorch_tanh")


class _Stop(Exception):
    """Raised by a hook at ``stop_at`` to end the model's forward early, carrying the activation."""

    def __init__(self, value: torch.Tensor):
        super().__init__("stop")
        self.value = value


class HFCausalLM(HookedModel):
    """Wrap a transformers causal LM of a supported family and its tokenizer.

    The adapter owns the model: it is put in eval mode and (with ``freeze=True``, the default)
    its parameters stop requiring gradients (:meth:`head_gradients` differentiates with respect
    to ``z`` only). With ``fused_gelu`` (default) a GPT-2 MLP's tanh-GELU module is replaced by
    ``nn.GELU(approximate="tanh")``: the same function in one kernel (rounding-level differences).
    """

    def __init__(self, model, tokenizer, model_id: str = "hf", device: torch.device | str | None = None,
                 freeze: bool = True, fused_gelu: bool = True):
        config = model.config
        family = family_of(config, type(model).__name__)
        if getattr(config, "add_cross_attention", False) or getattr(config, "is_encoder_decoder", False):
            raise HarnessError("the hooked Hugging Face adapter supports decoder-only causal LMs without cross-attention")
        if device is not None:
            model = model.to(device)
        model.eval()
        if freeze:
            model.requires_grad_(False)
        self.model, self.tokenizer, self.config, self.model_id = model, tokenizer, config, model_id
        self.family = family
        base = model.base_model
        self._layers = list(attr_path(base, family.layers))
        self._attns = [attr_path(layer, family.attn) for layer in self._layers]
        self._projs = [attr_path(attn, family.out_proj) for attn in self._attns]
        self._norm = attr_path(base, family.final_norm)
        self.n_layers = len(self._layers)
        self.n_heads = int(getattr(config, family.n_heads))
        self.d_model = int(getattr(config, family.d_model))
        z_width = self._projs[0].weight.shape[0 if family.conv1d else 1]
        self.d_head = int(z_width) // self.n_heads
        self.d_mlp = int(getattr(config, family.d_mlp, None) or 4 * self.d_model)
        self.n_ctx = getattr(config, family.n_ctx, None)
        self.parallel_residual = family.parallel_residual(config)
        if fused_gelu and getattr(config, "activation_function", None) in _TANH_GELUS:
            for layer in self._layers:  # the same function as one fused kernel (a third of GPT-2's CPU time)
                layer.mlp.act = torch.nn.GELU(approximate="tanh")

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    def __repr__(self) -> str:
        return (f"HFCausalLM({self.model_id!r}, {self.config.model_type}, n_layers={self.n_layers}, "
                f"n_heads={self.n_heads}, d_model={self.d_model})")

    # --------------------------------------------------------------- tokens
    def _encode(self, prompt: str) -> list[int]:
        return list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])

    def _encode_offsets(self, prompt: str) -> list[tuple[int, int, int]] | None:
        """``(id, start, end)`` per token from a fast tokenizer's offset mapping (None for slow tokenizers)."""
        if not getattr(self.tokenizer, "is_fast", False):
            return None
        enc = self.tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
        return [(int(t), int(a), int(b)) for t, (a, b) in zip(enc["input_ids"], enc["offset_mapping"])]

    def _decode_one(self, token: int) -> str:
        return self.tokenizer.decode([token])

    def token_id(self, word: str) -> int | None:
        ids = self._encode(word)
        unknown = getattr(self.tokenizer, "unk_token_id", None)
        return ids[0] if len(ids) == 1 and (unknown is None or ids[0] != unknown) else None

    # ------------------------------------------------------------ weights
    @property
    def W_O(self) -> torch.Tensor:
        return torch.stack([out_proj_per_head(p, self.n_heads, self.family.conv1d) for p in self._projs])

    @property
    def b_O(self) -> torch.Tensor:
        return torch.stack([p.bias if p.bias is not None else self._W_U.new_zeros(self.d_model) for p in self._projs])

    def _ln_final(self, resid: torch.Tensor) -> torch.Tensor:
        return self._norm(resid)

    @property
    def _W_U(self) -> torch.Tensor:
        return self.model.get_output_embeddings().weight

    @property
    def _b_U(self) -> torch.Tensor | None:
        return getattr(self.model.get_output_embeddings(), "bias", None)

    # ---------------------------------------------------------------- runs
    @property
    def resumable(self) -> bool:
        """Runs can start mid-model (see :meth:`_run_from_layer`), except at a parallel block's ``hook_resid_mid``."""
        return not self.parallel_residual

    def _run(self, x: torch.Tensor, hooks: dict[str, list[HookFn]], begin: int, end: int | None,
             position: int | None, token_ids: torch.Tensor | None, sparse_logit_grad: bool) -> torch.Tensor:
        names = point_names(self.n_layers)
        final = len(names) - 1
        if begin < 0:
            if self.n_ctx is not None and x.shape[1] > int(self.n_ctx):
                raise ValueError(f"sequence length {x.shape[1]} exceeds the model's context {self.n_ctx}")
            p = None if position is None else position % x.shape[1]
            run = _Run(self, hooks, begin, end, p, None)
            h = self._forward(run, dict(input_ids=x), 0)
        else:
            self._check_start(x, names[begin])
            last_pre = 1 + 4 * (self.n_layers - 1)
            p = None if position is None else (0 if begin > last_pre else position % x.shape[1])
            h = self._run_from_layer(x, hooks, begin, end, p)
        if isinstance(h, _Stop):
            return h.value
        if begin < final:
            h = self._norm(h if p is None else h[:, p])
        h = _fire(hooks, names[final], h)
        return h if end == final else self._logits(h, token_ids, sparse_logit_grad)

    def _run_from_layer(self, act: torch.Tensor, hooks: dict[str, list[HookFn]], begin: int, end: int | None,
                        p: int | None):
        """The layers from ``begin``'s on, with ``act`` there: the base model's forward over its remaining
        layers only (the layer list shortened for the call), on zero input embeddings that the first
        remaining layer's pre-hook replaces by ``act``. Returns the last layer's output (or a _Stop)."""
        final = len(point_names(self.n_layers)) - 1
        if begin == final:
            return act
        layer, offset = divmod(begin - 1, 4) if begin > 0 else (0, 0)
        if offset == 3:  # a block's hook_resid_post: fire its hooks here, go on from the next block's input
            name = point_names(self.n_layers)[begin]
            act = _fire(hooks, name, act)
            if end == begin:
                return _Stop(act)
            if layer == self.n_layers - 1:
                return act
            begin, layer = begin + 1, layer + 1
        run = _Run(self, hooks, begin, end, p, act, mid_start=layer if offset == 2 else None)
        embeds = torch.zeros(act.shape, dtype=self.dtype, device=self.device)
        return self._forward(run, dict(inputs_embeds=embeds), layer)

    def _forward(self, run: "_Run", inputs: dict, first_layer: int):
        """The base model's forward from ``first_layer`` with ``run``'s hooks: its last hidden state before
        the final norm (hooked), or the _Stop a hook raised."""
        outputs: list[torch.Tensor] = []
        try:
            with run.attached(), self._layers_from(first_layer):
                # registered after the run's own hooks, so it sees the last layer's output after them
                handle = self._layers[-1].register_forward_hook(lambda mod, args, out: outputs.append(_first(out)))
                try:
                    self.model.base_model(**inputs, use_cache=False)
                finally:
                    handle.remove()
        except _Stop as stop:
            return stop
        return outputs[-1]

    @contextlib.contextmanager
    def _layers_from(self, first: int) -> Iterator[None]:
        """Shorten the base model's layer list to ``layers[first:]`` for one call (a public attribute)."""
        if first == 0:
            yield
            return
        base, name = self.model.base_model, self.family.layers
        full = getattr(base, name)
        setattr(base, name, torch.nn.ModuleList(self._layers[first:]))
        try:
            yield
        finally:
            setattr(base, name, full)

    def _check_start(self, act: torch.Tensor, name: str) -> None:
        if self.parallel_residual and name.endswith("hook_resid_mid"):
            raise ValueError(f"{name!r} is not a point the forward passes through in this parallel-residual "
                             "model (its MLP reads hook_resid_pre); start at a hook_resid_pre or hook_resid_post")
        if name != "ln_final.hook_normalized" and (act.dim() != 3 or act.shape[-1] != self.d_model):
            raise ValueError(f"an activation to start at {name!r} must be [batch, seq, {self.d_model}], "
                             f"got {list(act.shape)}")


class _Run:
    """The module hooks of one run: fire the named hook points, replace, stop (see the module docstring)."""

    def __init__(self, model: HFCausalLM, hooks: dict[str, list[HookFn]], begin: int, end: int | None,
                 position: int | None, start: torch.Tensor | None, mid_start: int | None = None):
        self.m, self.hooks, self.begin, self.end = model, hooks, begin, end
        self.position, self.start, self.mid_start = position, start, mid_start
        self.names = point_names(model.n_layers)
        self.resid_pre: dict[int, torch.Tensor] = {}

    def _active(self, index: int) -> bool:
        """Whether point ``index`` has work: hooks, the stop, or the run's start."""
        return index >= self.begin and (bool(self.hooks.get(self.names[index])) or index == self.end
                                        or index == self.begin)

    def _point(self, index: int, act: torch.Tensor, last_layer: bool) -> torch.Tensor:
        """Fire point ``index`` on ``act`` (the read-out position only in the last block in position mode)."""
        name, p = self.names[index], self.position
        if index == self.begin and self.start is not None:
            act = self.start.to(act.dtype)
        if p is None or not last_layer:
            act = _fire(self.hooks, name, act)
            seen = act
        else:
            sub = act[:, p : p + 1]
            seen = _fire(self.hooks, name, sub)
            if seen is not sub:
                act = torch.cat([act[:, :p], seen, act[:, p + 1 :]], dim=1)
        if index == self.end:
            raise _Stop(seen)
        return act

    @contextlib.contextmanager
    def attached(self) -> Iterator[None]:
        handles = []
        try:
            for l, (layer, attn, proj) in enumerate(zip(self.m._layers, self.m._attns, self.m._projs)):
                handles.append(layer.register_forward_pre_hook(self._pre_hook(l), with_kwargs=True))
                handles.append(proj.register_forward_pre_hook(self._z_hook(l)))
                handles.append(attn.register_forward_hook(self._mid_hook(l)))
                handles.append(layer.register_forward_hook(self._post_hook(l)))
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _pre_hook(self, l: int):
        i = 1 + 4 * l

        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            new = hidden
            if self.mid_start == l:  # a run from this block's hook_resid_mid: its attention output becomes 0
                new = self.start.to(hidden.dtype)
            if l == 0 and self._active(0):
                new = self._point(0, new, False)
            if self._active(i):
                new = self._point(i, new, False)
            self.resid_pre[l] = new
            if new is hidden:
                return None
            return ((new, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": new})

        return hook

    def _z_hook(self, l: int):
        i, m = 2 + 4 * l, self.m

        def hook(module, args):
            if not self._active(i):
                return None
            merged = args[0]
            z = merged.reshape(*merged.shape[:-1], m.n_heads, m.d_head)
            new = self._point(i, z, l == m.n_layers - 1)
            return None if new is z else (new.reshape(merged.shape), *args[1:])

        return hook

    def _mid_hook(self, l: int):
        i = 3 + 4 * l

        def hook(module, args, output):
            if not self._active(i):
                return None
            out = _first(output)
            pre = self.resid_pre[l]
            mid = pre + out
            new = self._point(i, mid, l == self.m.n_layers - 1)
            unchanged = new is mid or (not new.requires_grad and not mid.requires_grad and torch.equal(new, mid))
            if unchanged:  # read only, or the same values written back outside autograd: keep the exact output
                return None
            return _replace_first(output, new - pre)  # the layer adds pre back: new up to float rounding

        return hook

    def _post_hook(self, l: int):
        i = 4 + 4 * l

        def hook(module, args, output):
            if not self._active(i):
                return None
            out = _first(output)
            new = self._point(i, out, l == self.m.n_layers - 1)
            return None if new is out else _replace_first(output, new)

        return hook


def _first(output: Any) -> torch.Tensor:
    """A layer's hidden state: the output itself or its tuple's first item."""
    return output[0] if isinstance(output, tuple) else output


def _replace_first(output: Any, value: torch.Tensor) -> Any:
    """``output`` with its hidden state (the tensor itself or a tuple's first item) replaced by ``value``."""
    return (value, *output[1:]) if isinstance(output, tuple) else value
