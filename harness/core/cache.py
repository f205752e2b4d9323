"""Where the harness caches what it builds (trained models, gathered activations)."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$HARNESS_CACHE`` if set, else ``$XDG_CACHE_HOME/interp-harness`` (``~/.cache/interp-harness``)."""
    env = os.environ.get("HARNESS_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "interp-harness"
