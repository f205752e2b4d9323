"""Training of the in-context learner: its recipe, the regression tasks, the error curve, the training loop."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from harness.core.seeding import deterministic_device, torch_threads
from harness.errors import HarnessError
from harness.embedded.icl_learner.model import ICLArch, InContextRegressor
from harness.embedded.recipe import Log, Recipe
from harness.embedded.schedule import warmup_cosine


@dataclass(frozen=True)
class ICLRecipe(Recipe):
    """How an in-context learner is trained (every field is recorded in the model card).

    Data: ``noise_std`` of the label noise.  Optimiser: AdamW(``lr``,
    ``weight_decay``, betas (0.9, ``beta2``)), linear warm-up over ``warmup``
    steps, then cosine decay to ``lr * min_lr_frac``; gradients clipped to
    ``clip``.  Curriculum (Garg et al.): the number of active input dimensions
    grows linearly from ``curriculum_d_start`` to ``d`` and the number of
    examples from ``curriculum_n_start`` to ``n_points`` over the first
    ``curriculum_frac`` of training (inactive dimensions are zero).
    """

    noise_std: float = 0.0
    steps: int = 6000
    batch_size: int = 64
    lr: float = 1e-3
    min_lr_frac: float = 0.02
    warmup: int = 200
    weight_decay: float = 0.0
    beta2: float = 0.999
    clip: float = 1.0
    curriculum_d_start: int = 0  # 0 = no curriculum over dimensions
    curriculum_n_start: int = 0  # 0 = no curriculum over examples
    curriculum_frac: float = 0.0
    seed: int = 0
    threads: int = 1
    eval_tasks: int = 2000
    eval_seed: int = 12345

    def lr_at(self, step: int) -> float:
        return warmup_cosine(step, steps=self.steps, lr=self.lr, warmup=self.warmup, min_lr_frac=self.min_lr_frac)

    def adam_betas(self) -> tuple[float, float]:
        return (0.9, self.beta2)

    def clip_norm(self) -> float:
        return self.clip


@dataclass(frozen=True)
class ICLModelSpec:
    """A named in-context learner: its architecture and training recipe.

    ``device``: where it trains.  ``"cpu"`` learners rebuild bit for bit anywhere
    (``harness models check``); a ``"cuda"`` learner is trained on a GPU, its
    weights committed, and ``harness models check`` verifies its card's numbers
    from those weights within ``card_tolerance`` (a GPU run cannot be
    reproduced bit for bit on a CPU).
    """

    name: str
    arch: ICLArch
    recipe: ICLRecipe
    description: str = ""
    device: str = "cpu"
    card_tolerance: float = 0.0


def sample_regression(batch: int, n_points: int, d: int, noise_std: float, generator: torch.Generator,
                      d_active: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``xs [B, P, d]``, ``ys [B, P]``, ``w [B, d]`` with ``y = x . w + noise`` (dims >= ``d_active`` zero)."""
    xs = torch.randn(batch, n_points, d, generator=generator)
    w = torch.randn(batch, d, generator=generator)
    if d_active is not None and d_active < d:
        xs[..., d_active:] = 0.0
        w[..., d_active:] = 0.0
    ys = torch.einsum("bpd,bd->bp", xs, w)
    if noise_std > 0:
        ys = ys + noise_std * torch.randn(batch, n_points, generator=generator)
    return xs, ys, w


def _curriculum(step: int, arch: ICLArch, r: ICLRecipe) -> tuple[int, int]:
    """(active dimensions, number of points incl. the query) at ``step``."""
    full_points = arch.n_points + 1
    if r.curriculum_frac <= 0:
        return arch.d, full_points
    t = min(1.0, step / (r.curriculum_frac * r.steps))
    d_act = arch.d if not r.curriculum_d_start else int(round(r.curriculum_d_start + t * (arch.d - r.curriculum_d_start)))
    pts = full_points if not r.curriculum_n_start else int(round(r.curriculum_n_start + t * (full_points - r.curriculum_n_start)))
    return d_act, pts


@torch.no_grad()
def error_curve(model: InContextRegressor, n_tasks: int, noise_std: float, seed: int,
                batch: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Normalised squared error (/ d) against the noisy label per number of examples ``k = 0..n``:
    ``(model, Bayes posterior mean)`` on the same ``n_tasks`` fresh tasks."""
    curve, bayes, _ = error_curves(model, n_tasks, noise_std, seed, batch)
    return curve, bayes


@torch.no_grad()
def error_curves(model: InContextRegressor, n_tasks: int, noise_std: float, seed: int,
                 batch: int = 500) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`error_curve` and the normalised squared prediction difference (SPD / d) between the model
    and the Bayes posterior mean per ``k``: ``(model error, Bayes error, SPD)``, each ``[n_points + 1]``."""
    g = torch.Generator().manual_seed(seed)
    arch = model.arch
    total = np.zeros(arch.n_points + 1)
    bayes = np.zeros(arch.n_points + 1)
    spd = np.zeros(arch.n_points + 1)
    eye = torch.eye(arch.d, dtype=torch.float64)
    done = 0
    model.eval()
    while done < n_tasks:
        b = min(batch, n_tasks - done)
        xs, ys, _ = sample_regression(b, arch.n_points + 1, arch.d, noise_std, g)
        pred = model(xs, ys[:, :-1])
        total += ((pred - ys) ** 2).sum(0).numpy() / arch.d
        X, Y = xs.double(), ys.double()
        for k in range(arch.n_points + 1):
            Xk, yk = X[:, :k], Y[:, :k]
            if k == 0:
                w = torch.zeros(b, arch.d, dtype=torch.float64)
            elif noise_std > 0:
                A = Xk.transpose(1, 2) @ Xk + noise_std**2 * eye
                w = torch.linalg.solve(A, (Xk.transpose(1, 2) @ yk[..., None]))[..., 0]
            else:
                w = (torch.linalg.pinv(Xk) @ yk[..., None])[..., 0]
            bayes_pred = (X[:, k] * w).sum(-1)
            bayes[k] += float(((bayes_pred - Y[:, k]) ** 2).sum()) / arch.d
            spd[k] += float(((pred[:, k].double() - bayes_pred) ** 2).sum()) / arch.d
        done += b
    return total / n_tasks, bayes / n_tasks, spd / n_tasks


def _not_pos_embed_matrix(name: str, p: torch.nn.Parameter) -> bool:
    """Weight decay on matrices except the learned positions."""
    return p.dim() >= 2 and "pos_embed" not in name


def train_icl_model(spec: ICLModelSpec, log: Log = None, log_every: int = 500) -> tuple[InContextRegressor, dict]:
    """Train ``spec`` deterministically on ``spec.device``; returns the model (eval mode, on the CPU) and its card.

    The initialisation and every batch are drawn on the CPU (the same numbers on any machine) and
    moved to the device; on CUDA PyTorch's deterministic settings are on.  The card's error curves
    are computed on the CPU from the final weights, so a check on a CPU recomputes them.
    """
    arch, r = spec.arch, spec.recipe
    device = torch.device(spec.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise HarnessError(f"{spec.name} is trained on a GPU (its recipe: {spec.device}) and torch sees none here; "
                           f"build it on a CUDA machine (`harness models build --name {spec.name}`) and commit "
                           "the weights, as the card says")
    with torch_threads(r.threads), deterministic_device(device):
        torch.manual_seed(r.seed)
        model = InContextRegressor(arch).to(device)
        gen = torch.Generator().manual_seed(r.seed + 1)
        opt = r.adamw(model, decays=_not_pos_embed_matrix)
        t0, c0 = time.perf_counter(), time.process_time()
        model.train()
        running = 0.0
        history = []
        for step in range(r.steps):
            lr = r.set_lr(opt, step)
            d_act, pts = _curriculum(step, arch, r)
            xs, ys, _ = sample_regression(r.batch_size, pts, arch.d, r.noise_std, gen, d_active=d_act)
            xs, ys = xs.to(device), ys.to(device)
            pred = model(xs, ys[:, :-1])
            loss = ((pred - ys) ** 2).mean() / arch.d
            r.update(opt, model, loss)
            running += loss.item()
            if (step + 1) % log_every == 0:
                history.append({"step": step + 1, "train_loss": running / log_every,
                                "seconds": round(time.perf_counter() - t0, 1)})
                if log:
                    log(f"[{spec.name}] step {step + 1}/{r.steps} loss {running / log_every:.4f} "
                        f"lr {lr:.2e} d {d_act} pts {pts} ({time.perf_counter() - t0:.0f} s)")
                running = 0.0
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
        model = model.cpu().eval()
        curves = error_curves(model, r.eval_tasks, r.noise_std, r.eval_seed)
    return model, _card(spec, seconds, cpu_seconds, *curves, history)


def _card(spec: ICLModelSpec, seconds: float, cpu_seconds: float, curve: np.ndarray, bayes: np.ndarray,
          spd: np.ndarray, history: list[dict[str, Any]]) -> dict[str, Any]:
    """The model card of a trained learner: architecture, recipe, training summary, error curves per k.

    A GPU-trained learner's card also states where it was trained (``trained_on``: device name) and its
    SPD to the Bayes predictor per k; the committed CPU learners' cards keep their form (bit-exact check).
    """
    arch, r = spec.arch, spec.recipe
    extra: dict[str, Any] = {}
    if spec.device != "cpu":
        extra = {"trained_on": torch.cuda.get_device_name() if torch.cuda.is_available() else spec.device,
                 "spd_to_bayes_per_k": [round(float(v), 6) for v in spd],
                 "card_tolerance": spec.card_tolerance}
    return {
        **extra,
        "name": spec.name,
        "description": spec.description,
        "task": f"y = w.x + N(0, {r.noise_std}^2), w ~ N(0, I_{arch.d}), x ~ N(0, I_{arch.d}), "
                f"up to {arch.n_points} examples",
        "arch": asdict(arch),
        "recipe": r.to_dict(),
        "training_steps": r.steps,
        "training_seconds": round(seconds, 1),
        "training_cpu_seconds": round(cpu_seconds, 1),
        "training_examples_seen": r.steps * r.batch_size,
        "final_error_per_k": [round(float(v), 5) for v in curve],
        "bayes_error_per_k": [round(float(v), 5) for v in bayes],
        "final_error_note": (f"squared error / d against the noisy label, {r.eval_tasks} fresh tasks "
                             f"(seed {r.eval_seed}), k = number of in-context examples 0..{arch.n_points}; "
                             "bayes_error_per_k: the posterior mean (min-norm OLS when noiseless, ridge "
                             "lambda = noise variance otherwise) on the same tasks"),
        "train_loss_history": history,
        "torch_version": torch.__version__,
    }
