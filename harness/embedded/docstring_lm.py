"""The embedded language model: a small GPT trained on the standard library's documentation.

``docstring-gpt``: 3 layers, 4 heads, width 96, MLP 384, context 64, a
2,048-word vocabulary (word-level; ``<doc>`` starts each document, ``<unk>``
stands for rarer words), trained deterministically (seed 0, one thread) with
AdamW on the ``train`` split of :func:`harness.data.corpus.documents`
for :data:`RECIPE` ``.steps`` steps.  The model card records the recipe, the
corpus hash, the held-out (``val`` split) cross-entropy next to the unigram
baseline, and the build time.

Besides the weights the model directory holds ``sae_tokens.safetensors``:
the ``sae`` split (documents neither trained nor validated on) cut into
64-token windows, the token set the reconstruction tasks gather activations
from, so that they do not depend on the local Python's documentation.

Loading order (:func:`load_docstring_gpt`): the committed directory
``harness/embedded/weights/docstring-gpt``, then ``<cache>/models/docstring-gpt``,
else build into the cache (about two minutes on 2 cores).  A directory whose
card has another recipe version is skipped.
"""

from __future__ import annotations

import platform
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from harness.core.seeding import torch_threads
from harness.embedded import registry
from harness.embedded.recipe import GPTRecipe, Log
from harness.embedded.schedule import warmup_cosine
from harness.models.gpt import GPT, GPT_CARD, GPTConfig, HookedGPT, load_gpt, save_gpt
from harness.models.tokenizer import WordTokenizer
from harness.data import corpus


NAME = "docstring-gpt"
COMMITTED_DIR = registry.WEIGHTS_DIR / NAME
SAE_TOKENS = "sae_tokens.safetensors"
DOC, UNK = "<doc>", "<unk>"

@dataclass(frozen=True)
class DocstringLMRecipe(GPTRecipe):
    """Sizes and training of ``docstring-gpt`` (the card's ``recipe``; the values are :data:`RECIPE`'s).

    Schedule: a cosine over all ``steps`` from step 0 to zero, times a linear
    warm-up factor over the first ``warmup`` steps.
    """

    recipe_version: int = 1  # a directory built by another version is rebuilt, not used
    vocab_size: int = 2048  # words, including <doc> and <unk>
    seed: int = 0  # torch.manual_seed of the weights and the generator of the training windows
    batch_size: int = 32  # windows per step

    def lr_at(self, step: int) -> float:
        return warmup_cosine(step, steps=self.steps, lr=self.lr, warmup=self.warmup, decay_from_start=True)


RECIPE = DocstringLMRecipe(n_layers=3, n_heads=4, d_model=96, d_mlp=384, n_ctx=64, steps=1200, lr=3e-3, warmup=100,
                           weight_decay=0.1, betas=(0.9, 0.95), grad_clip=1.0, threads=1)


# ---------------------------------------------------------------------- data
def build_vocab(docs: list[str], size: int) -> WordTokenizer:
    """``<doc>``, ``<unk>`` and the ``size - 2`` most frequent words (ties alphabetical)."""
    counts = Counter(w for d in docs for w in corpus.words(d))
    common = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: size - 2]
    return WordTokenizer([DOC, UNK] + [w for w, _ in common])


def encode_stream(docs: list[str], tok: WordTokenizer) -> torch.Tensor:
    """One int64 token stream ``[n]``: each document's words after a ``<doc>`` token."""
    doc_id, unk = tok.token_to_id(DOC), tok.token_to_id(UNK)
    ids: list[int] = []
    for d in docs:
        ids.append(doc_id)
        for w in corpus.words(d):
            i = tok.token_to_id(w)
            ids.append(unk if i is None else i)
    return torch.tensor(ids, dtype=torch.long)


def windows(stream: torch.Tensor, n_ctx: int) -> torch.Tensor:
    """The stream cut into ``[n, n_ctx]`` consecutive windows (the remainder dropped)."""
    n = stream.numel() // n_ctx
    return stream[: n * n_ctx].view(n, n_ctx).clone()


@torch.no_grad()
def mean_ce(model: GPT, wins: torch.Tensor, batch: int = 128) -> float:
    """Mean next-token cross-entropy (nats) of ``model`` over the windows ``[n, s]``."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, wins.shape[0], batch):
        w = wins[i : i + batch]
        logits = model(w)
        ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1), reduction="sum")
        total += float(ce)
        count += w[:, 1:].numel()
    return total / count


def unigram_ce(train: torch.Tensor, val_wins: torch.Tensor, vocab: int) -> float:
    """Cross-entropy (nats) of the add-one unigram distribution of ``train`` on the windows' next tokens."""
    counts = torch.bincount(train, minlength=vocab).double() + 1.0
    logp = (counts / counts.sum()).log()
    return float(-logp[val_wins[:, 1:].reshape(-1)].mean())


# ---------------------------------------------------------------------- build
def _train(r: DocstringLMRecipe, train: torch.Tensor, vocab_size: int, log: Log) -> tuple[GPT, float]:
    """Train on random ``n_ctx + 1``-token chunks of the stream ``train``; returns the model and seconds."""
    with torch_threads(r.threads):
        torch.manual_seed(r.seed)
        gen = torch.Generator().manual_seed(r.seed)
        cfg = GPTConfig(n_layers=r.n_layers, n_heads=r.n_heads, d_model=r.d_model, d_mlp=r.d_mlp,
                        vocab_size=vocab_size, n_ctx=r.n_ctx)
        model = GPT(cfg)
        opt = r.adamw(model)
        offsets = torch.arange(r.n_ctx + 1)
        model.train()
        t_train = time.perf_counter()
        for step in range(r.steps):
            r.set_lr(opt, step)
            starts = torch.randint(0, train.numel() - r.n_ctx - 1, (r.batch_size,), generator=gen)
            chunk = train[starts[:, None] + offsets]
            logits = model(chunk[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1))
            r.update(opt, model, loss)
            if log and step % 100 == 0:
                log(f"step {step} loss {loss.item():.3f} ({time.perf_counter() - t_train:.0f} s)")
        return model, time.perf_counter() - t_train


def build_docstring_gpt(directory: str | Path, steps: int | None = None, log: Log = None) -> HookedGPT:
    """Train ``docstring-gpt`` from scratch and save it (weights, card, SAE token windows) in ``directory``.

    Deterministic: seed 0 and one thread (the thread count is restored after).
    ``steps`` overrides the recipe (tests build tiny models).
    """
    from safetensors.torch import save_file

    r = RECIPE if steps is None else replace(RECIPE, steps=int(steps))
    t_start = time.perf_counter()
    docs = corpus.documents()
    split = {name: [d for d in docs if corpus.split_of(d) == name] for name in ("train", "val", "sae")}
    tok = build_vocab(split["train"], r.vocab_size)
    train = encode_stream(split["train"], tok)
    val_w = windows(encode_stream(split["val"], tok), r.n_ctx)
    sae_w = windows(encode_stream(split["sae"], tok), r.n_ctx)
    model, train_s = _train(r, train, len(tok), log)
    with torch_threads(r.threads):
        model.eval()
        val_ce = mean_ce(model, val_w)
    card = {
        "name": NAME,
        "description": MODEL.description,
        "recipe": r.to_dict(),
        "corpus": {
            "source": "ast docstrings of the stdlib .py files + pydoc_data.topics",
            "python": platform.python_version(),
            "hash": corpus.text_hash(docs),
            "documents": {k: len(v) for k, v in split.items()},
            "train_tokens": int(train.numel()),
            "val_windows": int(val_w.shape[0]),
            "sae_windows": int(sae_w.shape[0]),
            "unk_rate_val": float((val_w == tok.token_to_id(UNK)).double().mean()),
        },
        "heldout_ce": round(val_ce, 5),
        "unigram_ce": round(unigram_ce(train, val_w, len(tok)), 5),
        "n_params": int(sum(p.numel() for p in model.parameters())),
        "build_seconds": round(time.perf_counter() - t_start, 1),
        "train_seconds": round(train_s, 1),
        "torch": torch.__version__,
    }
    hooked = HookedGPT(model, tok, model_id=NAME, card=card)
    save_gpt(hooked, directory)
    save_file({"windows": sae_w.to(torch.int32).contiguous()}, str(Path(directory) / SAE_TOKENS))
    return hooked


class DocstringLM(registry.EmbeddedModel):
    """``docstring-gpt`` in the embedded-model registry (weights and SAE token windows are compared)."""

    card_format = GPT_CARD
    atol = 1e-5

    def build(self, directory: Path, log: Log = print) -> Path:
        """Train (about two minutes) and write weights, card and SAE token windows into ``directory``."""
        build_docstring_gpt(directory, log=log)
        return Path(directory)

    def is_current(self, directory: Path) -> bool:
        """A saved GPT with its SAE token windows, built by this recipe version."""
        card: dict[str, Any] | None = self.card_format.card(directory)
        return (card is not None and (Path(directory) / SAE_TOKENS).is_file()
                and card.get("recipe", {}).get("recipe_version") == RECIPE.recipe_version)


MODEL = registry.register(DocstringLM(
    NAME, "reconstruction", "small GPT trained on the Python standard library's docstrings and pydoc topics"))


def load_docstring_gpt(cache_dir: Path, device: torch.device | str = "cpu") -> tuple[HookedGPT, torch.Tensor, Path]:
    """``(model, sae_windows [n, 64] int64, directory)``; the model's parameters are frozen."""
    from safetensors.torch import load_file

    directory = MODEL.locate(Path(cache_dir) / "models")
    model = load_gpt(directory, device=device)
    model.model.requires_grad_(False)
    wins = load_file(str(directory / SAE_TOKENS))["windows"].long()
    return model, wins, directory
