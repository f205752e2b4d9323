"""Functions the ``harness models`` command line calls (wired in :mod:`harness.cli`).

``harness models build [--name NAME ...] [--out DIR] [--force]`` ->
:func:`models_build`; ``harness models check`` -> :func:`models_check`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from harness.tasks.circuits import planted


def model_names() -> list[str]:
    """Names of the embedded planted-circuit models."""
    return list(planted.PLANTED)


def models_build(
    names: Sequence[str] | None = None,
    out: str | Path | None = None,
    force: bool = False,
    log: Callable[[str], None] | None = print,
) -> list[Path]:
    """Build (train + verify) planted models into ``out/<name>/`` (default: the committed directory).

    Existing models are kept unless ``force``; a model that fails verification
    raises :class:`harness.errors.HarnessError` and is not written.
    """
    return planted.build_models(out, list(names) if names else None, force=force, log=log)


def models_check(names: Sequence[str] | None = None, log: Callable[[str], None] | None = print) -> bool:
    """Rebuild in a temporary directory and compare with the committed models; True when all reproduce."""
    report = planted.check_reproduction(list(names) if names else None, log=log)
    ok = True
    for name, r in report.items():
        ok &= r["identical"]
        if log:
            state = "bitwise identical" if r["bitwise"] else ("identical within 1e-5" if r["identical"] else "DIFFERENT")
            log(f"{name}: {state} (max weight diff {r['max_weight_diff']:.3g})")
            for d in r["card_diffs"][:10]:
                log(f"  card: {d}")
    return ok
