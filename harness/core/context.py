"""What the runner hands to tasks and methods besides their data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class RunContext:
    """Per-cell context: the seed, the torch device, and the cache directory."""

    seed: int
    device: torch.device
    cache_dir: Path
    show_progress: bool = False
