"""The kernels that matter (DESIGN.md section 3), defined once for asv and for the speed gate.

Each :class:`Kernel` has a list of realistic sizes (``params``) and a
``setup(param) -> fn`` that builds seeded inputs and returns a zero-argument
callable doing one unit of work.  ``benchmarks/benchmarks.py`` turns them into
asv ``time_*`` / ``peakmem_*`` benchmarks; ``harness speed`` times
``fn`` under the code of two commits in one run (``harness.tracking.speed``).

Inputs are random (seeded) and small enough for a laptop CPU: nothing is
downloaded; the models are randomly initialised GPTs of the harness's own
model file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Kernel:
    """A named kernel: ``setup(param)`` returns the callable to time; ``gate_param`` is the size the gate uses."""

    name: str
    description: str
    param_name: str
    params: tuple[Any, ...]
    setup: Callable[[Any], Callable[[], Any]]
    gate_param: Any


# ---------------------------------------------------------------- SAE kernels
SAE_ROWS, SAE_D_IN, SAE_K = 2048, 512, 32


def sae_inputs(d_sae: int):
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(SAE_ROWS, SAE_D_IN, generator=g)
    W_dec = torch.randn(d_sae, SAE_D_IN, generator=g)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    return x, W_dec.clone(), torch.zeros(d_sae), W_dec, torch.zeros(SAE_D_IN)


def setup_sae_encode(d_sae: int) -> Callable[[], Any]:
    """TopK encode of 2048 rows of width 512 (``(x - b_dec) W_enc^T + b_enc``, ReLU, TopK k = 32)."""
    from harness.sae.kernels import topk_encode

    x, W_enc, b_enc, _, b_dec = sae_inputs(d_sae)
    return lambda: topk_encode(x, W_enc, b_enc, SAE_K, b_dec)


def setup_sae_sparse_decode(d_sae: int) -> Callable[[], Any]:
    """Sparse decode (embedding-bag gather of k = 32 rows) of 2048 TopK codes."""
    from harness.sae.kernels import sparse_decode, topk_encode

    x, W_enc, b_enc, W_dec, b_dec = sae_inputs(d_sae)
    values, indices = topk_encode(x, W_enc, b_enc, SAE_K, b_dec)
    return lambda: sparse_decode(indices, values, W_dec, b_dec)


def sae_train_step(make: Callable[[Any, int], Any], d_sae: int) -> Callable[[], Any]:
    """One step (``loss`` then ``update``: forward, backward, Adam, decoder renormalisation) of one of our SAE
    trainers on the benchmark batch, from :func:`sae_inputs`' weights; ``make(acts, d_sae)`` builds the trainer
    (a schedule long enough to keep the learning rate constant)."""
    import torch

    x, *weights = sae_inputs(d_sae)
    trainer = make(x, d_sae)
    x_all = trainer.setup()
    with torch.no_grad():
        for p, w in zip((trainer.W_enc, trainer.b_enc, trainer.W_dec, trainer.b_dec), weights):
            p.copy_(w)
    rows = torch.arange(SAE_ROWS)

    def step():
        with torch.enable_grad():
            loss = trainer.loss(x_all, rows)
            trainer.update(loss)
        trainer.step += 1
        return loss.detach()

    return step


def setup_sae_train_step(d_sae: int) -> Callable[[], Any]:
    """One TopK SAE training step on 2048 rows of width 512, k = 32, AuxK off (forward, sparse backward, fused
    Adam, decoder renormalisation), with the trainer's default selection (the bf16 prefilter where AMX is)."""
    from harness.sae.topk import TopKTrainer

    return sae_train_step(lambda x, n: TopKTrainer(x, n, SAE_K, grads=None, grad_beta=0.0, auxk_coef=0.0,
                                                   k_aux=None, dead_tokens=None, epochs=10**6,
                                                   batch_size=SAE_ROWS, lr=1e-3, seed=0), d_sae)


# ---------------------------------------------------------------- circuits kernels
#: (layers, heads, d_model, d_mlp, vocab, prompts, tokens)
GPT_SIZES = {
    "embedded": (3, 4, 64, 256, 64, 64, 16),  # the planted-circuit models' shape
    "medium": (6, 8, 256, 1024, 1000, 32, 16),
}


def circuit_data(size: str | tuple[int, ...], seed: int = 0):
    """A random GPT of ``GPT_SIZES[size]`` (or the tuple itself) with clean / corrupted prompts and a
    two-token logit-difference metric at the last position (model seed ``seed``, prompts ``seed + 1``)."""
    import torch

    from harness.models.gpt import GPT, GPTConfig, HookedGPT
    from harness.models.tokenizer import WordTokenizer
    from harness.protocols.circuits import CircuitData, LastTokenMetric

    n_layers, n_heads, d_model, d_mlp, vocab, n_prompts, seq = GPT_SIZES[size] if isinstance(size, str) else size
    torch.manual_seed(seed)
    cfg = GPTConfig(n_layers=n_layers, n_heads=n_heads, d_model=d_model, d_mlp=d_mlp, vocab_size=vocab, n_ctx=seq)
    model = HookedGPT(GPT(cfg).eval(), WordTokenizer([f"w{i}" for i in range(vocab)]), model_id="random")
    g = torch.Generator().manual_seed(seed + 1)
    clean = torch.randint(0, vocab, (n_prompts, seq), generator=g)
    corrupted = clean.clone()
    corrupted[:, 2:6] = torch.randint(0, vocab, (n_prompts, 4), generator=g)
    metric = LastTokenMetric(torch.tensor([1, 2]), lambda last: last[..., 0] - last[..., 1], "logit_diff")
    return CircuitData(model, clean, corrupted, metric, "bench")


def setup_ablate_many(size: str) -> Callable[[], Any]:
    """Batched activation patching: every head patched alone (resampled ``z``), metric at the last token."""
    import torch

    from harness.baselines.circuits import patch_replacement, single_head_masks

    data = circuit_data(size)
    model = data.model
    masks = single_head_masks(model.n_layers, model.n_heads)
    rep = patch_replacement(model, data, "resample")

    @torch.no_grad()
    def fn():
        return model.ablate_many(data.clean, masks, rep, position=-1, token_ids=data.metric.token_ids)

    return fn


def setup_eap(size: str) -> Callable[[], Any]:
    """Attribution patching: one forward + backward on the clean prompts, one forward on the corrupted."""
    from harness.baselines.circuits import eap_scores

    data = circuit_data(size)
    return lambda: eap_scores(data.model, data)


# ---------------------------------------------------------------- clustering kernels
def setup_hungarian(n_clusters: int) -> Callable[[], Any]:
    """Clustering accuracy (contingency table + Hungarian matching) of 20,000 labels."""
    import numpy as np

    from harness.metrics.clustering import clustering_accuracy

    rng = np.random.default_rng(0)
    y = rng.integers(0, n_clusters, 20_000)
    pred = np.where(rng.random(y.size) < 0.7, (y * 7 + 3) % n_clusters, rng.integers(0, n_clusters, y.size))
    return lambda: clustering_accuracy(y, pred)


def setup_kmeans_digits(n_init: int) -> Callable[[], Any]:
    """k-means (scikit-learn, as in the ``kmeans-raw`` baseline) on the 1,797 standardised digits, k = 10."""
    from sklearn.datasets import load_digits
    from sklearn.preprocessing import StandardScaler

    from harness.baselines.clustering import KMeansRaw

    X = StandardScaler().fit_transform(load_digits().data)
    method = KMeansRaw(n_init=n_init)
    method.seed = 0
    return lambda: method.fit_predict(X, 10)


KERNELS: dict[str, Kernel] = {k.name: k for k in (
    Kernel("sae_encode", setup_sae_encode.__doc__, "d_sae", (8192, 32768), setup_sae_encode, 8192),
    Kernel("sae_sparse_decode", setup_sae_sparse_decode.__doc__, "d_sae", (8192, 32768), setup_sae_sparse_decode,
           32768),
    Kernel("sae_train_step", setup_sae_train_step.__doc__, "d_sae", (8192, 32768), setup_sae_train_step, 8192),
    Kernel("ablate_many", setup_ablate_many.__doc__, "model", ("embedded", "medium"), setup_ablate_many,
           "embedded"),
    Kernel("eap", setup_eap.__doc__, "model", ("embedded", "medium"), setup_eap, "medium"),
    Kernel("hungarian", setup_hungarian.__doc__, "n_clusters", (10, 100), setup_hungarian, 100),
    Kernel("kmeans_digits", setup_kmeans_digits.__doc__, "n_init", (1, 10), setup_kmeans_digits, 1),
)}
