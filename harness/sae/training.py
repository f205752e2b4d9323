"""The training loop every SAE architecture shares, and the recipe of the harness's own SAEs.

:class:`Trainer` is the skeleton: :meth:`~Trainer.setup` draws the initial
weights from a generator seeded with ``seed`` and builds the optimiser; then
``epochs`` passes, each over a fresh permutation of the rows (drawn from the
same generator) in mini-batches of ``batch_size`` (the last, short batch is
dropped unless ``drop_last`` is False); each step computes the architecture's
:meth:`~Trainer.loss` (its train step) and applies :meth:`~Trainer.update`;
:meth:`~Trainer.finish` returns the :class:`~harness.sae.model.SAE`.

:class:`NormalisedTrainer` is the recipe of the TopK and ReLU SAEs: it runs in
normalised units -- activations scaled by ``s`` so that the mean squared
distance to the mean is ``d_in`` -- with unit-norm decoder rows (their
gradient's radial part removed before each Adam step), the encoder
initialised to the decoder, ``b_dec`` to the mean, Adam (fused) with a linear
warm-up over the first 5% of steps and a linear decay over the last 20%; the
scale is folded back into the returned weights.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import ClassVar, ContextManager, Iterator

import torch

from harness.errors import HarnessError
from harness.sae.model import SAE


@dataclass
class TrainStats:
    """What a training run measured (``seconds`` of the loop; ``tokens`` = rows seen, repeats counted)."""

    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0
    final_loss: float = float("nan")
    dead_fraction: float = float("nan")  # on the training stream at the end (AuxK's definition)
    selection: str = "fp32"  # how TopK selected: "fp32", or "bf16-prefilter" (harness.sae.bf16_select)
    fallback_rows: int = 0  # rows the bf16 prefilter could not settle and selected in fp32
    fp32_steps: int = 0  # steps that took the fp32 selection although the prefilter was chosen (many dead latents)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)


class Trainer:
    """One SAE training run (see the module docstring); subclasses give setup, loss, update and finish.

    ``acts`` ``[N, d_in]`` are the training rows; ``step`` counts the updates done so far.
    """

    drop_last: ClassVar[bool] = True

    def __init__(self, acts: torch.Tensor, n_latents: int, *, epochs: int, batch_size: int, lr: float,
                 seed: int) -> None:
        self.acts, self.n_latents = acts, int(n_latents)
        self.epochs, self.batch_size, self.lr = int(epochs), int(batch_size), lr
        self.gen = torch.Generator().manual_seed(int(seed))
        self.step = 0
        self.stats = TrainStats()

    def setup(self) -> torch.Tensor:
        """Draw the initial weights and build the optimiser; return the rows to train on ``[N, d]``."""
        raise NotImplementedError

    def loss(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The train step's loss on the batch ``x`` ``[B, d]`` (rows ``rows`` ``[B]`` of the training set)."""
        raise NotImplementedError

    def update(self, loss: torch.Tensor) -> None:
        """One optimiser step from ``loss``."""
        raise NotImplementedError

    def finish(self) -> SAE:
        """The trained SAE (in the units of ``acts``)."""
        raise NotImplementedError

    def loop_context(self) -> ContextManager:
        """Entered around the epochs (e.g. a thread budget); none by default."""
        return contextlib.nullcontext()

    def batches(self, n: int) -> Iterator[torch.Tensor]:
        """Row indices of one epoch's mini-batches: a fresh permutation of ``n`` rows, cut in order."""
        perm = torch.randperm(n, generator=self.gen)
        bs = self.batch_size
        stop = max(1, n // bs) * bs if self.drop_last else n
        for start in range(0, stop, bs):
            yield perm[start : start + bs]

    def run(self) -> tuple[SAE, TrainStats]:
        """Train; returns the SAE and the run's :class:`TrainStats`."""
        loss = None
        with torch.enable_grad():
            x_all = self.setup()
            t0 = time.perf_counter()
            with self.loop_context():
                for _ in range(self.epochs):
                    for rows in self.batches(x_all.shape[0]):
                        rows = rows.to(x_all.device)
                        x = x_all[rows]
                        loss = self.loss(x, rows)
                        self.update(loss)
                        self.step += 1
                        self.stats.tokens += int(x.shape[0])
            self.stats.seconds = time.perf_counter() - t0
        self.stats.steps = self.step
        self.stats.final_loss = float("nan") if loss is None else float(loss.detach())
        return self.finish(), self.stats


class NormalisedTrainer(Trainer):
    """The TopK / ReLU SAEs' recipe (module docstring); sets ``W_enc``, ``b_enc``, ``W_dec``, ``b_dec``
    (normalised units), the scale ``s``, ``d``, the Adam optimiser and its schedule (``total`` steps)."""

    def setup(self) -> torch.Tensor:
        acts = self.acts.float().contiguous()
        N, self.d = acts.shape
        mean, self.s = normaliser(acts)
        x_all = acts * self.s
        W_dec = torch.randn(self.n_latents, self.d, generator=self.gen)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        dev = acts.device
        self.W_enc = W_dec.clone().to(dev).requires_grad_()
        self.W_dec = W_dec.to(dev).requires_grad_()
        self.b_enc = torch.zeros(self.n_latents, device=dev, requires_grad=True)
        self.b_dec = (mean * self.s).clone().requires_grad_()
        params = [self.W_enc, self.b_enc, self.W_dec, self.b_dec]
        self.opt = torch.optim.Adam(params, lr=self.lr, betas=(0.9, 0.999), fused=True)
        self.total = self.epochs * max(1, N // self.batch_size)
        self.warmup = max(1, self.total // 20)
        return x_all

    def lr_at(self, step: int) -> float:
        """Learning rate of ``step``: linear warm-up, constant, linear decay over the last 20% of steps."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        decay_start = int(0.8 * self.total)
        if step >= decay_start:
            return self.lr * max(0.0, (self.total - step) / max(1, self.total - decay_start))
        return self.lr

    def update(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        remove_radial_(self.W_dec.grad, self.W_dec.detach())  # keep the decoder rows on the unit sphere
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(self.step)
        self.opt.step()
        unit_rows_(self.W_dec.data)

    def folded(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(W_enc, b_enc, W_dec, b_dec)`` with the scale folded back (the units of ``acts``)."""
        s = self.s
        return (self.W_enc.detach() * s, self.b_enc.detach().clone(), self.W_dec.detach() / s,
                self.b_dec.detach() / s)


def normaliser(acts: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``(mean [d], s)``: ``s`` scales ``acts`` ``[N, d]`` so that the mean squared distance to the mean is ``d``."""
    mean = acts.mean(0)
    var = (acts - mean).pow(2).sum(1).mean().item()
    if not var > 0:
        raise HarnessError("cannot train an SAE on activations with zero variance")
    return mean, math.sqrt(acts.shape[1] / var)


@torch.no_grad()
def remove_radial_(g: torch.Tensor, W: torch.Tensor, chunk_rows: int = 256) -> None:
    """``g -= (g . w) w`` row by row (``g``, ``W`` ``[n, d]``, rows of ``W`` unit): drop each gradient row's part
    along its decoder row, in place, in row blocks small enough (256 x 512 fp32: 0.5 MiB) that the second read of
    each block comes from cache and no ``[n, d]`` temporary is allocated."""
    for start in range(0, g.shape[0], chunk_rows):
        gb, Wb = g[start : start + chunk_rows], W[start : start + chunk_rows]
        gb -= (gb * Wb).sum(1, keepdim=True) * Wb


@torch.no_grad()
def unit_rows_(W: torch.Tensor) -> None:
    """Scale each row of ``W`` ``[n, d]`` to unit L2 norm, in place."""
    W /= W.norm(dim=1, keepdim=True).clamp_min(1e-12)
