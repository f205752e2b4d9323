"""One on-disk form for every model the harness saves: safetensors weights + a JSON description.

A model directory holds ``model.safetensors`` (the state dict; never pickle) and
one JSON file (``gpt.json`` for :mod:`harness.models.gpt`, ``icl.json`` for the
in-context learner) with the ``format`` name and ``format_version``, what is
needed to rebuild the module (config, tokenizer, architecture) and a free-form
``card``: the recipe, the training summary and the verification numbers.
:class:`CardFormat` writes and reads such directories; :func:`compare_cards` and
:func:`compare_weights` are what ``harness models check`` compares.

This module imports nothing of the harness above :mod:`harness.core`, so the
model adapters (:mod:`harness.models.gpt`) use it too.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from harness.core.io import atomic_write_text, temp_path_beside
from harness.errors import HarnessError

WEIGHTS = "model.safetensors"

#: Card keys that hold timings or environment versions: ``compare_cards`` ignores them.
VOLATILE_CARD_KEYS = frozenset({
    "seconds", "cpu_seconds", "build_seconds", "train_seconds", "training_seconds", "training_cpu_seconds",
    "torch_version", "torch", "python",
})


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; :class:`HarnessError` when unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise HarnessError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise HarnessError(f"{path} is not a JSON object")
    return data


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, on CPU, in their saved dtypes; :class:`HarnessError` when unreadable."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (OSError, SafetensorError) as e:
        raise HarnessError(f"cannot read weights {path}: {e}") from None


def write_safetensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``tensors`` (moved to CPU, contiguous) to ``path`` via a temporary file and a rename."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    tmp = temp_path_beside(path)
    try:
        save_file(state, str(tmp), metadata=dict(metadata) if metadata else None)
        tmp.chmod(0o644)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


@dataclass(frozen=True)
class CardFormat:
    """A kind of model directory: its JSON file name, ``format`` name and version."""

    name: str  # the JSON's "format", e.g. "harness-gpt"
    version: int
    json_name: str  # e.g. "gpt.json"
    what: str  # for messages, e.g. "harness GPT"
    weights_name: str = WEIGHTS

    def holds(self, directory: str | Path) -> bool:
        """Whether ``directory`` has this format's JSON file (the mark of a saved model)."""
        return (Path(directory) / self.json_name).is_file()

    def write(self, directory: str | Path, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> Path:
        """Write ``tensors`` (moved to CPU, contiguous) and ``{format, format_version, **meta}`` into ``directory``.

        ``meta`` must be JSON-serialisable (``ValueError`` otherwise, before anything
        is written); each file is written to a temporary name and renamed.
        """
        doc = {"format": self.name, "format_version": self.version, **meta}
        try:
            text = json.dumps(doc, indent=2, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ValueError(f"the model card must be JSON-serialisable: {e}") from None
        directory = Path(directory)
        write_safetensors(directory / self.weights_name, tensors, {"format": self.name})
        atomic_write_text(directory / self.json_name, text + "\n")
        return directory

    def read(self, directory: str | Path) -> dict[str, Any]:
        """The validated JSON description of a saved model (``HarnessError`` naming what is wrong)."""
        directory = Path(directory)
        meta_path = directory / self.json_name
        if not meta_path.is_file() or not (directory / self.weights_name).is_file():
            raise HarnessError(f"{directory} is not a saved {self.what}: expected {self.json_name} and "
                               f"{self.weights_name} in it")
        meta = read_json_object(meta_path)
        if meta.get("format") != self.name:
            raise HarnessError(f"{meta_path} is not a {self.what} description (its 'format' is not {self.name!r})")
        if meta.get("format_version") != self.version:
            raise HarnessError(f"{meta_path} has format_version {meta.get('format_version')!r}; "
                               f"this harness reads version {self.version}")
        return meta

    def card(self, directory: str | Path) -> dict[str, Any] | None:
        """The ``card`` of a saved model, or None when the directory holds no readable one (never raises)."""
        try:
            card = self.read(directory).get("card")
        except HarnessError:
            return None
        return card if isinstance(card, dict) else {}

    def weights(self, directory: str | Path) -> dict[str, torch.Tensor]:
        """The saved state dict, on CPU, in the saved dtypes."""
        return read_safetensors(Path(directory) / self.weights_name)

    def load_state(self, module: torch.nn.Module, directory: str | Path, assign: bool = False) -> None:
        """Load the saved weights into ``module`` (strict); ``HarnessError`` when they do not fit."""
        try:
            module.load_state_dict(self.weights(directory), strict=True, assign=assign)
        except RuntimeError as e:
            raise HarnessError(f"weights in {Path(directory) / self.weights_name} do not match "
                               f"{Path(directory) / self.json_name}: {e}") from None


def compare_weights(a: str | Path, b: str | Path) -> float:
    """Largest absolute difference between two safetensors files' tensors (inf when names or shapes differ)."""
    from safetensors.torch import load_file

    ta, tb = load_file(str(a)), load_file(str(b))
    if ta.keys() != tb.keys() or any(ta[k].shape != tb[k].shape for k in ta):
        return float("inf")
    return max((float((ta[k].double() - tb[k].double()).abs().max()) for k in ta if ta[k].numel()), default=0.0)


def compare_cards(a: Any, b: Any, atol: float = 1e-5, path: str = "",
                  ignore: frozenset[str] = VOLATILE_CARD_KEYS) -> list[str]:
    """Differences between two cards' contents (recursive); numbers within ``atol``; keys in ``ignore`` skipped."""
    diffs: list[str] = []
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k in ignore:
                continue
            if k not in a or k not in b:
                diffs.append(f"{path}{k}: only in one card")
            else:
                diffs += compare_cards(a[k], b[k], atol, f"{path}{k}.", ignore)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            diffs.append(f"{path[:-1]}: lengths {len(a)} != {len(b)}")
        else:
            for i, (x, y) in enumerate(zip(a, b)):
                diffs += compare_cards(x, y, atol, f"{path}{i}.", ignore)
    elif isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        if not (math.isclose(a, b, abs_tol=atol) or (math.isnan(a) and math.isnan(b))):
            diffs.append(f"{path[:-1]}: {a} != {b}")
    elif a != b:
        diffs.append(f"{path[:-1]}: {a!r} != {b!r}")
    return diffs
