"""The learning-rate schedule of every embedded model: linear warm-up, then cosine decay to a floor.

One function, :func:`warmup_cosine`, for the planted-circuit models, the in-context
learners and the docstring LM.  The committed weights were trained with it, so its
arithmetic is fixed: changing the order of a single float operation changes the
learning rate by an ulp and the weights with it (``tests/test_embedded.py`` checks
every step of every committed recipe against the formulas they were built with).
"""

from __future__ import annotations

import math


def warmup_cosine(
    step: int, *, steps: int, lr: float, warmup: int, min_lr: float = 0.0,
    min_lr_frac: float | None = None, decay_from_start: bool = False,
) -> float:
    """Learning rate (same unit as ``lr``) at 0-based ``step`` of ``steps``.

    Default shape: ``lr * (step + 1) / warmup`` for the first ``warmup`` steps,
    then cosine decay from ``lr`` to the floor over the remaining ``steps - warmup``
    steps.  The floor is ``min_lr`` (absolute), or ``min_lr_frac * lr`` when
    ``min_lr_frac`` is given (the two are written as the recipes store them:
    ``min_lr + (lr - min_lr) c`` and ``lr (f + (1 - f) c)``, ``c`` the cosine factor
    in [0, 1]).

    ``decay_from_start``: the cosine runs over all ``steps`` from step 0 and the
    warm-up is a factor ``min(1, (step + 1) / warmup)`` on it (the docstring LM).
    """
    if decay_from_start:
        peak = lr * min(1.0, (step + 1) / warmup)
        angle = math.pi * step / steps
    elif step < warmup:
        return lr * (step + 1) / warmup
    else:
        peak = lr
        angle = math.pi * ((step - warmup) / max(1, steps - warmup))
    c = 0.5 * (1 + math.cos(angle))
    if min_lr_frac is not None:
        return peak * (min_lr_frac + (1 - min_lr_frac) * c)
    return min_lr + (peak - min_lr) * c
