"""Registry of the embedded models the harness builds itself (planted circuits, in-context learner, LMs).

Each family registers a builder: its model names, a ``build(names, out_dir, force)``
function that trains them deterministically, and a ``check(names)`` function
that rebuilds them into a temporary directory and compares with what is
committed.  ``harness models list|build|check`` reads this registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from harness.errors import DuplicateNameError, UnknownNameError, did_you_mean


@dataclass(frozen=True)
class ModelBuilder:
    family: str
    names: Callable[[], list[str]]
    build: Callable[[Sequence[str] | None, Path | None, bool], list[Path]]
    check: Callable[[Sequence[str] | None], bool]
    description: str = ""


_BUILDERS: dict[str, ModelBuilder] = {}


def register_model_builder(builder: ModelBuilder) -> ModelBuilder:
    if builder.family in _BUILDERS and _BUILDERS[builder.family] is not builder:
        raise DuplicateNameError(f"model builder for family {builder.family!r} is registered twice")
    _BUILDERS[builder.family] = builder
    return builder


def builders() -> list[ModelBuilder]:
    return [_BUILDERS[k] for k in sorted(_BUILDERS)]


def builder_for(name: str) -> ModelBuilder:
    """The builder that owns model ``name``."""
    for b in builders():
        if name in b.names():
            return b
    known = sorted(n for b in builders() for n in b.names())
    hint = did_you_mean(name, known)
    raise UnknownNameError(f"unknown embedded model {name!r}{hint} (known: {', '.join(known)})")
