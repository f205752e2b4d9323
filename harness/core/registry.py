"""Registry of tasks and methods.

Tasks and methods register with a decorator::

    @register_task("clustering/digits", version="1", description="...")
    class DigitsClustering(ClusteringTask): ...          # family from ClusteringTask

    add_task("reconstruction/embedded-z", EmbeddedLMTask, version="1", description="...", hook="z")

    @register_method("kmeans-raw", version="1", description="...", baseline=True)
    class KMeansRaw(ClusteringMethod): ...               # family from the protocol class

Built-in tasks live in the ``tasks`` package, built-in methods in ``methods``
and ``baselines``; :func:`load_builtin` imports them.  External packages add
methods (or tasks) through the entry-point groups ``harness.methods`` and
``harness.tasks``: each entry point names a module (importing it registers
its contents) or a registered class.  Plugins load only from entry points or
from import paths a user names explicitly (:func:`load_plugin_module`).
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Callable, Mapping, TypeVar

from harness.errors import DuplicateNameError, HarnessError, UnknownNameError, did_you_mean

T = TypeVar("T", bound=type)

ENTRY_POINT_GROUPS = ("harness.tasks", "harness.methods")
BUILTIN_PACKAGES = ("harness.tasks", "harness.methods", "harness.baselines")


@dataclass(frozen=True)
class Entry:
    """One registered task or method: its class, metadata and, for a task variant, the attributes it sets.

    ``variant`` holds the class attributes a registration overrides (e.g. ``{"hook": "resid"}`` or a
    ``config`` of default values): several registrations can share one class, each declared as data.
    :meth:`create` returns a ready instance.
    """

    name: str
    family: str
    version: str
    description: str
    cls: type
    baseline: bool = False
    source: str = "builtin"
    variant: Mapping[str, Any] = field(default_factory=dict)

    @property
    def in_default_suite(self) -> bool:
        return bool(self.variant.get("in_default_suite", getattr(self.cls, "in_default_suite", True)))

    def create(self, params: Mapping[str, Any] | None = None) -> Any:
        """A task instance (with the variant's attributes set) or a method instance (with ``params``)."""
        if hasattr(self.cls, "create"):  # a method: scikit-learn style parameters
            return self.cls.create(dict(params or {}))
        obj = self.cls()
        obj.name, obj.version, obj.description = self.name, self.version, self.description
        for key, value in self.variant.items():
            setattr(obj, key, value)
        return obj


_TASKS: dict[str, Entry] = {}
_METHODS: dict[str, Entry] = {}
_loaded_builtin = False
_loaded_plugins = False


#: one name segment: a letter or digit, then letters, digits and ``. _ + -`` (a name is also a directory name)
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")


def _check_name(name: str, kind: str) -> None:
    """A name is safe as a directory of the results: ASCII letters, digits and ``. _ + -``, starting with a letter
    or digit, no ``..``; a task may have one ``/`` after its family (``circuits/ioi``)."""
    segments = name.split("/") if isinstance(name, str) else [None]
    ok = (isinstance(name, str) and len(segments) <= (2 if kind == "task" else 1) and ".." not in name
          and all(s is not None and _SEGMENT.fullmatch(s) for s in segments))
    if not ok:
        slash = " and one '/' after the family (family/name)" if kind == "task" else ""
        raise HarnessError(
            f"invalid {kind} name {name!r}: use ASCII letters, digits and . _ + - (starting with a letter or digit, "
            f"no '..', no spaces or path separators){slash}; the name becomes a directory of the results"
        )


def _register(table: dict[str, Entry], kind: str, entry: Entry) -> None:
    _check_name(entry.name, kind)
    existing = table.get(entry.name)
    if existing is not None:
        if existing.cls is entry.cls and existing.variant == entry.variant:  # imported twice: harmless
            return
        raise DuplicateNameError(
            f"{kind} name {entry.name!r} is registered twice: by "
            f"{existing.cls.__module__}.{existing.cls.__qualname__} and by "
            f"{entry.cls.__module__}.{entry.cls.__qualname__}; rename one of them"
        )
    table[entry.name] = entry


def _family(cls: type, family: str | None, name: str) -> str:
    """The family is set in one place: the protocol / task base class, or (for a bare class) the decorator."""
    declared = getattr(cls, "family", "") or ""
    if family and declared and family != declared:
        raise HarnessError(
            f"{name!r}: family {family!r} given at registration, but its class declares family {declared!r}; "
            "drop the family argument (the protocol base class sets it)"
        )
    if not (family or declared):
        raise HarnessError(f"{name!r}: no family; derive from a family's base class or pass family=...")
    return family or declared


def _source(cls: type) -> str:
    return "builtin" if cls.__module__.startswith(tuple(p + "." for p in BUILTIN_PACKAGES)) else cls.__module__


def add_task(name: str, cls: type, *, version: str, description: str, family: str | None = None,
             **variant: Any) -> Entry:
    """Register the task ``name``: class ``cls`` with the class attributes in ``variant`` overridden.

    One call per variant, e.g. ``add_task("reconstruction/embedded-z", EmbeddedLMTask, version="1",
    description="...", hook="z")``; ``config={...}`` overrides default config values.  Unknown attribute
    names are an error (a typo would otherwise be silently ignored).
    """
    _check_name(name, "task")
    if isinstance(getattr(cls, "default_config", None), Mapping):
        raise HarnessError(f"task {name!r}: {cls.__qualname__}.default_config is a dict; declare the settings as a "
                           "frozen dataclass in `Config = MyConfig` (and variant values in `defaults={...}`)")
    for key in variant:
        if not hasattr(cls, key):
            raise HarnessError(f"task {name!r}: {cls.__qualname__} has no attribute {key!r} to set")
    entry = Entry(name, _family(cls, family, name), str(version), description, cls, source=_source(cls),
                  variant=dict(variant))
    _register(_TASKS, "task", entry)
    return entry


def register_task(name: str, *, version: str, description: str, family: str | None = None,
                  **variant: Any) -> Callable[[T], T]:
    """Class decorator: :func:`add_task` for a class that is its own (only) variant."""

    def deco(cls: T) -> T:
        add_task(name, cls, version=version, description=description, family=family, **variant)
        return cls

    return deco


def register_method(
    name: str, *, version: str, description: str, baseline: bool = False, family: str | None = None
) -> Callable[[T], T]:
    """Class decorator registering a :class:`harness.core.method.Method` subclass under ``name``.

    The family comes from the protocol base class (``ClusteringMethod`` & co.); ``family=`` is only for a
    class that derives from :class:`Method` directly.
    """

    def deco(cls: T) -> T:
        _check_name(name, "method")
        fam = _family(cls, family, name)
        cls.name, cls.family, cls.version = name, fam, str(version)
        cls.description, cls.baseline = description, bool(baseline)
        _register(_METHODS, "method", Entry(name, fam, str(version), description, cls, bool(baseline), _source(cls)))
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
