"""The embedded language model: a small GPT trained on the standard library's documentation.

``docstring-gpt``: 3 layers, 4 heads, width 96, MLP 384, context 64, a
2,048-word vocabulary (word-level; ``<doc>`` starts each document, ``<unk>``
stands for rarer words), trained deterministically (seed 0, one thread) with
AdamW on the ``train`` split of :func:`.corpus.documents` for
:data:`RECIPE` ``["steps"]`` steps.  The model card records the recipe, the
corpus hash, the held-out (``val`` split) cross-entropy next to the unigram
baseline, and the build time.

Besides the weights the model directory holds ``sae_tokens.safetensors``:
the ``sae`` split (documents neither trained nor validated on) cut into
64-token windows, the token set the reconstruction tasks gather activations
from, so that they do not depend on the local Python's documentation.

Loading order (:func:`load_docstring_gpt`): the committed directory
``harness/tasks/reconstruction/models/docstring-gpt``, then ``<cache>/models/docstring-gpt``,
else build into the cache (about two minutes on 2 cores).  A directory whose
card has another recipe version is skipped.
"""

from __future__ import annotations

import math
import platform
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F

from harness.errors import HarnessError
from harness.models.gpt import GPT, GPT_JSON, GPTConfig, HookedGPT, is_gpt_dir, load_gpt, save_gpt
from harness.core.seeding import torch_threads
from harness.models.tokenizer import WordTokenizer
from harness.tasks.reconstruction import corpus

NAME = "docstring-gpt"
COMMITTED_DIR = Path(__file__).parent / "models" / NAME
SAE_TOKENS = "sae_tokens.safetensors"

RECIPE = {
    "recipe_version": 1,
    "vocab_size": 2048,
    "n_layers": 3,
    "n_heads": 4,
    "d_model": 96,
    "d_mlp": 384,
    "n_ctx": 64,
    "seed": 0,
    "steps": 1200,
    "batch_size": 32,
    "lr": 3e-3,
    "warmup": 100,
    "weight_decay": 0.1,
    "betas": [0.9, 0.95],
    "grad_clip": 1.0,
    "threads": 1,
}

DOC, UNK = "<doc>", "<unk>"


# ---------------------------------------------------------------------- data
def build_vocab(docs, size: int) -> WordTokenizer:
    counts = Counter(w for d in docs for w in corpus.words(d))
    common = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: size - 2]
    return WordTokenizer([DOC, UNK] + [w for w, _ in common])


def encode_stream(docs, tok: WordTokenizer) -> torch.Tensor:
    doc_id, unk = tok.token_to_id(DOC), tok.token_to_id(UNK)
    ids: list[int] = []
    for d in docs:
        ids.append(doc_id)
        for w in corpus.words(d):
            i = tok.token_to_id(w)
            ids.append(unk if i is None else i)
    return torch.tensor(ids, dtype=torch.long)


def windows(stream: torch.Tensor, n_ctx: int) -> torch.Tensor:
    n = stream.numel() // n_ctx
    return stream[: n * n_ctx].view(n, n_ctx).clone()


@torch.no_grad()
def mean_ce(model: GPT, wins: torch.Tensor, batch: int = 128) -> float:
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
    counts = torch.bincount(train, minlength=vocab).double() + 1.0
    logp = (counts / counts.sum()).log()
    return float(-logp[val_wins[:, 1:].reshape(-1)].mean())


# ---------------------------------------------------------------------- build
def build_docstring_gpt(directory: str | Path, steps: int | None = None, progress: bool = False) -> HookedGPT:
    """Train ``docstring-gpt`` from scratch and save it (weights, card, SAE token windows) in ``directory``.

    Deterministic: seed 0 and one thread (the thread count is restored after).
    ``steps`` overrides the recipe (tests build tiny models).
    """
    r = dict(RECIPE)
    if steps is not None:
        r["steps"] = int(steps)
    t_start = time.perf_counter()
    docs = corpus.documents()
    split = {name: [d for d in docs if corpus.split_of(d) == name] for name in ("train", "val", "sae")}
    tok = build_vocab(split["train"], r["vocab_size"])
    train = encode_stream(split["train"], tok)
    val_w = windows(encode_stream(split["val"], tok), r["n_ctx"])
    sae_w = windows(encode_stream(split["sae"], tok), r["n_ctx"])

    with torch_threads(r["threads"]):
        torch.manual_seed(r["seed"])
        gen = torch.Generator().manual_seed(r["seed"])
        cfg = GPTConfig(n_layers=r["n_layers"], n_heads=r["n_heads"], d_model=r["d_model"], d_mlp=r["d_mlp"],
                        vocab_size=len(tok), n_ctx=r["n_ctx"])
        model = GPT(cfg)
        decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
        no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": r["weight_decay"]},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=r["lr"], betas=tuple(r["betas"]))
        n_ctx, B, S = r["n_ctx"], r["batch_size"], r["steps"]
        offsets = torch.arange(n_ctx + 1)
        model.train()
        t_train = time.perf_counter()
        for step in range(S):
            lr = r["lr"] * min(1.0, (step + 1) / r["warmup"]) * 0.5 * (1 + math.cos(math.pi * step / S))
            for g in opt.param_groups:
                g["lr"] = lr
            starts = torch.randint(0, train.numel() - n_ctx - 1, (B,), generator=gen)
            chunk = train[starts[:, None] + offsets]
            logits = model(chunk[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), r["grad_clip"])
            opt.step()
            if progress and step % 100 == 0:
                print(f"step {step} loss {loss.item():.3f} ({time.perf_counter() - t_train:.0f} s)")
        train_s = time.perf_counter() - t_train
        model.eval()
        val_ce = mean_ce(model, val_w)
    card = {
        "name": NAME,
        "description": "small GPT trained on the Python standard library's docstrings and pydoc topics",
        "recipe": r,
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
    directory = Path(directory)
    save_gpt(hooked, directory)
    from safetensors.torch import save_file

    save_file({"windows": sae_w.to(torch.int32).contiguous()}, str(directory / SAE_TOKENS))
    return hooked


# ---------------------------------------------------------------------- load
def _usable(directory: Path) -> bool:
    if not (is_gpt_dir(directory) and (directory / SAE_TOKENS).is_file()):
        return False
    import json

    try:
        card = json.loads((directory / GPT_JSON).read_text()).get("card", {})
    except (OSError, ValueError):
        return False
    return card.get("recipe", {}).get("recipe_version") == RECIPE["recipe_version"]


def model_dir(cache_dir: Path, build: bool = True, progress: bool = False) -> Path:
    """The directory holding ``docstring-gpt``: committed, else cached, else freshly built into the cache."""
    if _usable(COMMITTED_DIR):
        return COMMITTED_DIR
    cached = Path(cache_dir) / "models" / NAME
    if _usable(cached):
        return cached
    if not build:
        raise HarnessError(f"{NAME} is neither committed ({COMMITTED_DIR}) nor cached ({cached})")
    tmp = cached.with_name(cached.name + ".building")
    build_docstring_gpt(tmp, progress=progress)
    if cached.exists():
        import shutil

        shutil.rmtree(cached)
    tmp.replace(cached)
    return cached


def load_docstring_gpt(cache_dir: Path, device: torch.device | str = "cpu") -> tuple[HookedGPT, torch.Tensor, Path]:
    """``(model, sae_windows [n, 64] int64, directory)``; the model's parameters are frozen."""
    from safetensors.torch import load_file

    directory = model_dir(cache_dir)
    model = load_gpt(directory, device=device)
    model.model.requires_grad_(False)
    wins = load_file(str(directory / SAE_TOKENS))["windows"].long()
    return model, wins, directory


def verify_build(directory: str | Path = COMMITTED_DIR, work_dir: str | Path | None = None) -> dict:
    """Rebuild ``docstring-gpt`` and compare it with ``directory`` (minutes): the check behind committing it.

    Returns ``{"same_corpus", "same_tokens", "max_weight_diff", "heldout_ce", "rebuilt_heldout_ce"}``;
    weights and held-out loss can match only when the corpus hash does (same Python documentation).
    """
    import json
    import tempfile

    from safetensors.torch import load_file

    directory = Path(directory)
    card = json.loads((directory / GPT_JSON).read_text())["card"]
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        rebuilt = build_docstring_gpt(Path(tmp) / NAME)
        a, b = load_file(str(directory / "model.safetensors")), load_file(str(Path(tmp) / NAME / "model.safetensors"))
        ta = load_file(str(directory / SAE_TOKENS))["windows"]
        tb = load_file(str(Path(tmp) / NAME / SAE_TOKENS))["windows"]
    return {
        "same_corpus": card["corpus"]["hash"] == rebuilt.card["corpus"]["hash"],
        "same_tokens": bool(ta.shape == tb.shape and torch.equal(ta, tb)),
        "max_weight_diff": max(float((a[k] - b[k]).abs().max()) for k in a) if a.keys() == b.keys() else float("inf"),
        "heldout_ce": card["heldout_ce"],
        "rebuilt_heldout_ce": rebuilt.card["heldout_ce"],
    }
