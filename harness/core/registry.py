"""Registry of tasks and methods.

Tasks and methods register with a decorator::

    @register_task("clustering/digits", family="clustering", version="1",
                   description="...")
    class DigitsClustering(ClusteringTask): ...

    @register_method("kmeans-raw", family="clustering", version="1",
                     description="...", baseline=True)
    class KMeansRaw(Method): ...

Built-in tasks live in the ``tasks`` package, built-in methods in ``methods``
and ``baselines``; :func:`load_builtin` imports them.  External packages add
methods (or tasks) through the entry-point groups ``harness.methods`` and
``harness.tasks``: each entry point names a module (importing it registers
its contents) or a registered class.  Plugins load only from entry points or
from import paths a user names explicitly (:func:`load_plugin_module`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Callable, TypeVar

from harness.errors import DuplicateNameError, HarnessError, UnknownNameError, did_you_mean

T = TypeVar("T", bound=type)

ENTRY_POINT_GROUPS = ("harness.tasks", "harness.methods")
BUILTIN_PACKAGES = ("harness.tasks", "harness.methods", "harness.baselines")


@dataclass(frozen=True)
class Entry:
    """One registered task or method class with its metadata."""

    name: str
    family: str
    version: str
    description: str
    cls: type
    baseline: bool = False
    source: str = "builtin"


_TASKS: dict[str, Entry] = {}
_METHODS: dict[str, Entry] = {}
_loaded_builtin = False
_loaded_plugins = False


def _check_name(name: str, kind: str) -> None:
    if not isinstance(name, str) or not name or name != name.strip() or " " in name:
        raise HarnessError(f"invalid {kind} name {name!r}: use a non-empty name without spaces")


def _register(table: dict[str, Entry], kind: str, entry: Entry) -> None:
    _check_name(entry.name, kind)
    existing = table.get(entry.name)
    if existing is not None:
        if existing.cls is entry.cls:  # the same class imported twice: harmless
            return
        raise DuplicateNameError(
            f"{kind} name {entry.name!r} is registered twice: by "
            f"{existing.cls.__module__}.{existing.cls.__qualname__} and by "
            f"{entry.cls.__module__}.{entry.cls.__qualname__}; rename one of them"
        )
    table[entry.name] = entry


def register_task(name: str, *, family: str, version: str, description: str) -> Callable[[T], T]:
    """Class decorator registering a :class:`harness.core.task.Task` subclass under ``name``."""

    def deco(cls: T) -> T:
        cls.name, cls.family, cls.version, cls.description = name, family, str(version), description
        _register(_TASKS, "task", Entry(name, family, str(version), description, cls))
        return cls

    return deco


def register_method(
    name: str, *, family: str, version: str, description: str, baseline: bool = False
) -> Callable[[T], T]:
    """Class decorator registering a :class:`harness.core.method.Method` subclass under ``name``."""

    def deco(cls: T) -> T:
        cls.name, cls.family, cls.version = name, family, str(version)
        cls.description, cls.baseline = description, bool(baseline)
        source = "builtin" if cls.__module__.startswith(tuple(p + "." for p in BUILTIN_PACKAGES)) else cls.__module__
        _register(
            _METHODS, "method", Entry(name, family, str(version), description, cls, bool(baseline), source)
        )
        return cls

    return deco


def unregister(name: str) -> None:
    """Remove a task or method (used by tests that register temporary fixtures)."""
    _TASKS.pop(name, None)
    _METHODS.pop(name, None)


def load_builtin() -> None:
    """Import the built-in task, method and baseline packages (registers them)."""
    global _loaded_builtin
    if _loaded_builtin:
        return
    for pkg in BUILTIN_PACKAGES:
        importlib.import_module(pkg)
    _loaded_builtin = True


def load_entry_points() -> list[str]:
    """Load every plugin advertised in the ``harness.*`` entry-point groups.

    Returns the names of the entry points loaded.  A plugin that fails to
    import raises :class:`HarnessError` naming the plugin.
    """
    global _loaded_plugins
    loaded = []
    for group in ENTRY_POINT_GROUPS:
        for ep in entry_points(group=group):
            try:
                ep.load()  # importing the module runs its register_* decorators
            except DuplicateNameError:
                raise
            except Exception as exc:  # noqa: BLE001 - reported with the plugin's name
                raise HarnessError(
                    f"plugin {ep.name!r} ({ep.value}) from entry-point group {group!r} failed to load: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            loaded.append(ep.name)
    _loaded_plugins = True
    return loaded


def load_plugin_module(path: str) -> None:
    """Import a module a user named explicitly (``--plugin my_pkg.my_methods``)."""
    try:
        importlib.import_module(path)
    except ImportError as exc:
        raise HarnessError(
            f"cannot import plugin module {path!r}: {exc}; "
            "give a dotted module path importable from the current Python environment"
        ) from exc


def load_all() -> None:
    """Built-ins plus entry-point plugins."""
    load_builtin()
    if not _loaded_plugins:
        load_entry_points()


def _lookup(table: dict[str, Entry], kind: str, name: str) -> Entry:
    if name in table:
        return table[name]
    hint = did_you_mean(name, table)
    raise UnknownNameError(
        f"unknown {kind} {name!r}{hint} (run `harness list` to see all {kind}s)"
    )


def get_task(name: str) -> Entry:
    """The registered task ``name``; :class:`UnknownNameError` with suggestions otherwise."""
    return _lookup(_TASKS, "task", name)


def get_method(name: str) -> Entry:
    """The registered method ``name``; :class:`UnknownNameError` with suggestions otherwise."""
    return _lookup(_METHODS, "method", name)


def tasks(family: str | None = None) -> list[Entry]:
    """All registered tasks (optionally of one family), sorted by name."""
    return sorted((e for e in _TASKS.values() if family is None or e.family == family), key=lambda e: e.name)


def methods(family: str | None = None) -> list[Entry]:
    """All registered methods (optionally of one family), sorted by name."""
    return sorted((e for e in _METHODS.values() if family is None or e.family == family), key=lambda e: e.name)
