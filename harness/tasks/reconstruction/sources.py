"""Activation sources: a model, a token set split into train / test, and a hook point.

Each source can

- :meth:`gather` the activations (and downstream-loss gradients, for g-SAE)
  of its train and test tokens, flattened to ``[N, d]`` rows;
- :meth:`reference`: the clean downstream numbers of the test tokens;
- :meth:`downstream`: splice a reconstruction of the test activations back
  into the model and score what survives;
- :meth:`row_tokens`: the token string of each activation row (the sparse probes' labels,
  :mod:`.probing`).

Sources: :class:`HookedLMSource` (any :class:`~harness.models.base.HookedModel`:
the embedded ``docstring-gpt``, or GPT-2 from the local Hugging Face cache),
scored by next-token loss recovered and its KL version; and
:class:`MiniLMSource` (``all-MiniLM-L6-v2`` through :class:`~harness.models.minilm.MiniLM`,
forward hooks on its BERT layers), scored by the cosine between the
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
from harness.models.minilm import MINILM_ID, LayerInput, MiniLM


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

    def row_tokens(self, split: str) -> list[str]:
        """The token string of each activation row of ``split`` (``"train"`` or ``"test"``), in row order."""
        raise NotImplementedError


def _hash_tensor(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


# ====================================================================== language models
class HookedLMSource(Source):
    """Windows of tokens through a :class:`HookedModel`; downstream = next-token CE."""

    grad_description = "d(sum of next-token cross-entropy over the window) / d(activation)"

    def __init__(self, model: HookedModel, train_tokens: torch.Tensor, test_tokens: torch.Tensor, layer: int,
                 hook: str, fingerprint: str, batch: int = 32):
        hook_acts.check_hook(model, layer, hook)
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
        keep = self.test_tokens.numel() * self.model.vocab_size <= self._KEEP_FLOATS
        batches = []
        for i in range(0, self.test_tokens.shape[0], self.batch):
            toks = self.test_tokens[i : i + self.batch].to(dev)
            x = hook_acts.resid_before(self.model, toks, self.layer)
            act = hook_acts.gather(self.model, toks, self.layer, self.hook, resid_pre=x)
            clean = hook_acts.run_from(self.model, toks, self.layer, self.hook, act, resid_pre=x)
            lp = next_token_log_probs(clean) if keep else None
            batches.append((toks, x if self.hook == "z" else None, act, lp))
        self._batches = batches


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

    def row_tokens(self, split: str) -> list[str]:
        tokens = (self.train_tokens if split == "train" else self.test_tokens).reshape(-1)
        ids, inverse = tokens.unique(return_inverse=True)
        strings = self.model.to_str_tokens(ids)
        return [strings[i] for i in inverse.tolist()]

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
class MiniLMSource(Source):
    """Sentences through all-MiniLM-L6-v2 (:class:`~harness.models.minilm.MiniLM`) at layer ``layer``.

    ``resid``: the hidden state after BERT layer ``layer`` (post-LayerNorm,
    ``blocks.{layer}.hook_resid_post``); ``z``: the input of that layer's
    ``attention.output.dense`` (the heads' outputs concatenated,
    ``blocks.{layer}.attn.hook_z``).  Rows are the non-padding tokens ([CLS] and
    [SEP] included), sentence by sentence in the given order.  Downstream: cosine
    between the clean and the spliced sentence embeddings; the spliced run starts
    from the cached input of ``layer`` and runs only the layers from there on.
    Gradients for g-SAE: there is no training loss, so each sentence gets the
    gradient of ``u . embedding`` for a fixed random unit vector ``u`` (a Jacobian
    probe: ``E[(w . g)^2]`` is proportional to how much moving the activation
    along ``w`` moves the embedding).  Both hooks are gathered in one forward and
    one backward pass (:meth:`gather_all`).
    """

    grad_description = "d(u . sentence embedding) / d(activation), u a fixed random unit vector per sentence"
    HOOKS = ("resid", "z")

    def __init__(self, model, tokenizer, fingerprint: str, train_sents, test_sents, layer: int, hook: str,
                 max_tokens: int = 64, batch: int = 64):
        self.encoder = MiniLM(model, tokenizer)
        if hook not in self.HOOKS:
            raise HarnessError(f"unknown hook {hook!r} for MiniLM; use resid or z")
        if not 0 <= layer < self.encoder.n_layers:
            raise HarnessError(f"MiniLM has layers 0..{self.encoder.n_layers - 1}; got layer {layer}")
        self.model, self.tokenizer = model, tokenizer
        self.layer, self.hook = int(layer), hook
        self.model_id = MINILM_ID
        self.d_in = self.encoder.d_model
        self.fingerprint = fingerprint
        self.train_sents, self.test_sents = list(train_sents), list(test_sents)
        self.max_tokens, self.batch = int(max_tokens), int(batch)
        self._test_cache: list[LayerInput] | None = None  # per test batch: what enters `layer`
        self._ref_emb: torch.Tensor | None = None

    def with_hook(self, hook: str) -> "MiniLMSource":
        return MiniLMSource(self.model, self.tokenizer, self.fingerprint, self.train_sents, self.test_sents,
                            self.layer, hook, self.max_tokens, self.batch)

    def cache_key(self) -> dict[str, Any]:
        h = hashlib.sha256(("\n".join(self.train_sents) + "\0" + "\n".join(self.test_sents)).encode()).hexdigest()[:16]
        return {"kind": "minilm", "fingerprint": self.fingerprint, "layer": self.layer, "hook": self.hook,
                "sentences": h, "max_tokens": self.max_tokens, "probe_seed": 0}

    def _point(self, hook: str) -> str:
        return f"blocks.{self.layer}.hook_resid_post" if hook == "resid" else f"blocks.{self.layer}.attn.hook_z"

    def _batches(self, sents):
        """Tokenised batches of consecutive sentences (sentences are not reordered)."""
        for i in range(0, len(sents), self.batch):
            yield self.encoder.tokenize(sents[i : i + self.batch], self.max_tokens)

    # --- gathering -------------------------------------------------------
    def _gather_split(self, sents, gen: torch.Generator) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        acts: dict[str, list] = {h: [] for h in self.HOOKS}
        grads: dict[str, list] = {h: [] for h in self.HOOKS}
        for enc in self._batches(sents):
            mask = enc["attention_mask"].bool()
            u = torch.nn.functional.normalize(torch.randn(mask.shape[0], self.d_in, generator=gen), dim=-1)
            got = self.encoder.acts_and_grads(enc, self.layer, u.to(self.encoder.device))
            for h in self.HOOKS:
                a, g = got[self._point(h)]
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

    def row_tokens(self, split: str) -> list[str]:
        sents = self.train_sents if split == "train" else self.test_sents
        out: list[str] = []
        for enc in self._batches(sents):  # the rows of _gather_split: non-padding tokens, sentence by sentence
            ids = enc["input_ids"][enc["attention_mask"].bool()]
            out.extend(self.tokenizer.convert_ids_to_tokens(ids.tolist()))
        return out

    # --- downstream ------------------------------------------------------
    @torch.no_grad()
    def _prepare_test(self) -> None:
        """Clean run of the test sentences: cache what enters ``layer`` and the clean embeddings."""
        if self._test_cache is not None:
            return
        cache, embs = [], []
        for enc in self._batches(self.test_sents):
            emb, start = self.encoder.embed_with_input(enc, self.layer)
            cache.append(start)
            embs.append(emb.cpu())
        self._test_cache = cache
        self._ref_emb = torch.cat(embs)

    @torch.no_grad()
    def _spliced_embeddings(self, x_hat: torch.Tensor) -> torch.Tensor:
        """Embeddings of the test sentences with the hooked activation replaced by ``x_hat`` rows."""
        self._prepare_test()
        out, row = [], 0
        for start in self._test_cache:
            mask = start.attention_mask.bool()
            n = int(mask.sum())
            if row + n > x_hat.shape[0]:
                raise HarnessError(f"reconstruction has {x_hat.shape[0]} rows; the test sentences have more tokens")
            rows = x_hat[row : row + n]
            row += n

            def replace(a, rows=rows, mask=mask):
                a = a.clone()
                a[mask] = rows.to(a.device, a.dtype)
                return a

            out.append(self.encoder.embed_from(start, self._point(self.hook), replace).cpu())
        if row != x_hat.shape[0]:
            raise HarnessError(f"reconstruction has {x_hat.shape[0]} rows but the test sentences have {row} tokens")
        return torch.cat(out)

    def reference(self) -> dict[str, float]:
        self._prepare_test()
        return {}

    def downstream(self, x_hat: torch.Tensor) -> dict[str, float]:
        return {"embedding_cosine": mean_cosine_similarity(self._ref_emb, self._spliced_embeddings(x_hat))}
