"""Where the harness caches what it builds (trained models, gathered activations), and the lock that
makes one process build each entry while the others wait for it."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Iterator


def default_cache_dir() -> Path:
    """``$HARNESS_CACHE`` if set, else ``$XDG_CACHE_HOME/interp-harness`` (``~/.cache/interp-harness``)."""
    env = os.environ.get("HARNESS_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "interp-harness"


@contextlib.contextmanager
def cache_lock(entry: str | Path, what: str = "cache entry") -> Iterator[None]:
    """Hold the exclusive lock of cache ``entry`` (the file ``<entry>.lock`` beside it) for the body.

    Whoever builds or reads a cache entry that may be missing does it under this lock and checks again
    inside it: two worker processes or two ``harness run`` processes then never build the same entry at
    the same time, and none reads one half-written (entries are also written atomically). A process that
    has to wait says so on stderr. The lock is released when the process dies, so a crash never blocks.
    """
    from filelock import FileLock, Timeout

    lock_file = Path(str(entry) + ".lock")
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_file))
    try:
        lock.acquire(timeout=0.5)
    except Timeout:
        print(f"waiting for another process building {what} {Path(entry).name} ...", file=sys.stderr, flush=True)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
