"""The external inputs of a cell, by content: what a cell's identity adds beyond its settings.

A cell's numbers depend on more than its task config and method parameters when those name something
outside the harness: a model directory (``--model DIR``), a ground-truth file, a user's SAE directory, a
data file, or the source of a plugin module that defines the task or method. Each is hashed by its
*content* (SHA-256; a directory: every file under it, by relative path, hidden files and ``__pycache__``
left out), so that a file edited in place is a new experiment while the same settings and the same bytes
are the same one. A cell without such inputs has none, and its identity is exactly what it was before
inputs were counted (:func:`harness.core.cell.make_cell` adds them only when present).

Which settings name inputs: a task's or method's ``input_keys`` (a tuple of config keys / parameter
names); ``None`` (the default, as for plugins) means every string setting that names an existing file
or directory.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import sys
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

#: (path, stat signature) -> sha256 hex: a run hashes each input once, and again only when it changed
_MEMO: dict[tuple, str] = {}
_CHUNK = 1 << 20
#: files at least this large keep their hash in the cache directory too, so that worker processes and later
#: runs do not read gigabytes of weights again; the entry is keyed by the file's stat signature, ctime
#: included, which every write changes and no user call can set back
DISK_MEMO_BYTES = 16 << 20


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _disk_memo(path: Path, signature: tuple) -> Path:
    from harness.core.cache import default_cache_dir

    name = hashlib.sha256(repr((str(path), signature)).encode()).hexdigest()[:32]
    return default_cache_dir() / "input-hashes" / f"{name}.sha256"


def _large_file_sha256(path: Path, signature: tuple) -> str:
    """:func:`_file_sha256` through the on-disk memo (a memo that cannot be read or written is skipped)."""
    from harness.core.io import atomic_write_text

    memo = _disk_memo(path, signature)
    try:
        text = memo.read_text().strip()
        if len(text) == 64 and all(c in "0123456789abcdef" for c in text):
            return text
    except OSError:
        pass
    digest = _file_sha256(path)
    try:
        atomic_write_text(memo, digest + "\n")
    except OSError:
        pass
    return digest


def _files(root: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
        out.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith("."))
    return out


def _signature(path: Path) -> tuple:
    st = path.stat()
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def content_hash(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes, or of a directory's files (relative path and content of each)."""
    path = Path(path).expanduser().resolve()
    if path.is_dir():
        files = _files(path)
        key = (str(path), tuple((str(f.relative_to(path)), _signature(f)) for f in files))
        if key not in _MEMO:
            h = hashlib.sha256(b"dir\n")
            for f in files:
                h.update(f"{f.relative_to(path).as_posix()}\0{content_hash(f)}\n".encode())
            _MEMO[key] = h.hexdigest()
        return _MEMO[key]
    signature = _signature(path)
    key = (str(path), signature)
    if key not in _MEMO:
        _MEMO[key] = _large_file_sha256(path, signature) if signature[0] >= DISK_MEMO_BYTES else _file_sha256(path)
    return _MEMO[key]


def named_paths(values: Mapping[str, Any], keys: Iterable[str] | None) -> dict[str, str]:
    """The settings among ``values`` that name inputs: ``keys`` (those set to an existing path), or with
    ``keys=None`` every string value naming an existing file or directory."""
    out = {}
    for key in sorted(values if keys is None else keys):
        value = values.get(key)
        if isinstance(value, (str, os.PathLike)) and str(value) and Path(value).expanduser().exists():
            out[key] = str(value)
    return out


def settings_of(obj: Any) -> dict[str, Any]:
    """A task config (dataclass) as a mapping of its fields; a mapping as it is."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name) for f in fields(obj)}
    return dict(obj)


def _module_files(module_name: str) -> list[Path]:
    """The source files of a plugin module: its file, or its top-level package's ``.py`` files."""
    module = sys.modules.get(module_name)
    path = getattr(module, "__file__", None)
    if not path:
        return []
    top = sys.modules.get(module_name.split(".")[0])
    top_file = getattr(top, "__file__", None)
    if "." in module_name and top_file and Path(top_file).name == "__init__.py":
        root = Path(top_file).parent
        return [f for f in _files(root) if f.suffix == ".py"]
    return [Path(path)]


def plugin_sources(objects: Iterable[Any]) -> dict[str, str]:
    """``{"plugin:<module>": sha256}`` of the modules outside the harness package that define ``objects``
    (classes, loader functions): a plugin's edited source is a new experiment."""
    out = {}
    for obj in objects:
        module = getattr(obj, "__module__", None) if (inspect.isclass(obj) or callable(obj)) else None
        if not module or module == "harness" or module.startswith("harness.") or module in ("builtins", "__main__"):
            continue
        files = _module_files(module)
        if not files:
            continue
        h = hashlib.sha256(b"plugin\n")
        for f in files:
            h.update(f"{f.name}\0{content_hash(f)}\n".encode())
        out[f"plugin:{module}"] = h.hexdigest()
    return out


def describe(paths: Mapping[str, str], sources: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """``{key: {"path": ..., "sha256": ...}}`` of input paths and plugin sources (a record's provenance)."""
    out = {key: {"path": str(Path(p).expanduser().resolve()), "sha256": content_hash(p)} for key, p in paths.items()}
    out.update({key: {"sha256": digest} for key, digest in sources.items()})
    return out


def short(described: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """``{key: first 16 hex digits}``: what a cell's config (and so its key) holds of its inputs."""
    return {key: d["sha256"][:16] for key, d in sorted(described.items())}
