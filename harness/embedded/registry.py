"""The one registry of embedded models: the models the harness trains itself.

Every embedded model (the planted-circuit GPTs, the in-context learners, the
docstring LM) is an :class:`EmbeddedModel` registered here under its name, with
one contract:

- ``build(directory)``: train deterministically, verify, and write the model
  (weights + card, :mod:`harness.core.card`) into ``directory``; a model that
  fails its verification raises :class:`HarnessError` and is not written;
- ``is_current(directory)``: the directory holds this model built with the
  current recipe (otherwise it is rebuilt rather than used);
- ``verify(directory)``: the acceptance check of a saved model, run when loading;
- ``reproduce()``: rebuild into a temporary directory and compare weights and
  card with the committed model (``harness models check``);
- ``locate(models_dir)``: where a task loads it from: the committed
  ``harness/embedded/weights/<name>/``, else ``<models_dir>/<name>/``, else
  built there.

``harness models list|build|check`` (:func:`harness.cli.cmd_models`) calls
:func:`models`, :func:`build` and :func:`check`; the modules named in
:data:`FAMILY_MODULES` register their models when imported.
"""

from __future__ import annotations

import importlib
import shutil
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Sequence

from harness.core.cache import cache_lock
from harness.core.card import CardFormat, compare_cards, compare_weights
from harness.embedded.recipe import Log
from harness.errors import DuplicateNameError, HarnessError, UnknownNameError, did_you_mean

#: Committed models: ``weights/<name>/`` next to this file (a fresh clone needs no training).
WEIGHTS_DIR = Path(__file__).parent / "weights"

#: The modules that register embedded models (imported on the first look-up).
FAMILY_MODULES = ("harness.embedded.planted", "harness.embedded.icl_learner", "harness.embedded.docstring_lm")

class EmbeddedModel(ABC):
    """One named model the harness trains itself (see the module docstring for the contract).

    ``family``: the task family that uses it; ``card_format``: its on-disk form;
    ``atol``: the largest weight (and card number) difference :meth:`reproduce` accepts.
    """

    card_format: CardFormat
    atol: float = 0.0

    def __init__(self, name: str, family: str, description: str):
        self.name, self.family, self.description = name, family, description

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    @property
    def committed_dir(self) -> Path:
        """``harness/embedded/weights/<name>``: where the committed model is."""
        return WEIGHTS_DIR / self.name

    # ---------------------------------------------------------------- per family
    @abstractmethod
    def build(self, directory: Path, log: Log = print) -> Path:
        """Train, verify and write the model into ``directory``; returns ``directory``."""

    def is_current(self, directory: Path) -> bool:
        """Whether ``directory`` holds this model as its current recipe builds it (default: a readable card)."""
        return self.card_format.card(directory) is not None

    def verify(self, directory: Path) -> None:
        """Refuse (``HarnessError``) a saved model that fails its acceptance checks (default: none beyond the card)."""
        if not self.is_current(directory):
            raise HarnessError(f"{directory} does not hold the embedded model {self.name!r} of this version")

    # ---------------------------------------------------------------- shared
    def locate(self, models_dir: str | Path | None, log: Log = None) -> Path:
        """The committed directory, else ``models_dir/<name>``, else built into ``models_dir/<name>`` (minutes)."""
        candidates = [self.committed_dir] + ([Path(models_dir) / self.name] if models_dir is not None else [])
        for directory in candidates:
            if self.is_current(directory):
                return directory
        if models_dir is None:
            raise HarnessError(f"embedded model {self.name!r} is not built; run `harness models build --name {self.name}`")
        target = Path(models_dir) / self.name
        with cache_lock(target, f"embedded model {self.name!r}"):
            if self.is_current(target):  # built by another process while this one waited
                return target
            tmp = target.with_name(target.name + ".building")
            shutil.rmtree(tmp, ignore_errors=True)
            self.build(tmp, log)
            shutil.rmtree(target, ignore_errors=True)
            tmp.replace(target)
        return target

    def reproduce(self, log: Log = print) -> bool:
        """Rebuild in a temporary directory and compare with the committed model; True when it reproduces."""
        if not self.is_current(self.committed_dir):
            if log:
                log(f"[{self.name}] no committed model matching the current recipe in {self.committed_dir}")
            return False
        with tempfile.TemporaryDirectory(prefix=f"{self.name}-rebuild-") as tmp:
            rebuilt = self.build(Path(tmp) / self.name, log)
            return self.compare(self.committed_dir, rebuilt, log)

    def compare(self, reference: Path, other: Path, log: Log = print) -> bool:
        """Every safetensors file and the card of ``other`` against ``reference`` (timings ignored)."""
        files = sorted(p.name for p in reference.glob("*.safetensors"))
        diffs = {f: (compare_weights(reference / f, other / f) if (other / f).is_file() else float("inf"))
                 for f in files}
        card_diffs = compare_cards(self.card_format.card(reference), self.card_format.card(other), self.atol)
        worst = max(diffs.values(), default=float("inf"))
        ok = worst <= self.atol and not card_diffs
        if log:
            state = ("bitwise identical" if worst == 0.0 else f"identical within {self.atol:g}") if ok else "DIFFERENT"
            per_file = ", ".join(f"{f} {d:.3g}" for f, d in diffs.items())
            log(f"{self.name}: {state} (max weight diff: {per_file}; {len(card_diffs)} card differences)")
            for d in card_diffs[:10]:
                log(f"  card: {d}")
        return ok


_MODELS: dict[str, EmbeddedModel] = {}
_PENDING: dict[str, EmbeddedModel] = {}


def register(model: EmbeddedModel, pending: bool = False) -> EmbeddedModel:
    """Add ``model`` to the registry (a second model of the same name is an error).

    ``pending``: a model whose weights must be trained elsewhere (a GPU learner) and are not committed yet:
    :func:`get` finds it (so ``harness models build --name`` can train it), but :func:`models` lists it
    only once its committed directory holds it, so listing and checking cover what a clone really has.
    """
    if (model.name in _MODELS and _MODELS[model.name] is not model) or \
            (model.name in _PENDING and _PENDING[model.name] is not model):
        raise DuplicateNameError(f"embedded model {model.name!r} is registered twice")
    (_PENDING if pending else _MODELS)[model.name] = model
    return model


def _load() -> None:
    for module in FAMILY_MODULES:
        importlib.import_module(module)


def models() -> list[EmbeddedModel]:
    """Every registered embedded model (pending ones once committed), by family, then in registration order."""
    _load()
    committed = [m for m in _PENDING.values() if m.is_current(m.committed_dir)]
    return sorted([*_MODELS.values(), *committed], key=lambda m: m.family)


def get(name: str) -> EmbeddedModel:
    """The embedded model ``name``, pending ones included (``UnknownNameError`` with the closest names otherwise)."""
    _load()
    found = _MODELS.get(name) or _PENDING.get(name)
    if found is None:
        known = [*_MODELS, *_PENDING]
        raise UnknownNameError(f"unknown embedded model {name!r}{did_you_mean(name, known)} (known: {', '.join(known)})")
    return found


def _selected(names: Sequence[str] | None) -> list[EmbeddedModel]:
    return [get(n) for n in names] if names else models()


def build(names: Sequence[str] | None = None, out: str | Path | None = None, force: bool = False,
          log: Log = print) -> list[Path]:
    """Build the named models (default: all) into ``out/<name>/`` (default: the committed directory).

    A model already there and current is kept unless ``force``.  Returns the model directories.
    """
    paths = []
    for model in _selected(names):
        target = Path(out) / model.name if out is not None else model.committed_dir
        if model.is_current(target) and not force:
            if log:
                log(f"[{model.name}] up to date in {target}; pass --force to rebuild")
        else:
            model.build(target, log)
        paths.append(target)
    return paths


def check(names: Sequence[str] | None = None, log: Log = print) -> bool:
    """Rebuild the named models (default: all) and compare with the committed ones; True when all reproduce."""
    ok = True
    for model in _selected(names):
        ok = model.reproduce(log) and ok
    return ok
