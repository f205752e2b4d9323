"""Atomic file writes: a crash never leaves a half-written file."""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` via a temporary file in the same directory and a rename.

    The file gets the permissions a plain ``open(path, "w")`` would give (``0o666`` less the
    umask), not the ``0o600`` of the temporary file, so pages and records can be shared or served.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def temp_path_beside(path: Path, suffix: str = "") -> Path:
    """A fresh hidden file name in ``path``'s directory for writing ``path`` atomically (write, then
    ``replace``): unique per process and call, so concurrent writers of one file never share it."""
    path = Path(path)
    return path.with_name(f".tmp-{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{suffix or path.suffix}")
