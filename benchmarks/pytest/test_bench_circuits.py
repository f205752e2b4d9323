"""Circuit-finding speed (DESIGN.md section 3), with pytest-benchmark.

Not collected by the default test run (``testpaths = ["tests"]``); run with::

    python -m pytest benchmarks/pytest/test_bench_circuits.py --benchmark-only -q -s

(``-s`` shows the printed summary lines; the numbers are also stored in each
benchmark's ``extra_info``, e.g. with ``--benchmark-json out.json``).
``HARNESS_BENCH_THREADS=n`` pins torch's intra-op threads (default: torch's).

Models are randomly initialised (no download): a GPT-2-small-sized HookedGPT
(12 layers x 12 heads, d_model 768, d_mlp 3072, vocabulary 1,000) and an
embedded-size one (3 x 4, d_model 64, d_mlp 256).  Prompts are random tokens;
corrupted prompts resample 4 of them; the metric is a two-token logit
difference at the last position.

- ``test_time_discrete_sae``: the whole method (one forward pass over the
  positive + negative prompts, SAE training, codes) on 100 prompts x 16
  tokens, with the default 10 examples and with all 100.  Target: seconds
  (<= 10 s at GPT-2-small scale; the seed paper's claim against ACDC's hours);
  the pass criterion is a loose 60 s, because this 2-core machine is shared.
- ``test_time_eap``: EAP (2 forward + 1 backward) on the same 100 x 16 prompts;
  target <= 10 s (reported, not asserted).
- ``test_act_patch_batched_vs_loop_*``: the batched single-head patching
  (``ablate_many``, as in the ``act-patch-*`` baselines) and the per-head
  Python loop (``run_with_heads_replaced``), interleaved in one run on the same
  model and prompts; the speed-up is the median of the per-round ratios.
  At GPT-2-small scale only one head per layer is timed (12 heads, the same
  for both paths: the loop's cost per head does not depend on the head, the
  batched path's depends on the layer, so one per layer is representative) on
  16 prompts, to keep the benchmark short; all 144 heads take minutes.
  Target >= 5x on the embedded models: reported, and asserted only as
  "batched is faster" (embedded model, median of 5 rounds; the single GPT-2-scale
  round is not gated), because the measured ratio is about 2.4x there and
  1.3-1.7x at GPT-2-small scale (``ACT_PATCH_NOTE`` says why).
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.baselines import circuits as bc
from benchmarks.kernels import circuit_data
from harness.core.context import RunContext
from harness.protocols.circuits import CircuitData
from harness.methods.discrete_sae import DiscreteSAE

pytest.importorskip("pytest_benchmark")

ACT_PATCH_NOTE = (
    "exact single-head patching must rerun every layer after the patched head at every position (the last "
    "layer's keys and values need them). ablate_many skips the layers before the head, the last block's other "
    "queries and all but the metric's unembedding columns: for all heads of an L-layer model that is about "
    "1 + (L+1)/2 * H forward-equivalents against L * H + 1 for the loop, so layer skipping alone gives at "
    "most ~2L/(L+1) (1.5x at L = 3, 1.85x at L = 12); the rest comes from the last block and the unembedding"
)


def _threads() -> None:
    n = os.environ.get("HARNESS_BENCH_THREADS")
    if n:
        torch.set_num_threads(int(n))


def _build(n_layers, n_heads, d_model, d_mlp, vocab, n_prompts, seq, seed=0) -> CircuitData:
    return circuit_data((n_layers, n_heads, d_model, d_mlp, vocab, n_prompts, seq), seed)


def _gpt2_sized(n_prompts: int) -> CircuitData:
    return _build(12, 12, 768, 3072, 1000, n_prompts, 16)


@pytest.fixture(scope="module")
def gpt2_100() -> CircuitData:
    _threads()
    return _gpt2_sized(100)


def _env() -> str:
    return f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}"


# ------------------------------------------------------------ discrete SAE
@pytest.mark.parametrize("n_examples", [10, 100])
def test_time_discrete_sae(benchmark, gpt2_100, tmp_path: Path, n_examples):
    data = gpt2_100
    method = DiscreteSAE(n_examples=n_examples)
    method.setup(RunContext(seed=0, device=torch.device("cpu"), cache_dir=tmp_path))
    with torch.no_grad():  # warm-up (allocator, kernels)
        data.model.logits(data.clean[:2])
    scores = benchmark.pedantic(method.score_heads, args=(data.model, data), rounds=1, iterations=1)
    seconds = benchmark.stats.stats.max
    benchmark.extra_info.update({"seconds": seconds, "n_examples": n_examples, **method.diagnostics_})
    print(
        f"\n[discrete-sae] GPT-2-small-sized random GPT, {n_examples} positive + {n_examples} negative prompts "
        f"(of 100 x 16 tokens): {seconds:.2f} s [target <= 10 s]; SAE fvu {method.diagnostics_['fvu']:.3f}, "
        f"L0 {method.diagnostics_['l0']:.1f}, codes used {method.diagnostics_['codes_used']}; {_env()}"
    )
    assert scores.shape == (12, 12) and np.isfinite(scores).all()
    assert seconds < 60, "discrete-SAE circuit finding should take seconds"


# --------------------------------------------------------------------- EAP
def test_time_eap(benchmark, gpt2_100):
    data = gpt2_100
    scores = benchmark.pedantic(bc.eap_scores, args=(data.model, data), rounds=1, iterations=1)
    seconds = benchmark.stats.stats.max
    benchmark.extra_info["seconds"] = seconds
    print(f"\n[eap] GPT-2-small-sized random GPT, 100 x 16 tokens: {seconds:.2f} s [target <= 10 s]; {_env()}")
    assert scores.shape == (12, 12) and np.isfinite(scores).all()


# ------------------------------------------------- batched vs per-head loop
def _interleaved(data: CircuitData, heads: list[tuple[int, int]], rounds: int) -> dict:
    """Time ablate_many over one-head masks vs a loop of run_with_heads_replaced, interleaved."""
    model = data.model
    L, H = model.n_layers, model.n_heads
    rep = bc.patch_replacement(model, data, "resample")
    masks = torch.zeros(len(heads), L, H, dtype=torch.bool)
    for i, (layer, head) in enumerate(heads):
        masks[i, layer, head] = True
    ids = data.metric.token_ids

    @torch.no_grad()
    def batched():
        out = model.ablate_many(data.clean, masks, rep, position=-1, token_ids=ids)
        return data.metric.from_last(out)

    @torch.no_grad()
    def loop():
        return torch.stack([data.metric.from_logits(model.run_with_heads_replaced(data.clean, m, rep)) for m in masks])

    with torch.no_grad():
        model.logits(data.clean[:2])  # warm-up
    tb, tl = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        a = batched()
        tb.append(time.perf_counter() - t)
        t = time.perf_counter()
        b = loop()
        tl.append(time.perf_counter() - t)
    err = float((a - b).abs().max())
    return {
        "batched_s": statistics.median(tb),
        "loop_s": statistics.median(tl),
        "ratio": statistics.median(l / b for l, b in zip(tl, tb)),
        "max_abs_diff": err,
        "heads": len(heads),
        "rounds": rounds,
    }


def _report(benchmark, name: str, info: dict) -> None:
    benchmark.extra_info.update(info, note=ACT_PATCH_NOTE)
    print(
        f"\n[act-patch {name}] {info['heads']} heads, median of {info['rounds']}: batched (ablate_many) "
        f"{info['batched_s']:.3f} s, per-head loop {info['loop_s']:.3f} s, speed-up {info['ratio']:.2f}x "
        f"[target >= 5x]; max |diff| {info['max_abs_diff']:.1e}; {_env()}"
    )


def test_act_patch_batched_vs_loop_embedded(benchmark):
    """All 12 heads of an embedded-size model (3 x 4, width 64), 64 prompts x 16 tokens."""
    _threads()
    data = _build(3, 4, 64, 256, 64, 64, 16)
    heads = [(l, h) for l in range(3) for h in range(4)]
    info = benchmark.pedantic(_interleaved, args=(data, heads, 5), rounds=1, iterations=1)
    _report(benchmark, "embedded 3x4 d64, 64 x 16 tokens", info)
    assert info["max_abs_diff"] < 1e-4
    assert info["ratio"] > 1.0, "batched patching must beat the per-head loop"


def test_act_patch_batched_vs_loop_gpt2_sized(benchmark):
    """One head per layer of the GPT-2-small-sized model, 16 prompts x 16 tokens."""
    _threads()
    data = _gpt2_sized(16)
    heads = [(l, l) for l in range(12)]
    info = benchmark.pedantic(_interleaved, args=(data, heads, 1), rounds=1, iterations=1)
    _report(benchmark, "GPT-2-small-sized, 16 x 16 tokens", info)
    # All 144 heads, estimated: each layer holds 12 heads whose batched cost is that of the timed one.
    info["all_heads_batched_estimate_s"] = 12 * info["batched_s"]
    info["all_heads_loop_estimate_s"] = 12 * info["loop_s"]
    print(
        f"[act-patch GPT-2-small-sized] all 144 heads on 16 prompts, estimated: batched "
        f"{info['all_heads_batched_estimate_s']:.0f} s, loop {info['all_heads_loop_estimate_s']:.0f} s"
    )
    assert info["max_abs_diff"] < 1e-3
    # One round only (minutes otherwise): too noisy on a shared machine to gate on; reported.
