"""Seed every random number generator a cell may touch."""

from __future__ import annotations

import os
import random
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy's global generator and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


#: cuBLAS workspace setting that makes its matmuls deterministic (NVIDIA's documented choice; ``:16:8`` also
#: works, slower).  cuBLAS reads it when PyTorch creates its first handle, so it must be in the environment
#: before CUDA does any work: :func:`resolve_device` sets it before it even asks whether CUDA is there.
CUBLAS_WORKSPACE_CONFIG = ":4096:8"


def resolve_device(spec: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cpu``; ``cuda`` (error when absent).

    When CUDA may be used (``auto``, ``cuda``), ``CUBLAS_WORKSPACE_CONFIG`` is set first unless the user
    set it (see :data:`CUBLAS_WORKSPACE_CONFIG`).
    """
    from harness.errors import ConfigError

    if spec in ("auto", "cuda"):
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_CONFIG)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for but torch sees no CUDA device; use --device auto or cpu")
        return torch.device("cuda")
    raise ConfigError(f"unknown device {spec!r}; use auto, cpu or cuda")


def determinism_settings() -> dict[str, Any]:
    """The settings that decide whether a GPU run repeats itself, as they are now (recorded in provenance)."""
    return {
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cuda_matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        "sdp_fused_kernels": _fused_sdp_enabled(),
    }


def _fused_sdp_enabled() -> bool:
    """Whether ``scaled_dot_product_attention`` may use a fused CUDA kernel (flash, memory-efficient, cuDNN)."""
    b = torch.backends.cuda
    return bool(b.flash_sdp_enabled() or b.mem_efficient_sdp_enabled() or b.cudnn_sdp_enabled())


def _set_fused_sdp(flash: bool, mem_efficient: bool, cudnn: bool) -> None:
    b = torch.backends.cuda
    b.enable_flash_sdp(flash)
    b.enable_mem_efficient_sdp(mem_efficient)
    b.enable_cudnn_sdp(cudnn)


@contextmanager
def deterministic_device(device: torch.device) -> Iterator[None]:
    """Run the block with PyTorch's deterministic settings when ``device`` is a CUDA device, then restore them.

    On CUDA: deterministic algorithms (``warn_only``: an op without a deterministic kernel warns instead of
    failing the cell; the warning names it), no TF32 in matmuls or convolutions (TF32 rounds inputs to 10
    mantissa bits: results would differ from the CPU's by far more than float32 rounding), deterministic
    cuDNN kernels and no cuDNN benchmarking (which picks kernels by timing, so by chance), and attention
    (``scaled_dot_product_attention``) on its math kernel: with ``warn_only`` PyTorch keeps the
    memory-efficient kernel, whose backward is not deterministic (it only warns), and attribution
    patching, EAP-IG and the g-SAE's gradients go through it.  Together with
    :data:`CUBLAS_WORKSPACE_CONFIG` a cell repeats bit for bit on the same GPU and software.  On the CPU
    nothing is changed (its kernels are deterministic for a fixed thread count).
    """
    if torch.device(device).type != "cuda":
        yield
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_CONFIG)
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    sdp = torch.backends.cuda
    old = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
           matmul.allow_tf32, cudnn.allow_tf32, cudnn.deterministic, cudnn.benchmark)
    old_sdp = (sdp.flash_sdp_enabled(), sdp.mem_efficient_sdp_enabled(), sdp.cudnn_sdp_enabled())
    torch.use_deterministic_algorithms(True, warn_only=True)
    matmul.allow_tf32 = cudnn.allow_tf32 = False
    cudnn.deterministic, cudnn.benchmark = True, False
    _set_fused_sdp(False, False, False)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old[0], warn_only=old[1])
        matmul.allow_tf32, cudnn.allow_tf32, cudnn.deterministic, cudnn.benchmark = old[2:]
        _set_fused_sdp(*old_sdp)


@contextmanager
def torch_threads(n: int | None):
    """Run the block with torch's CPU ops on ``n`` intra-op threads (None: unchanged), then restore.

    Fixed thread counts make training and probing results independent of the machine's core count,
    and small models do not oversubscribe a busy machine (measured: up to 15-35x slower on 2 threads).
    """
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n is not None:
            torch.set_num_threads(old)
