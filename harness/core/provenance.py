"""Provenance of a result: code version, package versions, machine and time."""

from __future__ import annotations

import datetime as _dt
import functools
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import harness

PACKAGES = ("numpy", "torch", "scipy", "scikit-learn", "pandas", "transformers", "safetensors")
SOURCE_ROOT = Path(harness.__file__).resolve().parent.parent


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(SOURCE_ROOT), *args], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


@functools.lru_cache(maxsize=1)
def git_state() -> dict[str, Any]:
    """Commit of the harness source tree and whether it has uncommitted changes.

    ``commit`` is None when the harness is not run from a git checkout
    (e.g. installed from a wheel).
    """
    commit = _git("rev-parse", "HEAD")
    if not commit:
        return {"commit": None, "dirty": None}
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status)}


@functools.lru_cache(maxsize=1)
def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version(), "harness": harness.__version__}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def machine() -> dict[str, Any]:
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "hostname": platform.node(),
    }


def device_name(device: Any) -> str:
    """The accelerator's name (``torch.cuda.get_device_name``) for a CUDA device, else the CPU's."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        try:
            return torch.cuda.get_device_name(device)
        except (RuntimeError, AssertionError, ValueError):  # no driver / no such device
            return "cuda (unavailable)"
    return platform.processor() or platform.machine() or device.type


def provenance(device: Any, executor: str = "serial") -> dict[str, Any]:
    """Everything a record needs to say where its numbers came from.

    ``device`` (a ``torch.device`` or its string) is recorded as given (``"cpu"``, ``"cuda"``), with its
    type (``device_type``: what ``harness check`` compares), the device's name and the determinism settings
    in force (:func:`~harness.core.seeding.determinism_settings`); ``execution`` says how the cell ran
    (``executor``; ``threads``: the cell's thread budget in torch, as ``machine.torch_threads``).
    """
    import torch

    from harness.core.seeding import determinism_settings

    dev = torch.device(device)
    return {
        **git_state(),
        "packages": package_versions(),
        "machine": machine(),
        "device": str(device),
        "device_type": dev.type,
        "device_name": device_name(dev),
        "determinism": determinism_settings(),
        "execution": {"executor": executor, "threads": torch.get_num_threads()},
        "argv": sys.argv[1:],
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "deterministic": "same seed, same machine, same packages, same thread budget -> same metrics",
    }
