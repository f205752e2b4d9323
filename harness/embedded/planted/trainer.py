"""Training of a planted-circuit model: every loss term of a step as rows of one batched forward pass.

The recipe (:mod:`harness.embedded.planted`'s docstring): a source pass without
gradients provides the per-head outputs ``z`` ``[b, seq, n_layers, n_heads,
d_head]`` to patch in; one training pass holds the task rows, the strict rows
(every non-circuit head replaced), one interchange block per circuit head and
the distractor / mirror rows; attention hints are cross-entropies on chosen
heads' attention patterns.  Deterministic: ``torch.manual_seed(init_seed)`` for
the weights, one numpy generator (``data_seed``) for all data, fixed threads.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from harness.core.seeding import torch_threads
from harness.embedded.planted.samplers import (
    GreaterThanSampler,
    IOISampler,
    induction_batch,
    induction_loss,
    make_tokenizer,
)
from harness.embedded.planted.specs import Head, PlantedRecipe, PlantedSpec, circuit_mask, head_name, heads_mask
from harness.embedded.planted.trap_training import add_trap_rows, interchange_units, needs_clean_source, trap_parts
from harness.embedded.recipe import Log
from harness.models.gpt import GPT, GPTConfig, HookedGPT


def _record_z(model: GPT, tokens: torch.Tensor) -> torch.Tensor:
    """``z`` ``[b, s, L, H, d_head]`` of a run (no gradients)."""
    zs: list[torch.Tensor] = []

    def rec(layer: int, z: torch.Tensor) -> torch.Tensor:
        zs.append(z)
        return z

    with torch.no_grad():
        model(tokens, rec)
    return torch.stack(zs, dim=2)


def _attention_nll(model: GPT, x_ln: torch.Tensor, layer: int, head: int, query: int, keys: torch.Tensor) -> torch.Tensor:
    """Mean NLL of head ``layer.head`` attending, from position ``query``, to position ``keys[i]`` in row i.

    ``x_ln`` is the layer's attention input (after ``ln1``), ``[b, s, d_model]``.
    """
    attn = model.blocks[layer].attn
    d, dh = model.config.d_model, model.config.d_head
    w, b = attn.qkv.weight, attn.qkv.bias
    qs, ks = slice(head * dh, (head + 1) * dh), slice(d + head * dh, d + (head + 1) * dh)
    q = x_ln[:, query] @ w[qs].T + b[qs]  # [b, dh]
    k = x_ln[:, : query + 1] @ w[ks].T + b[ks]  # [b, query + 1, dh]
    scores = torch.einsum("bkd,bd->bk", k, q) / math.sqrt(dh)
    return -torch.log_softmax(scores, dim=-1).gather(1, keys[:, None].to(scores.device, torch.long))[:, 0].mean()


def attention_logprobs(model: GPT, x_ln: torch.Tensor, layer: int, head: int) -> torch.Tensor:
    """Causal attention log-probabilities ``[b, query, key]`` of head ``layer.head`` from its input ``x_ln``."""
    attn = model.blocks[layer].attn
    d, dh = model.config.d_model, model.config.d_head
    w, b = attn.qkv.weight, attn.qkv.bias
    qs, ks = slice(head * dh, (head + 1) * dh), slice(d + head * dh, d + (head + 1) * dh)
    q, k = x_ln @ w[qs].T + b[qs], x_ln @ w[ks].T + b[ks]
    scores = q @ k.transpose(1, 2) / math.sqrt(dh)
    s = x_ln.shape[1]
    causal = torch.ones(s, s, dtype=torch.bool, device=scores.device).tril()  # verification runs on the model's device
    return torch.log_softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)


def _distractor_attention_nll(model: GPT, captured: dict[int, torch.Tensor], rows: slice, tokens: torch.Tensor,
                              mask: torch.Tensor, heads: dict[str, Head]) -> torch.Tensor:
    """Hints for the distractor's designated heads: a previous-token head (each position attends to the one
    before) and an induction head (inside the repeat, each position attends to the token after the earlier
    occurrence of its own token)."""
    b, s = tokens.shape
    pos = torch.arange(s, device=tokens.device)
    total = torch.zeros((), device=tokens.device)
    if "previous_token" in heads:
        layer, head = heads["previous_token"]
        lp = attention_logprobs(model, captured[layer][rows], layer, head)  # [b, s, s]
        total = total - lp[:, pos[1:], pos[:-1]].mean()
    if "induction" in heads:
        layer, head = heads["induction"]
        lp = attention_logprobs(model, captured[layer][rows], layer, head)
        # earlier occurrence of the token at p: the first q < p with tokens[q] == tokens[p]
        same = (tokens[:, :, None] == tokens[:, None, :]) & (pos[None, :, None] > pos[None, None, :])
        earlier = torch.where(same, pos[None, None, :], s).min(dim=-1).values  # [b, s]
        key = (earlier + 1).clamp(max=s - 1)
        m = mask & (earlier < s)
        picked = lp.gather(2, key[:, :, None])[:, :, 0]
        total = total - torch.where(m, picked, torch.zeros_like(picked)).sum() / m.sum().clamp_min(1)
    return total


def _key_positions(sampler, d: dict[str, np.ndarray], key) -> torch.Tensor:
    """Target key positions: a fixed position, or one named by the sampler for each prompt."""
    n = len(next(iter(d.values())))
    if isinstance(key, int):
        return torch.full((n,), key, dtype=torch.long)
    return torch.from_numpy(sampler.position(d, key)).long()


class _Rows:
    """Rows of one batched training pass: tokens, head masks and replacement z, plus their slices."""

    def __init__(self, L: int, H: int):
        self.tokens: list[torch.Tensor] = []
        self.masks: list[torch.Tensor] = []
        self.reps: list[torch.Tensor] = []
        self.slices: dict[str, slice] = {}
        self.n = 0
        self.L, self.H = L, H

    def add(self, name: str, tokens: torch.Tensor, mask: torch.Tensor | None = None, rep: torch.Tensor | None = None,
            positions: Sequence[int] | None = None) -> None:
        """Rows ``tokens`` whose heads in ``mask`` [L, H] get ``z`` = ``rep`` at ``positions`` (default: all)."""
        b, s = tokens.shape
        m = torch.zeros(b, s, self.L, self.H, dtype=torch.bool)
        if mask is not None:
            pos = torch.zeros(s, dtype=torch.bool)
            pos[list(range(s)) if positions is None else list(positions)] = True
            m = m | (pos[:, None, None] & mask[None])[None]
        self.tokens.append(tokens)
        self.masks.append(m)
        self.reps.append(rep)
        self.slices[name] = slice(self.n, self.n + b)
        self.n += b

    def build(self, z_shape_tail: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(tokens [n, s], masks [n, s, L, H], replacement z [n, s, L, H, d_head])`` of all rows."""
        tokens = torch.cat(self.tokens)
        masks = torch.cat(self.masks)
        s = tokens.shape[1]
        reps = [
            torch.zeros(t.shape[0], s, *z_shape_tail) if r is None else r.expand(t.shape[0], s, *z_shape_tail)
            for t, r in zip(self.tokens, self.reps)
        ]
        return tokens, masks, torch.cat(reps)


@dataclass
class _Batch:
    """One step's data: task prompts ``base`` and ``other`` (sampler draws), distractor rows, source rows."""

    base: dict[str, np.ndarray]
    other: dict[str, np.ndarray]
    dist: torch.Tensor  # [distractor_batch, seq] token ids
    dist_mask: torch.Tensor  # [distractor_batch, seq] scored positions
    base_tok: torch.Tensor  # [batch, seq] token ids
    src_tokens: list[torch.Tensor]  # rows of the source pass: other, corrupted, (IOI: IO repeated), distractor
    y_base: torch.Tensor  # [batch] answer ids (IOI) or [batch, vocab] soft targets (greater-than)


def _sample_batch(spec: PlantedSpec, sampler, rng: np.random.Generator, r: PlantedRecipe, vocab_size: int) -> _Batch:
    base = sampler.sample(rng, r.batch)
    other = sampler.sample(rng, r.batch)
    dist, dist_mask = induction_batch(rng, r.distractor_batch, sampler.seq, vocab_size)
    base_tok = sampler.tokens(base)
    if spec.task == "ioi":
        src_tokens = [sampler.tokens(other), sampler.tokens(base, abc=True), sampler.tokens(base, s2="io"), dist]
        if needs_clean_source(spec):  # the step's own prompts, to clamp heads to their clean output
            src_tokens.insert(3, base_tok)
        elif spec.traps.cancel:  # the corrupted prompts of the order-swapped twins (sign-cancelling heads)
            src_tokens.insert(3, sampler.tokens(base, swap=True, abc=True))
        y_base = sampler.answer(base, "io")
    else:
        src_tokens = [sampler.tokens(other), sampler.tokens(base, corrupt=True), dist]
        y_base = sampler.target(base["yy"])
    return _Batch(base, other, dist, dist_mask, base_tok, src_tokens, y_base)


def _training_rows(spec: PlantedSpec, sampler, b: _Batch, z_src: Sequence[torch.Tensor], r: PlantedRecipe,
                   circuit: torch.Tensor) -> tuple[_Rows, list[torch.Tensor], int]:
    """The rows of the training pass, the targets of its task rows and the number of task rows."""
    z_other, z_corrupt, z_dist = z_src[0], z_src[1], z_src[-1]
    strict_rep = z_other.clone()  # rows 0::3 from another prompt, 1::3 from the corrupted one, 2::3 the mean
    strict_rep[1::3] = z_corrupt[1::3]
    strict_rep[2::3] = z_other.mean(0, keepdim=True)
    rows = _Rows(r.n_layers, r.n_heads)
    rows.add("task", b.base_tok)
    rows.add("strict", b.base_tok, ~circuit, strict_rep)
    targets = [b.y_base, b.y_base]
    for name, heads, kind in interchange_units(spec):
        positions = spec.patch_positions.get(head_name(heads[0]))
        if kind == "io_repeated":  # IO repeated instead of S -> S
            rows.add(name, b.base_tok, heads_mask(heads, r), z_src[2], positions)
            targets.append(sampler.answer(b.base, "s"))
        elif spec.task == "ioi":  # another prompt -> its IO
            rows.add(name, b.base_tok, heads_mask(heads, r), z_other, positions)
            targets.append(sampler.answer(b.other, "io"))
        else:  # another prompt -> the years above its YY
            rows.add(name, b.base_tok, heads_mask(heads, r), z_other, positions)
            targets.append(sampler.target(b.other["yy"]))
    if spec.traps:
        z_clean = z_src[3] if needs_clean_source(spec) else None
        add_trap_rows(spec, sampler, b, z_other, z_clean, strict_rep, rows, targets, r, z_corrupt=z_corrupt,
                      z_twin_corrupt=z_src[3] if spec.traps.cancel else None)
    n_task_rows = rows.n
    rows.add("distractor", b.dist)
    mirrored = ~heads_mask(spec.distractor_heads.values(), r) if spec.traps.mirror_all else circuit
    rows.add("mirror", b.dist, mirrored, z_dist.mean(0, keepdim=True))
    return rows, targets, n_task_rows


def _task_metric(spec: PlantedSpec, sampler, b: _Batch) -> Callable[[torch.Tensor], torch.Tensor]:
    """The task metric of last-position logits ``[n, vocab]`` -> ``[n]``."""
    if spec.task == "ioi":
        io_id, s_id = sampler.answer(b.base, "io"), sampler.answer(b.base, "s")

        def task_metric(lg: torch.Tensor) -> torch.Tensor:  # logit(IO) - logit(S)
            return lg.gather(1, io_id[:, None])[:, 0] - lg.gather(1, s_id[:, None])[:, 0]
        return task_metric
    above = b.y_base > 0

    def task_metric(lg: torch.Tensor) -> torch.Tensor:  # P(YY' > YY) - P(YY' <= YY)
        p = torch.softmax(lg, dim=-1)
        years = p[:, sampler.year_ids]
        return 2 * (p * above).sum(-1) - years.sum(-1)
    return task_metric


class _Training:
    """The state of one planted model's training: model, optimiser, data generator, captured attention inputs."""

    def __init__(self, spec: PlantedSpec, r: PlantedRecipe):
        self.spec, self.r = spec, r
        self.tok = make_tokenizer(spec.task)
        self.sampler = IOISampler(self.tok) if spec.task == "ioi" else GreaterThanSampler(self.tok)
        config = GPTConfig(r.n_layers, r.n_heads, r.d_model, r.d_mlp, len(self.tok), r.n_ctx)
        self.circuit = circuit_mask(spec, r)
        self.weights = dict(r.weights)
        self.tail = (r.n_layers, r.n_heads, config.d_head)
        torch.manual_seed(r.init_seed)
        self.model = GPT(config)
        self.model.train()
        self.rng = np.random.default_rng(r.data_seed)
        self.opt = r.adamw(self.model)
        self.captured: dict[int, torch.Tensor] = {}  # layer -> its attention input (after ln1)
        self.hooks = [
            block.ln1.register_forward_hook(lambda mod, inp, out, layer=layer: self.captured.__setitem__(layer, out))
            for layer, block in enumerate(self.model.blocks)
        ]

    def step(self, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, dict[str, slice]]:
        """One optimiser step: ``(loss, loss terms, task rows' targets, row slices)``."""
        r, spec, model = self.r, self.spec, self.model
        r.set_lr(self.opt, step)
        b = _sample_batch(spec, self.sampler, self.rng, r, len(self.tok))
        z_src = _record_z(model, torch.cat(b.src_tokens)).split([t.shape[0] for t in b.src_tokens])
        rows, targets, n_task_rows = _training_rows(spec, self.sampler, b, z_src, r, self.circuit)
        tokens, masks, reps = rows.build(self.tail)

        z_seen: dict[int, torch.Tensor] = {}  # each layer's z before replacement (the busy-activity term reads it)

        def z_fn(layer: int, z: torch.Tensor) -> torch.Tensor:
            z_seen[layer] = z
            return torch.where(masks[:, :, layer, :, None], reps[:, :, layer], z)

        task_metric = _task_metric(spec, self.sampler, b)
        self.captured.clear()
        logits = model(tokens, z_fn)
        last = logits[:n_task_rows, -1]
        target = torch.cat(targets)
        ce = F.cross_entropy(last, target, reduction="none")
        sl = rows.slices
        parts = {
            "task": ce[sl["task"]].mean(),
            "strict": ce[sl["strict"]].mean(),
            # the output must not just stay right but stay the same: match the strict run's logits to the clean run's
            "match": (task_metric(last[sl["strict"]]) - task_metric(last[sl["task"]])).pow(2).mean(),
            **{name: ce[sl[name]].mean() for name, _, _ in interchange_units(spec)},
            "distractor": induction_loss(logits[sl["distractor"]], b.dist, b.dist_mask),
            "mirror": induction_loss(logits[sl["mirror"]], b.dist, b.dist_mask),
        }
        parts.update(self._attention_terms(b, sl))
        if spec.traps:
            parts.update(trap_parts(spec, self.sampler, b, last, ce, sl, task_metric, model, self.captured, z_seen))
        off = _terms_off(spec.traps, step, parts)
        loss = sum(self.weights["interchange" if k.startswith("ic") else k] * v for k, v in parts.items() if k not in off)
        r.update(self.opt, model, loss)
        return loss, parts, target, sl

    def _attention_terms(self, b: _Batch, sl: dict[str, slice]) -> dict[str, torch.Tensor]:
        """The attention-hint terms the recipe weights (circuit heads on task rows; distractor heads)."""
        spec, model, captured, parts = self.spec, self.model, self.captured, {}
        if self.weights.get("attention", 0.0):
            parts["attention"] = sum(
                _attention_nll(model, captured[layer][sl["task"]], layer, head, q, _key_positions(self.sampler, b.base, k))
                for (layer, head), (q, k) in ((h, spec.attention_targets[head_name(h)]) for h in spec.circuit)
            )
        if self.weights.get("distractor_attention", 0.0) and spec.distractor_heads:
            parts["distractor_attention"] = _distractor_attention_nll(
                model, captured, sl["distractor"], b.dist, b.dist_mask, spec.distractor_heads
            )
        return parts

    def close(self) -> None:
        for hook in self.hooks:
            hook.remove()


def _history_entry(step: int, start: tuple[float, float], loss: torch.Tensor, parts: dict[str, torch.Tensor],
                   target: torch.Tensor, sl: dict[str, slice], task: str) -> dict[str, Any]:
    """The training history's entry after ``step`` (0-based): times, the loss and each term (5 decimals)."""
    entry = {"step": step + 1, "seconds": round(time.perf_counter() - start[0], 2),
             "cpu_seconds": round(time.process_time() - start[1], 2),
             "loss": round(float(loss.detach()), 5), **{k: round(float(v.detach()), 5) for k, v in parts.items()}}
    if task == "greater_than":  # the soft-target CE has a floor: report the excess over it
        entropy = -(target * torch.where(target > 0, target.log(), torch.zeros_like(target))).sum(-1)
        entry["task_ce_floor"] = round(float(entropy[sl["task"]].mean()), 5)
    return entry


def train(spec: PlantedSpec, recipe: PlantedRecipe | None = None, log: Log = print) -> tuple[HookedGPT, dict]:
    """Train the planted model of ``spec`` (deterministic); returns the model and a training summary."""
    r = recipe or spec.recipe
    with torch_threads(r.threads):
        run = _Training(spec, r)
        start = (time.perf_counter(), time.process_time())
        history: list[dict[str, Any]] = []
        for step in range(r.steps):
            loss, parts, target, sl = run.step(step)
            if (step + 1) % r.log_every == 0 or step == r.steps - 1:
                entry = _history_entry(step, start, loss, parts, target, sl, spec.task)
                history.append(entry)
                if log:
                    log(f"[{spec.name}] step {entry['step']:5d}  {entry['seconds']:7.1f}s "
                        f"(cpu {entry['cpu_seconds']:.1f}s)  " +
                        "  ".join(f"{k} {entry[k]:.4f}" for k in ("loss", *parts)))
        seconds, cpu_seconds = time.perf_counter() - start[0], time.process_time() - start[1]
        run.close()
    run.model.eval()
    hooked = HookedGPT(run.model, run.tok, model_id=spec.name)
    return hooked, {"seconds": round(seconds, 1), "cpu_seconds": round(cpu_seconds, 1), "history": history}


def _terms_off(traps, step: int, parts: dict[str, torch.Tensor]) -> set[str]:
    """The trap terms that do not count yet at ``step`` (the base circuit is trained first): ``cancel*`` before
    ``cancel_start``, ``background*`` before ``background_start``."""
    return ({k for k in parts if k.startswith("cancel") and step < traps.cancel_start}
            | {k for k in parts if k.startswith("background") and step < traps.background_start})

