"""Shared build / apply / evaluate of the reconstruction family.

Per cell: ``build`` loads the source model (memoised per process), the
gathered activations (cached on disk, see :mod:`.cache`) and the sparse probes'
token-class labels (:mod:`.probing`); ``apply`` fits the method on the train
split, encodes and decodes the held-out split (each timed), then encodes the
train rows the probes need; ``evaluate`` scores the reconstruction of the
held-out split, spliced back into the model its downstream fidelity, and the
sparse probes on the codes.

:class:`SyntheticTask` (the known-truth tasks) builds its activations from a known dictionary
(:mod:`.synthetic`) instead; there is no model, so no downstream metric and no gradients: it
scores the method's decoder directions against the true dictionary.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from harness.core.context import RunContext
from harness.errors import ConfigError, HarnessError, InvalidOutputError
from harness.metrics.dictionary import (
    RECOVERY_COSINE,
    active_set_precision_recall,
    match_latents,
    mmcs,
    recovered_fraction,
)
from harness.metrics.reconstruction import (
    activity_stats,
    code_activity,
    fvu,
    mean_cosine_similarity,
    normalized_mse,
    tokens_per_second,
)
from harness.protocols.reconstruction import (
    Codes,
    decoder_directions,
    n_latents_of,
    validate_codes,
    validate_reconstruction,
)
from harness.core.task import MetricSpec, Task
from harness.tasks.reconstruction.cache import load_or_gather
from harness.tasks.reconstruction.probing import PROBE_METRICS, ProbePlan, plan_probes, probe_metrics, token_labels
from harness.tasks.reconstruction.sources import MINILM_ID, HookedLMSource, MiniLMSource, Source
from harness.tasks.reconstruction.synthetic import KnownTruth, SyntheticConfig, check_config, generate


@dataclass
class ReconstructionData:
    """What one cell works on.  Methods see only ``train`` / ``test`` (and the gradients); ``probe`` says which
    rows the sparse probes read and their labels (None where there are no tokens: the synthetic tasks).

    ``source`` is None for synthetic activations (no model to splice into), which carry their ``truth``.
    """

    source: Source | None
    train: torch.Tensor
    test: torch.Tensor
    train_grads: torch.Tensor | None
    test_grads: torch.Tensor | None
    info: dict[str, Any] = field(default_factory=dict)
    truth: KnownTruth | None = None
    probe: ProbePlan | None = None


@dataclass
class ReconstructionOutput:
    x_hat: torch.Tensor
    l0: float
    dead_fraction: float
    n_latents: int
    fit_s: float
    encode_s: float
    decode_s: float
    codes: Codes | None = None  # the validated codes of every held-out row
    probe_codes: Codes | None = None  # the validated codes of the train rows ``data.probe.train_rows``, in that order
    directions: torch.Tensor | None = None  # [n_latents, d] decoder directions (known-truth tasks only)


FIDELITY_METRICS = (
    MetricSpec("explained_variance", True, "1 - FVU on held-out tokens (pooled, centred)", abs_tol=0.02),
    MetricSpec("fvu", False, "fraction of variance unexplained: sum|x - x_hat|^2 / sum|x - mean(x)|^2", abs_tol=0.02),
    MetricSpec("nmse", False, "normalised MSE: sum|x - x_hat|^2 / sum|x|^2 (not centred)", abs_tol=0.02),
    MetricSpec("cosine", True, "mean cosine similarity of x and x_hat per token", abs_tol=0.01),
    MetricSpec("l0", False, "mean number of active latents per held-out token", abs_tol=1.0, rel_tol=0.25),
    MetricSpec("dead_fraction", False, "fraction of latents never active on the held-out tokens", abs_tol=0.05),
    MetricSpec("n_latents", False, "dictionary size (code width)", gated=False),
    MetricSpec("train_tokens_per_s", True, "train-split tokens / fit seconds", unit="tok/s", gated=False),
    MetricSpec("encode_tokens_per_s", True, "held-out tokens / encode seconds", unit="tok/s", gated=False),
)
COMMON_METRICS = FIDELITY_METRICS + PROBE_METRICS  # every task with a model: fidelity and sparse probes

LM_METRICS = (
    MetricSpec("loss_recovered", True,
               "(CE_zero_abl - CE_recon) / (CE_zero_abl - CE_clean), reconstruction spliced in", abs_tol=0.02),
    MetricSpec("kl_recovered", True, "(KL_zero_abl - KL_recon) / KL_zero_abl, KL from the clean next-token distribution",
               abs_tol=0.02),
    MetricSpec("ce_delta", False, "CE_recon - CE_clean (nats per token)", abs_tol=0.02, rel_tol=0.1),
    MetricSpec("kl_div", False, "mean KL(clean || recon) per token (nats)", abs_tol=0.02, rel_tol=0.1),
)

EMBEDDING_METRICS = (
    MetricSpec("embedding_cosine", True, "cosine of clean and spliced sentence embeddings (held-out sentences)",
               abs_tol=0.01),
)


TRUTH_METRICS = (
    MetricSpec("mmcs", True, "mean over true features of the max |cos| with a decoder direction (Sharkey et al. 2022)",
               abs_tol=0.02),
    MetricSpec("recovered_fraction", True,
               f"fraction of true features with a decoder direction at |cos| >= {RECOVERY_COSINE}", abs_tol=0.03),
    MetricSpec("active_precision", True, "active latents whose max-cosine-matched feature is truly active "
               "(pooled over held-out samples)", abs_tol=0.03),
    MetricSpec("active_recall", True, "truly active features that some active latent is matched to "
               "(pooled over held-out samples)", abs_tol=0.03),
)


class ReconstructionTask(Task):
    """Subclasses (one per kind of activation source) set ``metrics``, ``main_metric``, ``Config`` and implement
    :meth:`make_source`; a variant sets ``hook``."""

    family: ClassVar[str] = "reconstruction"
    hook: str = "resid"
    input_keys = ()  # the embedded LM and MiniLM are named models; GPT2Task reads a model directory
    selftest = {"n_train": 8, "n_test": 4}
    #: whether the data come with downstream-loss gradients (False: gradient-aware methods are no cells)
    has_gradients: ClassVar[bool] = True

    def accepts(self, method_cls: type) -> str | None:
        if getattr(method_cls, "uses_gradients", False) and not self.has_gradients:
            return ("it needs downstream-loss gradients, and these activations come from no model "
                    "(see the protocol's 'Gradients')")
        return None

    def make_source(self, config: Any, ctx: RunContext) -> Source:
        raise NotImplementedError

    @staticmethod
    def _positive_int(config: Any, key: str) -> int:
        value = getattr(config, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"config {key!r} must be a positive integer, got {value!r}")
        return value

    def build(self, config: Any, ctx: RunContext) -> ReconstructionData:
        source = self.make_source(config, ctx)
        t0 = time.perf_counter()
        acts, cached = load_or_gather(source, ctx.cache_dir)
        gather_s = time.perf_counter() - t0
        source.reference()
        labels = {split: token_labels(source.row_tokens(split)) for split in ("train", "test")}
        for split, acts_split in (("train", acts.train), ("test", acts.test)):
            if labels[split].shape[0] != acts_split.shape[0]:
                raise HarnessError(f"{split} split: {acts_split.shape[0]} activation rows but {labels[split].shape[0]} "
                                   "tokens; clear the activation cache (<cache>/activations) and run again")
        return ReconstructionData(
            source=source, train=acts.train, test=acts.test, train_grads=acts.train_grads,
            test_grads=acts.test_grads, probe=plan_probes(labels["train"], labels["test"]),
            info={"activations_cached": cached, "gather_s": gather_s, "d_in": source.d_in,
                  "n_train": int(acts.train.shape[0]), "n_test": int(acts.test.shape[0])},
        )

    def apply(self, method: Any, data: ReconstructionData, ctx: RunContext) -> ReconstructionOutput:
        for name in ("fit", "encode", "decode"):
            if not callable(getattr(method, name, None)):
                raise InvalidOutputError(f"method {method.name!r} has no {name}(); the reconstruction protocol is "
                                         "fit(acts) -> self, encode(acts) -> codes, decode(codes) -> acts")
        call = self._protocol
        # private copies, made before the clocks start (a method may modify what it is given)
        train, test, train_g, test_g = (None if t is None else t.clone()
                                        for t in (data.train, data.test, data.train_grads, data.test_grads))
        t0 = time.perf_counter()
        call(method, "fit", train, train_g)
        t1 = time.perf_counter()
        codes = call(method, "encode", test, test_g)
        t2 = time.perf_counter()
        codes = validate_codes(codes, test.shape[0])
        x_hat = method.decode(codes)
        t3 = time.perf_counter()
        x_hat = validate_reconstruction(x_hat, tuple(data.test.shape))
        l0, dead_fraction = activity_stats(*code_activity(codes))
        probe_codes = None
        if data.probe is not None:
            rows = data.probe.train_rows  # indexing copies
            probe_codes = validate_codes(call(method, "encode", data.train[rows],
                                              None if data.train_grads is None else data.train_grads[rows]),
                                         rows.numel())
        return ReconstructionOutput(
            x_hat=x_hat, l0=l0, dead_fraction=dead_fraction,
            n_latents=n_latents_of(codes), fit_s=t1 - t0, encode_s=t2 - t1, decode_s=t3 - t2, codes=codes,
            probe_codes=probe_codes,
        )

    @staticmethod
    def _protocol(method: Any, step: str, acts: torch.Tensor, grads: torch.Tensor | None) -> Any:
        """``method.fit`` or ``method.encode`` (``step``) of ``acts``, with ``grads=grads`` when the method uses
        gradients (None when the source has none)."""
        run = getattr(method, step)
        return run(acts, grads=grads) if getattr(method, "uses_gradients", False) else run(acts)

    def evaluate(self, data: ReconstructionData, output: ReconstructionOutput) -> dict[str, float]:
        metrics = self.fidelity(data, output)
        metrics.update(data.source.downstream(output.x_hat))
        metrics.update(probe_metrics(data.probe, output.probe_codes, output.codes))
        return metrics

    def fidelity(self, data: ReconstructionData, output: ReconstructionOutput) -> dict[str, float]:
        """:data:`FIDELITY_METRICS` of the held-out reconstruction."""
        x, x_hat = data.test, output.x_hat
        f = fvu(x, x_hat)
        return {
            "explained_variance": 1.0 - f,
            "fvu": f,
            "nmse": normalized_mse(x, x_hat),
            "cosine": mean_cosine_similarity(x, x_hat),
            "l0": output.l0,
            "dead_fraction": output.dead_fraction,
            "n_latents": float(output.n_latents),
            "train_tokens_per_s": tokens_per_second(data.train.shape[0], output.fit_s),
            "encode_tokens_per_s": tokens_per_second(x.shape[0], output.encode_s),
        }


# ====================================================================== known truth
class SyntheticTask(ReconstructionTask):
    """Activations made of a known dictionary in superposition (:mod:`.synthetic`), one draw per seed, scored
    against that dictionary: :data:`TRUTH_METRICS` on the method's decoder directions
    (:func:`~harness.protocols.reconstruction.decoder_directions`) beside the fidelity metrics.  No model:
    no downstream metric, no gradients."""

    metrics = FIDELITY_METRICS + TRUTH_METRICS  # no tokens: no sparse probes
    main_metric = "mmcs"
    Config = SyntheticConfig
    has_gradients = False
    selftest = {"n_train": 1024, "n_test": 256}
    leaderboard_metrics = ("recovered_fraction", "active_precision", "active_recall", "explained_variance", "l0",
                           "dead_fraction")

    def preflight(self, config: Any, ctx: RunContext) -> None:
        check_config(config)

    def build(self, config: Any, ctx: RunContext) -> ReconstructionData:
        t0 = time.perf_counter()
        train, test, truth = generate(config, ctx.seed)
        return ReconstructionData(
            source=None, train=train, test=test, train_grads=None, test_grads=None, truth=truth,
            info={"generate_s": time.perf_counter() - t0, "d_in": config.d, "n_train": config.n_train,
                  "n_test": config.n_test, "true_l0": float(truth.test_active.sum(1).double().mean())},
        )

    def apply(self, method: Any, data: ReconstructionData, ctx: RunContext) -> ReconstructionOutput:
        output = super().apply(method, data, ctx)
        output.directions = decoder_directions(method, output.codes, data.test.shape[1])
        return output

    def evaluate(self, data: ReconstructionData, output: ReconstructionOutput) -> dict[str, float]:
        truth, directions = data.truth, output.directions
        feature, _ = match_latents(truth.dictionary, directions)
        precision, recall = active_set_precision_recall(output.codes, feature, truth.test_active)
        return {**self.fidelity(data, output), "mmcs": mmcs(truth.dictionary, directions),
                "recovered_fraction": recovered_fraction(truth.dictionary, directions),
                "active_precision": precision, "active_recall": recall}


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


@dataclass(frozen=True)
class SourceConfig:
    """Which model and layer the activations come from, and how many train / test items (windows or
    sentences) to gather; each kind of source sets its defaults (``defaults``) and may add fields."""

    model: str = ""
    layer: int = 0
    n_train: int = 256
    n_test: int = 64


@dataclass(frozen=True)
class MiniLMConfig(SourceConfig):
    """all-MiniLM-L6-v2: sentences cut at ``max_tokens`` tokens."""

    max_tokens: int = 64


@dataclass(frozen=True)
class GPT2Config(SourceConfig):
    """GPT-2 (or any supported Hugging Face causal LM, ``--model``) from the local cache or a directory:
    windows of ``seq_len`` tokens."""

    seq_len: int = 64


# ====================================================================== embedded LM
class EmbeddedLMTask(ReconstructionTask):
    metrics = COMMON_METRICS + LM_METRICS
    main_metric = "loss_recovered"
    Config = SourceConfig
    defaults = {"model": "docstring-gpt", "layer": 1}

    def preflight(self, config: Any, ctx: RunContext) -> None:
        from harness.embedded import docstring_lm as lm

        if config.model != lm.NAME:
            raise ConfigError(f"task {self.name!r} reads the embedded model {lm.NAME!r}; got model {config.model!r} "
                              "(a model of your own: the reconstruction/gpt2-* tasks)")

    def make_source(self, config: Any, ctx: RunContext) -> Source:
        from harness.embedded import docstring_lm as lm

        self.preflight(config, ctx)
        n_train, n_test = self._positive_int(config, "n_train"), self._positive_int(config, "n_test")
        layer = int(config.layer)
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


# ====================================================================== MiniLM
class MiniLMTask(ReconstructionTask):
    metrics = COMMON_METRICS + EMBEDDING_METRICS
    main_metric = "explained_variance"
    Config = MiniLMConfig
    defaults = {"model": MINILM_ID, "layer": 3, "n_train": 400, "n_test": 150}

    def preflight(self, config: Any, ctx: RunContext) -> None:
        if config.model != MINILM_ID:
            raise ConfigError(f"task {self.name!r} reads {MINILM_ID!r}; got model {config.model!r} "
                              "(a model of your own: the reconstruction/gpt2-* tasks)")

    def make_source(self, config: Any, ctx: RunContext) -> Source:
        from harness.data import corpus
        from harness.models.minilm import load_minilm

        self.preflight(config, ctx)
        n_train, n_test = self._positive_int(config, "n_train"), self._positive_int(config, "n_test")
        max_tokens = self._positive_int(config, "max_tokens")
        layer = int(config.layer)
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


# ====================================================================== GPT-2 (when cached)
class GPT2Task(ReconstructionTask):
    metrics = COMMON_METRICS + LM_METRICS
    main_metric = "loss_recovered"
    Config = GPT2Config
    defaults = {"model": "gpt2", "layer": 6}
    input_keys = ("model",)  # a directory written by save_pretrained (a Hugging Face id is no path)
    in_default_suite = False  # needs GPT-2 weights in the local Hugging Face cache

    def preflight(self, config: Any, ctx: RunContext) -> None:
        """The model loads (a directory, or a Hugging Face id in the local cache): checked before any cell runs."""
        self._model(config, ctx)

    def _model(self, config: Any, ctx: RunContext) -> tuple[Any, tuple, torch.Tensor, str]:
        """``(model, memo key, token ids of the corpus, fingerprint)``, loaded once per process and content."""
        from harness.core.inputs import content_hash
        from harness.models.loading import load_model
        from harness.data import corpus

        spec = str(config.model)
        path = Path(spec).expanduser()
        content = content_hash(path)[:16] if path.exists() else ""  # a directory: held per content
        mkey = ("hf", spec, content, str(ctx.device))
        if mkey not in _MODELS:
            # HarnessError with instructions when not cached
            model = load_model(spec, device=ctx.device, allow_pickle_weights=ctx.allow_pickle_weights)
            if getattr(model, "tokenizer", None) is None:
                raise ConfigError(f"model {spec!r} has no tokenizer; these tasks tokenise text")
            text = "\n\n".join(d for d in corpus.documents() if corpus.split_of(d) == "sae")
            ids = torch.tensor(model.tokenizer(text)["input_ids"], dtype=torch.long)
            fingerprint = f"{model.model_id}:{sum(p.numel() for p in model.model.parameters())}:{corpus.text_hash([text])}"
            _MODELS[mkey] = (model, ids, fingerprint + (f":{content}" if content else ""))
        model, ids, fingerprint = _MODELS[mkey]
        return model, mkey, ids, fingerprint

    def make_source(self, config: Any, ctx: RunContext) -> Source:
        n_train, n_test = self._positive_int(config, "n_train"), self._positive_int(config, "n_test")
        seq_len = self._positive_int(config, "seq_len")
        layer = int(config.layer)
        model, mkey, ids, fingerprint = self._model(config, ctx)
        n = ids.numel() // seq_len
        windows = ids[: n * seq_len].view(n, seq_len)
        tr, te = _split(n, n_train, n_test, f"{seq_len}-token windows of the held-out docstrings")
        return _memo_source(
            (mkey, self.hook, layer, n_train, n_test, seq_len),
            lambda: HookedLMSource(model, windows[tr], windows[te], layer, self.hook, fingerprint, batch=16),
        )


def _file_hash(path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]
