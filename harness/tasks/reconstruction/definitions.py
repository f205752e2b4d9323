"""The registered reconstruction tasks: ``reconstruction/<source>-<hook>``.

| task | activations | main metric |
|---|---|---|
| ``reconstruction/embedded-resid`` | docstring-gpt, residual stream after block 1 (of 3), d = 96 | loss_recovered |
| ``reconstruction/embedded-z`` | docstring-gpt, block 1's heads' outputs concatenated, d = 96 | loss_recovered |
| ``reconstruction/minilm-resid`` | all-MiniLM-L6-v2, hidden state after layer 3 (of 6), d = 384 | explained_variance |
| ``reconstruction/minilm-z`` | all-MiniLM-L6-v2, layer 3's heads' outputs concatenated, d = 384 | explained_variance |
| ``reconstruction/gpt2-resid`` | GPT-2 small (local HF cache), residual after block 6, d = 768 | loss_recovered |
| ``reconstruction/gpt2-z`` | GPT-2 small, block 6's heads' outputs concatenated, d = 768 | loss_recovered |

The GPT-2 tasks are not in the default suite (``in_default_suite = False``):
they run when named, and fail with a clear message when GPT-2 is not cached.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from harness.core.context import RunContext
from harness.errors import ConfigError
from harness.core.registry import register_task
from harness.tasks.reconstruction.base import COMMON_METRICS, EMBEDDING_METRICS, LM_METRICS, ReconstructionTask
from harness.tasks.reconstruction.sources import MINILM_ID, HookedLMSource, MiniLMSource, Source

_MODELS: dict[tuple, Any] = {}  # loaded models, per process (3 seeds x 2 hooks share one)
_SOURCES: dict[tuple, Source] = {}  # sources keep the clean downstream reference


def _split(n_pool: int, n_train: int, n_test: int, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed permutation of the pool: the first ``n_test`` items are the test split, the next ``n_train`` train."""
    if n_train + n_test > n_pool:
        raise ConfigError(f"n_train + n_test = {n_train + n_test} exceeds the {n_pool} {what} available")
    perm = torch.randperm(n_pool, generator=torch.Generator().manual_seed(1234))
    return perm[n_test : n_test + n_train], perm[:n_test]


def _memo_source(key: tuple, make) -> Source:
    if key not in _SOURCES:
        if len(_SOURCES) > 8:
            _SOURCES.clear()
        _SOURCES[key] = make()
    return _SOURCES[key]


# ====================================================================== embedded LM
class _EmbeddedLMTask(ReconstructionTask):
    metrics = COMMON_METRICS + LM_METRICS
    main_metric = "loss_recovered"
    default_config = {"model": "docstring-gpt", "layer": 1, "n_train": 256, "n_test": 64}

    def make_source(self, config: Mapping[str, Any], ctx: RunContext) -> Source:
        from harness.embedded import docstring_lm as lm

        if config["model"] != lm.NAME:
            raise ConfigError(f"task {self.name!r} reads the embedded model {lm.NAME!r}; got model {config['model']!r}")
        n_train, n_test = self._positive_int(config, "n_train"), self._positive_int(config, "n_test")
        layer = int(config["layer"])
        mkey = ("docstring-gpt", str(ctx.cache_dir), str(ctx.device))
        if mkey not in _MODELS:
            model, windows, directory = lm.load_docstring_gpt(ctx.cache_dir, device=ctx.device)
            fingerprint = _file_hash(directory / "model.safetensors")
            _MODELS[mkey] = (model, windows, fingerprint)
        model, windows, fingerprint = _MODELS[mkey]
        tr, te = _split(windows.shape[0], n_train, n_test, "64-token windows of the held-out docstrings")
        return _memo_source(
            (mkey, self.hook, layer, n_train, n_test),
            lambda: HookedLMSource(model, windows[tr], windows[te], layer, self.hook, fingerprint),
        )


@register_task("reconstruction/embedded-resid", family="reconstruction", version="1",
               description="SAE fidelity on docstring-gpt's residual stream after block 1 (d=96)")
class EmbeddedResid(_EmbeddedLMTask):
    hook = "resid"


@register_task("reconstruction/embedded-z", family="reconstruction", version="1",
               description="SAE fidelity on docstring-gpt's concatenated head outputs z of block 1 (d=96)")
class EmbeddedZ(_EmbeddedLMTask):
    hook = "z"


# ====================================================================== MiniLM
class _MiniLMTask(ReconstructionTask):
    metrics = COMMON_METRICS + EMBEDDING_METRICS
    main_metric = "explained_variance"
    default_config = {"model": MINILM_ID, "layer": 3, "n_train": 400, "n_test": 150, "max_tokens": 64}

    def make_source(self, config: Mapping[str, Any], ctx: RunContext) -> Source:
        from harness.tasks.reconstruction import corpus
        from harness.tasks.reconstruction.sources import load_minilm

        if config["model"] != MINILM_ID:
            raise ConfigError(f"task {self.name!r} reads {MINILM_ID!r}; got model {config['model']!r}")
        n_train, n_test = self._positive_int(config, "n_train"), self._positive_int(config, "n_test")
        max_tokens = self._positive_int(config, "max_tokens")
        layer = int(config["layer"])
        mkey = ("minilm", str(ctx.device))
        if mkey not in _MODELS:
            _MODELS[mkey] = load_minilm(ctx.device)
        model, tokenizer, fingerprint = _MODELS[mkey]
        sents = corpus.sentences()
        tr, te = _split(len(sents), n_train, n_test, "sentences of the pydoc language reference")
        # sentences sorted by length inside each split: batches need little padding
        train = sorted((sents[i] for i in tr.tolist()), key=lambda t: (len(t), t))
        test = sorted((sents[i] for i in te.tolist()), key=lambda t: (len(t), t))
        return _memo_source(
            (mkey, self.hook, layer, n_train, n_test, max_tokens),
            lambda: MiniLMSource(model, tokenizer, fingerprint, train, test, layer, self.hook, max_tokens=max_tokens),
        )


@register_task("reconstruction/minilm-resid", family="reconstruction", version="1",
               description="SAE fidelity on all-MiniLM-L6-v2's hidden state after layer 3 (d=384), real sentences")
class MiniLMResid(_MiniLMTask):
    hook = "resid"


@register_task("reconstruction/minilm-z", family="reconstruction", version="1",
               description="SAE fidelity on all-MiniLM-L6-v2's concatenated head outputs of layer 3 (d=384)")
class MiniLMZ(_MiniLMTask):
    hook = "z"


# ====================================================================== GPT-2 (when cached)
class _GPT2Task(ReconstructionTask):
    metrics = COMMON_METRICS + LM_METRICS
    main_metric = "loss_recovered"
    default_config = {"model": "gpt2", "layer": 6, "n_train": 256, "n_test": 64, "seq_len": 64}
    in_default_suite = False  # needs GPT-2 weights in the local Hugging Face cache

    def make_source(self, config: Mapping[str, Any], ctx: RunContext) -> Source:
        from harness.models.loading import load_model
        from harness.tasks.reconstruction import corpus

        n_train, n_test = self._positive_int(config, "n_train"), self._positive_int(config, "n_test")
        seq_len = self._positive_int(config, "seq_len")
        layer = int(config["layer"])
        spec = str(config["model"])
        mkey = ("hf", spec, str(ctx.device))
        if mkey not in _MODELS:
            model = load_model(spec, device=ctx.device)  # HarnessError with instructions when not cached
            if getattr(model, "tokenizer", None) is None:
                raise ConfigError(f"model {spec!r} has no tokenizer; the GPT-2 tasks tokenise text")
            text = "\n\n".join(d for d in corpus.documents() if corpus.split_of(d) == "sae")
            ids = torch.tensor(model.tokenizer(text)["input_ids"], dtype=torch.long)
            fingerprint = f"{model.model_id}:{sum(p.numel() for p in model.model.parameters())}:{corpus.text_hash([text])}"
            _MODELS[mkey] = (model, ids, fingerprint)
        model, ids, fingerprint = _MODELS[mkey]
        n = ids.numel() // seq_len
        windows = ids[: n * seq_len].view(n, seq_len)
        tr, te = _split(n, n_train, n_test, f"{seq_len}-token windows of the held-out docstrings")
        return _memo_source(
            (mkey, self.hook, layer, n_train, n_test, seq_len),
            lambda: HookedLMSource(model, windows[tr], windows[te], layer, self.hook, fingerprint, batch=16),
        )


@register_task("reconstruction/gpt2-resid", family="reconstruction", version="1",
               description="SAE fidelity on GPT-2 small's residual stream after block 6 (needs GPT-2 cached)")
class GPT2Resid(_GPT2Task):
    hook = "resid"


@register_task("reconstruction/gpt2-z", family="reconstruction", version="1",
               description="SAE fidelity on GPT-2 small's concatenated head outputs of block 6 (needs GPT-2 cached)")
class GPT2Z(_GPT2Task):
    hook = "z"


def _file_hash(path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]
