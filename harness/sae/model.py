"""Sparse autoencoder weights, encode / decode, training loops, and the on-disk format.

:class:`SAE` holds weights in the units of the activations it reads:
``W_enc``, ``W_dec`` ``[n_latents, d_in]``, ``b_enc`` ``[n_latents]``, ``b_dec``
``[d_in]``; ``pre = (x - b_dec) W_enc^T + b_enc`` and

- ``activation="topk"``: codes = ``relu`` of the ``k`` largest ``pre`` (:class:`SparseCodes`
  with exactly ``k`` distinct latents per row; a slot is inactive only where fewer
  than ``k`` pre-activations are positive, as in Gao et al.);
  with ``grad_beta > 0`` (g-SAE, Olmo et al. 2024) latents are *selected* by
  ``relu(pre) * (1 + grad_beta * |u_i . g_hat|)``, ``u_i`` the unit decoder
  direction and ``g_hat = grad_scale * g`` the downstream-loss gradient at ``x``;
- ``activation="relu"``: codes = ``relu(pre)`` (dense);
- ``activation="argmax"``: only the largest ``relu(pre)`` (the discrete SAE's
  code; :class:`SparseCodes` with ``k = 1``);

and ``x_hat = b_dec + codes W_dec``.

Training (:func:`train_topk_sae`, :func:`train_relu_sae`) runs in normalised
units -- activations scaled by ``s`` so that the mean squared distance to the
mean is ``d_in`` -- with unit-norm decoder rows (their gradient's radial part
removed before each Adam step), the encoder initialised to the decoder, and
``b_dec`` to the mean; the scale is folded back into the returned weights.
TopK training uses :func:`~harness.sae.autograd.topk_sae_forward` (sparse
backward) and AuxK (Gao et al. 2024): latents that fired on none of the last
``dead_tokens`` training tokens reconstruct the residual with their top
``k_aux`` activations, weighted ``auxk_coef``.

On-disk format (a user's own SAE; see :func:`load_sae`): a directory with

- ``sae.safetensors``: ``W_enc`` ``[d_in, n_latents]``, ``b_enc`` ``[n_latents]``,
  ``W_dec`` ``[n_latents, d_in]``, ``b_dec`` ``[d_in]`` (the SAELens layout; any
  float dtype, read as float32);
- ``sae.json``: ``{"activation": "topk" | "relu" | "argmax", "k": 32}`` (``k``
  only for topk), optionally ``"d_in"`` / ``"n_latents"`` (checked against
  the weights) and ``"apply_b_dec_to_input"`` (default true: encode
  ``x - b_dec``; false: encode ``x``).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.errors import ConfigError, HarnessError
from harness.protocols.reconstruction import SparseCodes
from harness.sae.autograd import topk_sae_forward
from harness.sae.kernels import sparse_decode, topk_encode

SAE_WEIGHTS = "sae.safetensors"
SAE_JSON = "sae.json"
ACTIVATIONS = ("topk", "relu", "argmax")


@dataclass
class SAE:
    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor
    activation: str = "topk"
    k: int | None = None
    grad_beta: float = 0.0
    grad_scale: float = 1.0
    apply_b_dec_to_input: bool = True
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"SAE activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        n, d = self.W_dec.shape
        if self.W_enc.shape != (n, d) or self.b_enc.shape != (n,) or self.b_dec.shape != (d,):
            raise ConfigError(
                f"inconsistent SAE shapes: W_enc {list(self.W_enc.shape)}, b_enc {list(self.b_enc.shape)}, "
                f"W_dec {list(self.W_dec.shape)}, b_dec {list(self.b_dec.shape)} (expected W_enc and W_dec "
                f"[n_latents, d_in] internally)"
            )
        if self.activation == "topk":
            if self.k is None or not 1 <= int(self.k) <= n:
                raise ConfigError(f"a topk SAE needs 1 <= k <= n_latents = {n}, got k = {self.k}")
            self.k = int(self.k)

    @property
    def n_latents(self) -> int:
        return int(self.W_dec.shape[0])

    @property
    def d_in(self) -> int:
        return int(self.W_dec.shape[1])

    def to(self, device) -> "SAE":
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    # ------------------------------------------------------------------ encode / decode
    def _scale_fn(self, grads: torch.Tensor | None):
        if self.activation != "topk" or self.grad_beta <= 0:
            return None
        if grads is None:
            raise HarnessError("this g-SAE selects latents with gradients but was given none")
        unit = self.W_dec / self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
        g = grads.to(self.W_dec.dtype) * self.grad_scale

        def scale(rows: slice) -> torch.Tensor:
            return (g[rows] @ unit.t()).abs_().mul_(self.grad_beta).add_(1.0)

        return scale

    @torch.no_grad()
    def encode(self, x: torch.Tensor, grads: torch.Tensor | None = None) -> SparseCodes | torch.Tensor:
        x = x.to(self.W_enc.dtype)
        if self.activation == "topk":
            centre = self.b_dec if self.apply_b_dec_to_input else None
            vals, idx = topk_encode(x, self.W_enc, self.b_enc, self.k, centre, self._scale_fn(grads))
            return SparseCodes(idx, vals, self.n_latents)
        xc = x - self.b_dec if self.apply_b_dec_to_input else x
        pre = torch.addmm(self.b_enc, xc, self.W_enc.t()).clamp_min_(0)
        if self.activation == "relu":
            return pre
        vals, idx = pre.max(dim=1, keepdim=True)
        return SparseCodes(idx, vals, self.n_latents)

    @torch.no_grad()
    def decode(self, codes: SparseCodes | torch.Tensor) -> torch.Tensor:
        if isinstance(codes, SparseCodes):
            return sparse_decode(codes.indices, codes.values, self.W_dec, self.b_dec)
        return torch.addmm(self.b_dec, codes.to(self.W_dec.dtype), self.W_dec)

    # ------------------------------------------------------------------ save
    def save(self, directory: str | Path) -> Path:
        """Write ``sae.safetensors`` + ``sae.json`` (the user format; see the module docstring)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {
            "W_enc": self.W_enc.t().contiguous().cpu(), "b_enc": self.b_enc.contiguous().cpu(),
            "W_dec": self.W_dec.contiguous().cpu(), "b_dec": self.b_dec.contiguous().cpu(),
        }
        save_file(tensors, str(directory / SAE_WEIGHTS))
        meta = {"activation": self.activation, "d_in": self.d_in, "n_latents": self.n_latents,
                "apply_b_dec_to_input": self.apply_b_dec_to_input}
        if self.activation == "topk":
            meta["k"] = self.k
        (directory / SAE_JSON).write_text(json.dumps(meta, indent=2) + "\n")
        return directory


def load_sae(directory: str | Path, k: int | None = None) -> SAE:
    """Read a user's SAE directory (``sae.safetensors`` + ``sae.json``); ``k`` overrides the JSON's."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory).expanduser()
    wpath, jpath = directory / SAE_WEIGHTS, directory / SAE_JSON
    if not wpath.is_file() or not jpath.is_file():
        raise HarnessError(
            f"{directory} is not an SAE directory: expected {SAE_WEIGHTS} (W_enc [d_in, n_latents], b_enc, "
            f"W_dec [n_latents, d_in], b_dec) and {SAE_JSON} ({{\"activation\": \"topk\", \"k\": 32}})"
        )
    try:
        meta = json.loads(jpath.read_text())
    except (OSError, ValueError) as e:
        raise HarnessError(f"cannot read {jpath}: {e}") from None
    if not isinstance(meta, dict):
        raise HarnessError(f"{jpath} must hold a JSON object")
    try:
        t = load_file(str(wpath), device="cpu")
    except (OSError, SafetensorError) as e:
        raise HarnessError(f"cannot read {wpath}: {e}") from None
    missing = [n for n in ("W_enc", "b_enc", "W_dec", "b_dec") if n not in t]
    if missing:
        raise HarnessError(f"{wpath} lacks tensor(s) {', '.join(missing)} (has: {', '.join(sorted(t))})")
    W_enc, b_enc, W_dec, b_dec = (t[n].float() for n in ("W_enc", "b_enc", "W_dec", "b_dec"))
    if W_dec.dim() != 2:
        raise HarnessError(f"W_dec must be 2-D [n_latents, d_in], got {list(W_dec.shape)}")
    n, d = W_dec.shape
    if W_enc.shape != (d, n):
        raise HarnessError(f"W_enc must be [d_in, n_latents] = {[d, n]} (W_dec is [n_latents, d_in] = {[n, d]}), "
                           f"got {list(W_enc.shape)}")
    for key, want in (("d_in", d), ("n_latents", n)):
        if key in meta and int(meta[key]) != want:
            raise HarnessError(f"{jpath} says {key} = {meta[key]} but the weights have {want}")
    activation = meta.get("activation")
    if activation not in ACTIVATIONS:
        raise HarnessError(f"{jpath}: 'activation' must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    kk = k if k is not None else meta.get("k")
    try:
        return SAE(W_enc.t().contiguous(), b_enc, W_dec.contiguous(), b_dec, activation=activation,
                   k=None if kk is None else int(kk),
                   apply_b_dec_to_input=bool(meta.get("apply_b_dec_to_input", True)),
                   info={"path": str(directory)})
    except ConfigError as e:
        raise HarnessError(f"{directory}: {e}") from None


# ====================================================================== training
@dataclass
class TrainStats:
    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0
    final_loss: float = float("nan")
    dead_fraction: float = float("nan")  # on the training stream at the end (AuxK's definition)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)


def _normaliser(acts: torch.Tensor) -> tuple[torch.Tensor, float]:
    mean = acts.mean(0)
    var = (acts - mean).pow(2).sum(1).mean().item()
    if not var > 0:
        raise HarnessError("cannot train an SAE on activations with zero variance")
    return mean, math.sqrt(acts.shape[1] / var)


def _init(n_latents: int, d: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    W_dec = torch.randn(n_latents, d, generator=gen)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    return W_dec.clone(), W_dec


def _lr_at(step: int, total: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    decay_start = int(0.8 * total)
    if step >= decay_start:
        return lr * max(0.0, (total - step) / max(1, total - decay_start))
    return lr


@torch.no_grad()
def _unit_rows_(W: torch.Tensor) -> None:
    W /= W.norm(dim=1, keepdim=True).clamp_min(1e-12)


@torch.no_grad()
def _remove_radial_(grad: torch.Tensor, W: torch.Tensor) -> None:
    grad -= (grad * W).sum(1, keepdim=True) * W


def _fold(W_enc, b_enc, W_dec, b_dec, s: float) -> tuple[torch.Tensor, ...]:
    return (W_enc.detach() * s, b_enc.detach().clone(), W_dec.detach() / s, b_dec.detach() / s)


def train_topk_sae(
    acts: torch.Tensor,
    n_latents: int,
    k: int,
    *,
    epochs: int = 6,
    batch_size: int = 512,
    lr: float = 5e-3,
    seed: int = 0,
    grads: torch.Tensor | None = None,
    grad_beta: float = 0.0,
    auxk_coef: float = 1 / 32,
    k_aux: int | None = None,
    dead_tokens: int | None = None,
) -> tuple[SAE, TrainStats]:
    """Train a TopK SAE (g-SAE when ``grads`` and ``grad_beta > 0``); see the module docstring.

    ``acts`` ``[N, d]``; ``grads`` ``[N, d]`` the downstream-loss gradients at
    ``acts``; ``auxk_coef = 0`` disables AuxK; ``dead_tokens`` defaults to ``N``
    (a latent is dead after one epoch without firing).
    """
    acts = acts.float().contiguous()
    N, d = acts.shape
    if not 1 <= k <= n_latents:
        raise ConfigError(f"k must lie in [1, n_latents = {n_latents}], got {k}")
    use_grads = grads is not None and grad_beta > 0
    gen = torch.Generator().manual_seed(int(seed))
    mean, s = _normaliser(acts)
    x_all = acts * s
    grad_scale = 1.0
    if use_grads:
        grads = grads.float()
        rms = grads.pow(2).sum(1).mean().sqrt().item()
        grad_scale = math.sqrt(d) / rms if rms > 0 else 1.0  # so that E|g_hat|^2 = d
        g_all = grads * grad_scale
    W_enc0, W_dec0 = _init(n_latents, d, gen)
    dev = acts.device
    W_enc = W_enc0.to(dev).requires_grad_()
    W_dec = W_dec0.to(dev).requires_grad_()
    b_enc = torch.zeros(n_latents, device=dev, requires_grad=True)
    b_dec = (mean * s).clone().requires_grad_()
    params = [W_enc, b_enc, W_dec, b_dec]
    opt = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), fused=True)
    k_aux = d // 2 if k_aux is None else int(k_aux)
    dead_tokens = N if dead_tokens is None else int(dead_tokens)
    since_fired = torch.zeros(n_latents, dtype=torch.long, device=dev)
    steps_per_epoch = max(1, N // batch_size)
    total = epochs * steps_per_epoch
    warmup = max(1, total // 20)
    stats = TrainStats()
    t0 = time.perf_counter()
    step = 0
    for _ in range(epochs):
        perm = torch.randperm(N, generator=gen)
        for b in range(steps_per_epoch):
            rows = perm[b * batch_size : (b + 1) * batch_size].to(dev)
            x = x_all[rows]
            scale = None
            if use_grads:
                with torch.no_grad():
                    scale = (g_all[rows] @ W_dec.detach().t()).abs_().mul_(grad_beta).add_(1.0)
            dead_idx = None
            if auxk_coef > 0:
                dead = since_fired > dead_tokens
                if bool(dead.any()):
                    dead_idx = dead.nonzero().flatten()
            x_hat, aux_hat, vals, idx = topk_sae_forward(x, W_enc, b_enc, W_dec, b_dec, k, scale, dead_idx, k_aux)
            denom = float(x.shape[0] * d)  # normalised units: total variance of the batch ~ B * d
            e = x - x_hat
            loss = e.pow(2).sum() / denom
            if aux_hat.numel():
                frac = min(1.0, dead_idx.numel() / max(1, k_aux))
                loss = loss + auxk_coef * frac * (aux_hat - e.detach()).pow(2).sum() / denom
            opt.zero_grad(set_to_none=True)
            loss.backward()
            _remove_radial_(W_dec.grad, W_dec.detach())
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, total, lr, warmup)
            opt.step()
            _unit_rows_(W_dec.data)
            with torch.no_grad():
                fired = torch.bincount(idx[vals > 0], minlength=n_latents) > 0
                since_fired += x.shape[0]
                since_fired[fired] = 0
            step += 1
            stats.tokens += int(x.shape[0])
    stats.seconds = time.perf_counter() - t0
    stats.steps = step
    stats.final_loss = float(loss.detach())
    stats.dead_fraction = float((since_fired > dead_tokens).float().mean())
    W_e, b_e, W_d, b_d = _fold(W_enc, b_enc, W_dec, b_dec, s)
    sae = SAE(W_e, b_e, W_d, b_d, activation="topk", k=k, grad_beta=grad_beta if use_grads else 0.0,
              grad_scale=grad_scale, info={"train": stats.__dict__})
    return sae, stats


def train_relu_sae(
    acts: torch.Tensor,
    n_latents: int,
    *,
    l1_coef: float = 0.1,
    epochs: int = 6,
    batch_size: int = 512,
    lr: float = 1e-2,
    seed: int = 0,
    activation: str = "relu",
) -> tuple[SAE, TrainStats]:
    """Train a ReLU SAE with an L1 penalty: ``|e|^2 / d + l1_coef * sum_i z_i / sqrt(d)`` per token.

    Normalised units, unit-norm decoder rows (so the L1 cannot be dodged by
    shrinking codes); the L1 coefficient ramps up linearly over the first 10% of
    steps.  ``activation="argmax"`` returns the discrete (argmax-code) SAE of the
    same weights.
    """
    acts = acts.float().contiguous()
    N, d = acts.shape
    gen = torch.Generator().manual_seed(int(seed))
    mean, s = _normaliser(acts)
    x_all = acts * s
    W_enc0, W_dec0 = _init(n_latents, d, gen)
    dev = acts.device
    W_enc = W_enc0.to(dev).requires_grad_()
    W_dec = W_dec0.to(dev).requires_grad_()
    b_enc = torch.zeros(n_latents, device=dev, requires_grad=True)
    b_dec = (mean * s).clone().requires_grad_()
    opt = torch.optim.Adam([W_enc, b_enc, W_dec, b_dec], lr=lr, fused=True)
    steps_per_epoch = max(1, N // batch_size)
    total = epochs * steps_per_epoch
    warmup = max(1, total // 20)
    ramp = max(1, total // 10)
    stats = TrainStats()
    t0 = time.perf_counter()
    step = 0
    sqrt_d = math.sqrt(d)
    for _ in range(epochs):
        perm = torch.randperm(N, generator=gen)
        for b in range(steps_per_epoch):
            x = x_all[perm[b * batch_size : (b + 1) * batch_size].to(dev)]
            z = torch.relu(torch.addmm(b_enc, x - b_dec, W_enc.t()))
            x_hat = torch.addmm(b_dec, z, W_dec)
            mse = (x - x_hat).pow(2).sum(1).mean() / d
            loss = mse + l1_coef * min(1.0, (step + 1) / ramp) * z.sum(1).mean() / sqrt_d
            opt.zero_grad(set_to_none=True)
            loss.backward()
            _remove_radial_(W_dec.grad, W_dec.detach())
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, total, lr, warmup)
            opt.step()
            _unit_rows_(W_dec.data)
            step += 1
            stats.tokens += int(x.shape[0])
    stats.seconds = time.perf_counter() - t0
    stats.steps = step
    stats.final_loss = float(loss.detach())
    W_e, b_e, W_d, b_d = _fold(W_enc, b_enc, W_dec, b_dec, s)
    return SAE(W_e, b_e, W_d, b_d, activation=activation, info={"train": stats.__dict__}), stats
