"""Gathered activations, cached once per (model, hook, token set) under ``<cache>/activations``.

The file name is a hash of the source's :meth:`~.sources.Source.cache_key`
(model fingerprint, layer, hook, token-set hash) and :data:`FORMAT`; the file
is safetensors (``train``, ``test``, ``train_grads``, ``test_grads``) with the
key as JSON metadata, written atomically.  Loaded activations are also kept
in memory for the process (the 3 seeds of a task read them once).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from pathlib import Path

from harness.core.cache import cache_lock
from harness.tasks.reconstruction.sources import Gathered, Source

FORMAT = 1
_MEMO: "OrderedDict[str, Gathered]" = OrderedDict()
_MEMO_SIZE = 4


def cache_path(source: Source, cache_dir: Path) -> Path:
    key = json.dumps({"format": FORMAT, **source.cache_key()}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    tag = f"{source.model_id}-L{source.layer}-{source.hook}".replace("/", "_")
    return Path(cache_dir) / "activations" / f"{tag}-{digest}.safetensors"


def load_or_gather(source: Source, cache_dir: Path) -> tuple[Gathered, bool]:
    """``(activations, was_cached)``: from memory, else the cache file, else gathered and written."""
    path = cache_path(source, cache_dir)
    key = str(path)
    if key in _MEMO:
        _MEMO.move_to_end(key)
        return _MEMO[key], True
    with cache_lock(path, "activations"):  # one process gathers an entry; the others wait and load it
        data, cached = _load_or_gather_locked(source, cache_dir, path)
    _MEMO[key] = data
    while len(_MEMO) > _MEMO_SIZE:
        _MEMO.popitem(last=False)
    return data, cached


def _load_or_gather_locked(source: Source, cache_dir: Path, path: Path) -> tuple[Gathered, bool]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    data = None
    if path.is_file():
        try:
            t = load_file(str(path))
            data = Gathered(t["train"], t["test"], t.get("train_grads"), t.get("test_grads"))
        except (OSError, SafetensorError, KeyError):
            data = None  # corrupt or foreign: gather again
    cached = data is not None
    if data is None:
        if hasattr(source, "gather_all") and hasattr(source, "with_hook"):
            # one pass gathers every hook of the source: cache them all
            everything = source.gather_all()
            for hook, gathered in everything.items():
                sibling = source if hook == source.hook else source.with_hook(hook)
                _write(cache_path(sibling, cache_dir), sibling, gathered)
            data = everything[source.hook]
        else:
            data = source.gather()
            _write(path, source, data)
    return data, cached


def _write(path: Path, source: Source, data: Gathered) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"train": data.train.contiguous(), "test": data.test.contiguous()}
    if data.train_grads is not None:
        tensors["train_grads"] = data.train_grads.contiguous()
        tensors["test_grads"] = data.test_grads.contiguous()
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata={"key": json.dumps(source.cache_key(), sort_keys=True)})
    tmp.replace(path)
