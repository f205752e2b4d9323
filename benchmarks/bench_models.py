"""Time the hooked-model kernels at GPT-2-small scale (DESIGN.md section 3).

Plain script: ``python benchmarks/bench_models.py [--loop-heads N | --full-loop]``.

On a randomly initialised GPT-2 small (``GPT2Config()`` defaults, no download)
with 100 prompts x 16 random tokens:

- EAP: one ``head_gradients`` call on the clean batch + one ``run_with_cache`` on
  the corrupted batch (target <= 10 s);
- activation patching of all 144 heads, one at a time, via ``ablate_many``
  (target <= 100 s);
- the same via a per-head Python loop of ``run_with_heads_replaced``
  (target: batched >= 5x faster). By default the loop is timed on
  ``--loop-heads`` heads spread over all layers (its cost does not depend on the
  head) and extrapolated to 144; ``--full-loop`` times all 144 (about 5 minutes).

Then the same batched-vs-loop comparison on an embedded-size GPT (3 layers x 4
heads, width 64, 512 prompts). Wall and process-CPU seconds are both printed:
on a shared machine CPU seconds are the steadier number; compare only ratios
measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import time
from contextlib import contextmanager

import torch


@contextmanager
def timer(results: dict, name: str):
    """Record wall and process-CPU seconds (CPU time is less sensitive to other load on the machine)."""
    w0, c0 = time.perf_counter(), time.process_time()
    yield
    results[name] = (time.perf_counter() - w0, time.process_time() - c0)


def fmt(t: tuple[float, float]) -> str:
    return f"{t[0]:7.2f} s wall, {t[1]:7.2f} s CPU"


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=100)
    ap.add_argument("--seq", type=int, default=16)
    ap.add_argument("--loop-heads", type=int, default=12, help="heads timed in the per-head loop (extrapolated)")
    ap.add_argument("--full-loop", action="store_true", help="time the per-head loop over all heads")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--skip-embedded", action="store_true", help="skip the embedded-size GPT comparison")
    ap.add_argument("--chunk-tokens", type=int, default=None, help="ablate_many chunk size in tokens")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    from harness.baselines.circuits import single_head_masks
    from harness.models.hf_causal import HFCausalLM

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = HFCausalLM(GPT2LMHeadModel(GPT2Config()), tokenizer=None, model_id="gpt2-random")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; model built in {time.perf_counter() - t0:.1f} s")
    L, H = model.n_layers, model.n_heads
    vocab = model.config.vocab_size
    clean = torch.randint(0, vocab, (args.prompts, args.seq))
    corrupt = clean.clone()
    corrupt[:, 2:6] = torch.randint(0, vocab, (args.prompts, 4))
    answer, wrong = 1000, 2000
    token_ids = torch.tensor([answer, wrong])

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return (logits[:, -1, answer] - logits[:, -1, wrong]).mean()

    print(f"load average at start: {os.getloadavg()[0]:.1f} (>{torch.get_num_threads()} means other work competes)")
    t: dict[str, tuple[float, float]] = {}
    with torch.no_grad():
        model.logits(clean[:4])  # warm-up
        with timer(t, "forward"):
            model.logits(clean)
    print(f"reference: one plain forward of {args.prompts} x {args.seq} tokens: {fmt(t['forward'])}")

    # EAP: 1 forward + 1 backward on clean, 1 forward on corrupted.
    with timer(t, "eap"):
        z_clean, grad = model.head_gradients(clean, metric)
        with torch.no_grad():
            _, z_corrupt = model.run_with_cache(corrupt, return_logits=False)
        eap_scores = ((z_corrupt - z_clean) * grad).sum(dim=(0, 1, 4))
    print(f"EAP (head_gradients + run_with_cache):        {fmt(t['eap'])}   [target <= 10 s]")

    # All-head activation patching (resample from the corrupted run), batched.
    masks = single_head_masks(L, H)
    with timer(t, "batched"):
        out = model.ablate_many(clean, masks, z_corrupt, token_ids=token_ids, chunk_tokens=args.chunk_tokens)
        patch_scores = (out[..., 0] - out[..., 1]).mean(dim=1).reshape(L, H)
    print(f"patching {L * H} heads via ablate_many:          {fmt(t['batched'])}   [target <= 100 s]")

    # Per-head loop of run_with_heads_replaced.
    n_loop = L * H if args.full_loop else min(args.loop_heads, L * H)
    heads = torch.linspace(0, L * H - 1, n_loop).round().long().tolist()
    loop_scores = {}
    with timer(t, "loop"), torch.no_grad():
        for i in heads:
            loop_scores[i] = metric(model.run_with_heads_replaced(clean, masks[i], z_corrupt)).item()
    scale = (L * H) / n_loop
    t_loop = (t["loop"][0] * scale, t["loop"][1] * scale)
    kind = "measured" if n_loop == L * H else f"extrapolated from {n_loop} heads"
    print(f"patching, per-head loop of run_with_heads_replaced: {fmt(t_loop)} ({kind})")
    print(f"batched speed-up: {t_loop[0] / t['batched'][0]:.1f}x wall, {t_loop[1] / t['batched'][1]:.1f}x CPU"
          f"   [target >= 5x]")
    fwd = t["forward"][1]
    print(f"in plain-forward units (CPU): EAP {t['eap'][1] / fwd:.1f}, ablate_many {t['batched'][1] / fwd:.1f}, "
          f"loop {t_loop[1] / fwd:.1f}")

    worst = max(abs(loop_scores[i] - patch_scores.flatten()[i].item()) for i in heads)
    print(f"check: max |loop - batched| metric difference over the timed heads = {worst:.2e}")
    print(f"(EAP score range {eap_scores.min().item():.3g}..{eap_scores.max().item():.3g}); "
          f"load average at end: {os.getloadavg()[0]:.1f}")
    if not args.skip_embedded:
        embedded(args)


def embedded(args) -> None:
    """Batched vs per-head-loop patching on an embedded-size GPT (3 layers x 4 heads, width 64)."""
    from harness.baselines.circuits import single_head_masks
    from harness.models import GPT, GPTConfig, HookedGPT, WordTokenizer

    torch.manual_seed(0)
    cfg = GPTConfig(n_layers=3, n_heads=4, d_model=64, d_mlp=256, vocab_size=64, n_ctx=32)
    model = HookedGPT(GPT(cfg).eval(), WordTokenizer([f"w{i}" for i in range(64)]), model_id="embedded-random")
    clean = torch.randint(0, 64, (512, 15))
    corrupt = torch.randint(0, 64, (512, 15))
    ids = torch.tensor([1, 2])
    masks = single_head_masks(3, 4)
    t: dict[str, tuple[float, float]] = {}
    with torch.no_grad():
        _, z_corrupt = model.run_with_cache(corrupt, return_logits=False)
        model.ablate_many(clean, masks, z_corrupt, token_ids=ids)  # warm-up
        reps = 5
        with timer(t, "batched"):
            for _ in range(reps):
                model.ablate_many(clean, masks, z_corrupt, token_ids=ids)
        with timer(t, "loop"):
            for _ in range(reps):
                for m in masks:
                    model.run_with_heads_replaced(clean, m, z_corrupt)[:, -1, ids]
    b, lp = t["batched"], t["loop"]
    print(f"embedded-size GPT (3x4, d=64, 512 prompts x 15 tokens), all 12 heads, mean of {reps}: "
          f"ablate_many {b[0] / reps:.3f} s wall / {b[1] / reps:.3f} s CPU, loop {lp[0] / reps:.3f} s / "
          f"{lp[1] / reps:.3f} s; speed-up {lp[0] / b[0]:.1f}x wall, {lp[1] / b[1]:.1f}x CPU")


if __name__ == "__main__":
    main()
