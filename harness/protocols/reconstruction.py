"""Reconstruction protocol: ``fit(acts) -> self``, ``encode(acts) -> codes``, ``decode(codes) -> acts``.

A reconstruction task hands a method activations gathered from a model at one
hook point: a *train* split to fit on and a held-out split to encode and
decode.  The task scores the reconstruction (FVU, cosine, L0, dead latents)
and splices it back into the model for the downstream metrics (loss
recovered, sentence-embedding cosine).  Methods never see the model.

Types
-----
- ``acts``: ``torch.Tensor`` float32 ``[N, d]`` on CPU (one row per token).
  Methods get a private copy and may modify it.
- ``codes``: what :meth:`ReconstructionMethod.encode` returns, either

  * a dense float tensor (or numpy array) ``[N, n_latents]`` (zeros are
    inactive latents; e.g. PCA coefficients, ReLU-SAE codes), or
  * a :class:`SparseCodes` ``(indices [N, k] int64, values [N, k] float,
    n_latents)``: row ``i`` has latent ``indices[i, j]`` active with value
    ``values[i, j]``; a slot whose value is 0 counts as inactive; an index
    repeated within a row adds up (as in a sparse decode).  TopK SAEs use
    this form, so nothing of size ``[N, n_latents]`` is built.

  The task computes L0 and the dead-latent fraction from the codes, so they
  must be what :meth:`decode` actually uses.
- a latent's *decoder direction* is ``decode(e_j) - decode(0)``: what one unit of latent ``j`` adds to
  the reconstruction (an SAE's ``W_dec[j]``, a PCA component, a dictionary atom).  The known-truth tasks
  read a method's dictionary this way (:func:`decoder_directions`), through ``decode`` alone, so every
  method of the protocol has one; for a decoder that is not affine it is the direction at the origin.
- ``decode(codes)`` returns float ``[N, d]`` (tensor or numpy array).  The codes it is given are the
  validated ones, on the CPU: a method computing on ``self.device`` moves them there
  (:func:`codes_to`) and may return its output on any device (the task moves it to the CPU).

Gradients (for gradient-aware methods such as g-SAE)
----------------------------------------------------
A method class that sets ``uses_gradients = True`` is called as
``fit(acts, grads=G_train)`` and ``encode(acts, grads=G_test)``, where
``G[i]`` is the gradient of the source's downstream loss with respect to the
activation row ``i`` (``[N, d]``, same order as ``acts``; see the task for
the loss: next-token cross-entropy for language models).  ``grads`` is None
when the task's source defines no such loss.  Other methods are called with
the activations only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Union

import numpy as np
import torch

from harness.errors import InvalidOutputError
from harness.core.method import Method


@dataclass(frozen=True)
class SparseCodes:
    """Sparse codes: ``indices`` int64 ``[N, k]``, ``values`` float ``[N, k]``, ``n_latents``."""

    indices: torch.Tensor
    values: torch.Tensor
    n_latents: int

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.indices.shape[0]), int(self.n_latents))

    def to_dense(self) -> torch.Tensor:
        """``[N, n_latents]`` (repeated indices in a row add up)."""
        out = torch.zeros(self.shape, dtype=self.values.dtype, device=self.values.device)
        return out.scatter_add_(1, self.indices, self.values)

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def to(self, device: torch.device | str) -> "SparseCodes":
        """The same codes with ``indices`` and ``values`` on ``device``."""
        return SparseCodes(self.indices.to(device), self.values.to(device), self.n_latents)


Codes = Union[torch.Tensor, np.ndarray, SparseCodes]


def codes_to(codes: Codes, device: torch.device | str) -> Codes:
    """``codes`` (dense tensor or :class:`SparseCodes`) on ``device``; a numpy array is made a tensor first.

    The task hands ``decode`` the validated codes on the CPU (:func:`validate_codes`); a method whose
    weights live on another device moves them there with this.
    """
    if isinstance(codes, SparseCodes):
        return codes.to(device)
    if isinstance(codes, np.ndarray):
        return torch.from_numpy(codes).to(device)
    return codes.to(device)

#: Default sparsity of methods whose ``k`` is left unset: ``d // K_DIVISOR`` active
#: latents for ``d``-wide activations (8 for d = 96, 32 for d = 384, 64 for d = 768).
#: TopK SAEs, g-SAEs and the PCA / random-dictionary baselines share it, so that
#: their default cells compare at the same L0.
K_DIVISOR = 12


def default_k(d: int, k: int | None = None) -> int:
    """``k`` if given, else ``max(1, d // K_DIVISOR)``."""
    return int(k) if k is not None else max(1, int(d) // K_DIVISOR)


class ReconstructionMethod(Method):
    """A method that learns a (usually sparse) code for activations and reconstructs them.

    Subclasses implement :meth:`fit`, :meth:`encode` and :meth:`decode` (see the
    module docstring for the types).  ``self.seed`` and ``self.device`` are set
    by the runner before :meth:`fit`.
    """

    family = "reconstruction"
    #: True: called as ``fit(acts, grads=...)`` / ``encode(acts, grads=...)``.
    uses_gradients: ClassVar[bool] = False

    def fit(self, acts: torch.Tensor, grads: torch.Tensor | None = None) -> "ReconstructionMethod":
        raise NotImplementedError

    def encode(self, acts: torch.Tensor, grads: torch.Tensor | None = None) -> Codes:
        raise NotImplementedError

    def decode(self, codes: Codes) -> torch.Tensor:
        raise NotImplementedError


# ------------------------------------------------------------------ validation helpers
def _as_tensor(x: Any, what: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise InvalidOutputError(f"{what} must be a torch tensor or numpy array, got {type(x).__name__}")
    return x.detach().cpu()


def _finite_floats(x: torch.Tensor, what: str, holder: str) -> torch.Tensor:
    """``x`` as float32 after checking that it holds floats and no NaN or inf."""
    if not x.is_floating_point():
        raise InvalidOutputError(f"{what} must be floats, got {x.dtype}")
    if not torch.isfinite(x).all():
        raise InvalidOutputError(f"{holder} contains NaN or inf")
    return x.float()


def validate_codes(codes: Any, n_rows: int) -> Codes:
    """Check a method's codes; returns a float32 dense tensor or a :class:`SparseCodes` on CPU."""
    if isinstance(codes, SparseCodes):
        idx, val = _as_tensor(codes.indices, "SparseCodes.indices"), _as_tensor(codes.values, "SparseCodes.values")
        n_latents = int(codes.n_latents)
        if idx.dim() != 2 or idx.shape != val.shape or idx.shape[0] != n_rows:
            raise InvalidOutputError(
                f"SparseCodes indices and values must both have shape [{n_rows}, k]; "
                f"got {list(idx.shape)} and {list(val.shape)}"
            )
        if idx.dtype not in (torch.int64, torch.int32) or not val.is_floating_point():
            raise InvalidOutputError(f"SparseCodes need integer indices and float values, got {idx.dtype} / {val.dtype}")
        if n_latents < 1:
            raise InvalidOutputError(f"SparseCodes.n_latents must be >= 1, got {n_latents}")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n_latents):
            raise InvalidOutputError(f"SparseCodes indices must lie in [0, {n_latents})")
        if not torch.isfinite(val).all():
            raise InvalidOutputError("SparseCodes values contain NaN or inf")
        return SparseCodes(idx.long(), val.float(), n_latents)
    dense = _as_tensor(codes, "encode's output")
    if dense.dim() != 2 or dense.shape[0] != n_rows:
        raise InvalidOutputError(f"encode must return codes of shape [{n_rows}, n_latents], got {list(dense.shape)}")
    return _finite_floats(dense, "dense codes", "codes")


def validate_reconstruction(x_hat: Any, shape: tuple[int, int]) -> torch.Tensor:
    """Check ``decode``'s output: float ``[N, d]``, finite; returns a float32 CPU tensor."""
    x_hat = _as_tensor(x_hat, "decode's output")
    if tuple(x_hat.shape) != tuple(shape):
        raise InvalidOutputError(f"decode must return shape {list(shape)}, got {list(x_hat.shape)}")
    return _finite_floats(x_hat, "decode's output", "the reconstruction")


def n_latents_of(codes: Codes) -> int:
    return int(codes.n_latents) if isinstance(codes, SparseCodes) else int(codes.shape[1])


def decoder_directions(method: ReconstructionMethod, like: Codes, d: int, chunk: int = 1024) -> torch.Tensor:
    """``[n_latents, d]``: row ``j`` = ``decode(e_j) - decode(0)``, in codes of the form of ``like``.

    ``like`` (validated codes the method returned) decides the probe: :class:`SparseCodes` with one slot
    per row, or dense rows of the identity, ``chunk`` rows per ``decode`` call.  The outputs are validated as
    reconstructions (float, finite, ``[rows, d]``).
    """
    n = n_latents_of(like)
    if isinstance(like, SparseCodes):
        zero = SparseCodes(torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 1), n)
    else:
        zero = torch.zeros(1, n)
    origin = validate_reconstruction(method.decode(zero), (1, d))
    rows = []
    for start in range(0, n, chunk):
        ids = torch.arange(start, min(n, start + chunk))
        if isinstance(like, SparseCodes):
            probe: Codes = SparseCodes(ids[:, None], torch.ones(len(ids), 1), n)
        else:
            probe = torch.zeros(len(ids), n)
            probe[torch.arange(len(ids)), ids] = 1.0
        rows.append(validate_reconstruction(method.decode(probe), (len(ids), d)) - origin)
    return torch.cat(rows)
