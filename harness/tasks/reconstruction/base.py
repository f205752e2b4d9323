"""Shared build / apply / evaluate of the reconstruction family.

Per cell: ``build`` loads the source model (memoised per process) and the
gathered activations (cached on disk, see :mod:`.cache`); ``apply`` fits the
method on the train split, encodes and decodes the held-out split (each
timed); ``evaluate`` scores the reconstruction of the held-out split and,
spliced back into the model, its downstream fidelity.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import torch

from harness.core.context import RunContext
from harness.errors import ConfigError, InvalidOutputError
from harness.metrics.reconstruction import (
    activity_stats,
    fvu,
    mean_cosine_similarity,
    normalized_mse,
    tokens_per_second,
)
from harness.protocols.reconstruction import (
    code_activity,
    n_latents_of,
    validate_codes,
    validate_reconstruction,
)
from harness.core.task import MetricSpec, Task
from harness.tasks.reconstruction.cache import load_or_gather
from harness.tasks.reconstruction.sources import Source


@dataclass
class ReconstructionData:
    """What one cell works on.  Methods see only ``train`` / ``test`` (and the gradients)."""

    source: Source
    train: torch.Tensor
    test: torch.Tensor
    train_grads: torch.Tensor | None
    test_grads: torch.Tensor | None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class ReconstructionOutput:
    x_hat: torch.Tensor
    l0: float
    dead_fraction: float
    n_latents: int
    fit_s: float
    encode_s: float
    decode_s: float


COMMON_METRICS = (
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


class ReconstructionTask(Task):
    """Subclasses set ``hook``, ``metrics``, ``main_metric``, ``default_config`` and implement :meth:`make_source`."""

    hook: ClassVar[str] = "resid"

    def make_source(self, config: Mapping[str, Any], ctx: RunContext) -> Source:
        raise NotImplementedError

    @staticmethod
    def _positive_int(config: Mapping[str, Any], key: str) -> int:
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"config {key!r} must be a positive integer, got {value!r}")
        return value

    def build(self, config: Mapping[str, Any], seed: int, ctx: RunContext) -> ReconstructionData:
        source = self.make_source(config, ctx)
        t0 = time.perf_counter()
        acts, cached = load_or_gather(source, ctx.cache_dir)
        gather_s = time.perf_counter() - t0
        source.reference()
        return ReconstructionData(
            source=source, train=acts.train, test=acts.test, train_grads=acts.train_grads,
            test_grads=acts.test_grads,
            info={"activations_cached": cached, "gather_s": gather_s, "d_in": source.d_in,
                  "n_train": int(acts.train.shape[0]), "n_test": int(acts.test.shape[0])},
        )

    def apply(self, method: Any, data: ReconstructionData, ctx: RunContext) -> ReconstructionOutput:
        for name in ("fit", "encode", "decode"):
            if not callable(getattr(method, name, None)):
                raise InvalidOutputError(f"method {method.name!r} has no {name}(); the reconstruction protocol is "
                                         "fit(acts) -> self, encode(acts) -> codes, decode(codes) -> acts")
        grads = bool(getattr(method, "uses_gradients", False))
        train, test = data.train.clone(), data.test.clone()
        t0 = time.perf_counter()
        if grads:
            method.fit(train, grads=None if data.train_grads is None else data.train_grads.clone())
        else:
            method.fit(train)
        t1 = time.perf_counter()
        if grads:
            codes = method.encode(test, grads=None if data.test_grads is None else data.test_grads.clone())
        else:
            codes = method.encode(test)
        t2 = time.perf_counter()
        codes = validate_codes(codes, test.shape[0])
        x_hat = method.decode(codes)
        t3 = time.perf_counter()
        x_hat = validate_reconstruction(x_hat, tuple(data.test.shape))
        l0, dead_fraction = activity_stats(*code_activity(codes))
        return ReconstructionOutput(
            x_hat=x_hat, l0=l0, dead_fraction=dead_fraction,
            n_latents=n_latents_of(codes), fit_s=t1 - t0, encode_s=t2 - t1, decode_s=t3 - t2,
        )

    def evaluate(self, data: ReconstructionData, output: ReconstructionOutput) -> dict[str, float]:
        x, x_hat = data.test, output.x_hat
        f = fvu(x, x_hat)
        metrics = {
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
        metrics.update(data.source.downstream(x_hat))
        return metrics
