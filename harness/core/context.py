"""What the runner hands to tasks and methods besides their data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class RunContext:
    """Per-cell context: the seed, the torch device, the cache directory, and how the cell is executed
    (``threads``: its thread budget, 0 = left as the process has it; ``executor``: ``"serial"``,
    ``"local:N"`` for N worker processes, ``"ray"``), which the record's provenance states."""

    seed: int
    device: torch.device
    cache_dir: Path
    show_progress: bool = False
    threads: int = 0
    executor: str = "serial"
    allow_pickle_weights: bool = False  # a user's model may be read from pickle weights (weights_only); else safetensors
