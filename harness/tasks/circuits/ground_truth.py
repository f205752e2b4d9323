"""Ground-truth circuits: GPT-2 small's published heads, and reading a user's JSON file.

GPT-2 small heads (``(layer, head)``) as DESIGN.md gives them, from the ACDC
repository; the groups follow Wang et al. (IOI) and Hanna et al.
(greater-than).  Only heads are scored; the MLPs of the greater-than circuit
are kept for reference.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import numpy as np

from harness.errors import HarnessError

Head = tuple[int, int]

GPT2_IOI_GROUPS: dict[str, tuple[Head, ...]] = {
    "name mover": ((9, 9), (10, 0), (9, 6)),
    "backup name mover": ((10, 10), (10, 6), (10, 2), (10, 1), (11, 2), (9, 7), (9, 0), (11, 9)),
    "negative name mover": ((10, 7), (11, 10)),
    "s-inhibition": ((7, 3), (7, 9), (8, 6), (8, 10)),
    "induction": ((5, 5), (5, 8), (5, 9), (6, 9)),
    "duplicate token": ((0, 1), (0, 10), (3, 0)),
    "previous token": ((2, 2), (4, 11)),
}
#: The 26 IOI heads of GPT-2 small.
GPT2_IOI_HEADS: tuple[Head, ...] = tuple(h for group in GPT2_IOI_GROUPS.values() for h in group)

#: The 9 greater-than heads of GPT-2 small.
GPT2_GREATER_THAN_HEADS: tuple[Head, ...] = ((0, 1), (0, 3), (0, 5), (5, 5), (6, 1), (6, 9), (7, 10), (8, 11), (9, 1))
#: MLP layers of the greater-than circuit (not scored: the protocol scores heads).
GPT2_GREATER_THAN_MLPS: tuple[int, ...] = (0, 1, 2, 3, 8, 9, 10, 11)

GPT2_SMALL_SHAPE = (12, 12)
GPT2_HEADS = {"ioi": GPT2_IOI_HEADS, "greater_than": GPT2_GREATER_THAN_HEADS}


def heads_to_mask(heads: Iterable[Head], shape: tuple[int, int], where: str = "ground truth") -> np.ndarray:
    """A bool mask ``[n_layers, n_heads]`` with the given heads set; out-of-range heads are an error."""
    n_layers, n_heads = shape
    mask = np.zeros(shape, dtype=bool)
    for item in heads:
        try:
            layer, head = (int(x) for x in item)
        except (TypeError, ValueError):
            raise HarnessError(f"{where}: each head must be a [layer, head] pair of integers, got {item!r}") from None
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise HarnessError(
                f"{where}: head [{layer}, {head}] is outside the model ({n_layers} layers x {n_heads} heads)"
            )
        mask[layer, head] = True
    return mask


def load_ground_truth_file(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """Read a JSON list of ``[layer, head]`` pairs into a mask of ``shape``."""
    path = Path(path).expanduser()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise HarnessError(f"ground-truth file {path} does not exist") from None
    except (OSError, ValueError) as e:
        raise HarnessError(f"cannot read ground-truth file {path}: {e}") from None
    if isinstance(data, dict) and "heads" in data:
        data = data["heads"]
    if not isinstance(data, list) or not data:
        raise HarnessError(f"ground-truth file {path} must hold a non-empty JSON list of [layer, head] pairs")
    mask = heads_to_mask(data, shape, where=f"ground-truth file {path}")
    if mask.all():
        raise HarnessError(f"ground-truth file {path} lists every head; a circuit must leave some heads out")
    return mask
