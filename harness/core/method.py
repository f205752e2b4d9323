"""Base class of every method and baseline."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from types import UnionType
from typing import Any, ClassVar, Union, get_args, get_origin, get_type_hints

import torch

from harness.core.context import RunContext
from harness.errors import ConfigError


_JSON_TYPES = (int, float, str, bool, type(None), list, tuple, dict)


def _checkable(typ: Any) -> bool:
    """Annotations made of JSON types only (``int | None``, ``float | str``, ``tuple[int, ...]``): a value from
    ``--grid`` can be checked against them; a parameter of any other type (``torch.dtype``, a callable) is left
    to the method, which may convert strings itself."""
    options = get_args(typ) if get_origin(typ) in (Union, UnionType) else (typ,)
    return all((get_origin(t) or t) in _JSON_TYPES for t in options)


def _sequence_ok(value: Any, typ: Any) -> bool:
    """A JSON list where the annotation is a tuple / list / sequence type (``--grid`` values come from JSON)."""
    options = get_args(typ) if get_origin(typ) in (Union, UnionType) else (typ,)
    for t in options:
        origin = get_origin(t) or t
        if isinstance(origin, type) and issubclass(origin, Sequence) and origin is not str and isinstance(value, list):
            return True
    return False


class Method:
    """A named, versioned algorithm implementing its family's protocol.

    Hyper-parameters are keyword arguments of ``__init__`` with defaults, as in
    scikit-learn; :meth:`get_params` reads them back.  The runner calls
    :meth:`setup` before the task uses the method, which sets ``seed`` and
    ``device``.  ``name``, ``family``, ``version``, ``description`` and
    ``baseline`` are set by :func:`harness.core.registry.register_method`.
    """

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    version: ClassVar[str] = "0"
    description: ClassVar[str] = ""
    baseline: ClassVar[bool] = False
    #: False for methods that need user input to run (e.g. a path to the user's own SAE):
    #: runs without --methods skip them; naming them runs them.
    in_default_suite: ClassVar[bool] = True
    #: In the default suite only on the tasks matching these ``fnmatch`` patterns (None: on every task of its
    #: family); named with --methods it runs on any task.  Keeps the default suite's time in bounds when a
    #: method's point is made on a few tasks (the newer SAE architectures on the known-truth tasks).
    default_suite_tasks: ClassVar[tuple[str, ...] | None] = None

    #: Parameters that make the method fast for ``harness selftest`` (e.g. fewer epochs).
    selftest_params: ClassVar[dict[str, Any]] = {}

    #: Parameters that name files or directories the method reads (``user-sae``'s ``path``): their content
    #: joins the cell's identity.  None: every string parameter naming an existing file or directory.
    input_keys: ClassVar[tuple[str, ...] | None] = None

    seed: int = 0
    device: torch.device = torch.device("cpu")

    @classmethod
    def param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [
            p.name
            for p in sig.parameters.values()
            if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        sig = inspect.signature(cls.__init__)
        return {
            name: sig.parameters[name].default
            for name in cls.param_names()
            if sig.parameters[name].default is not inspect.Parameter.empty
        }

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> None:
        """Each value of ``params`` against the type annotation of its ``__init__`` argument (when it has one):
        a :class:`ConfigError` naming the parameter, so ``--grid n_init=abc`` fails before any work."""
        from harness.core.task import describe_type, accepts_type

        try:
            hints = get_type_hints(cls.__init__)
        except Exception:  # noqa: BLE001 - annotations that do not resolve: nothing to check against
            hints = {}
        for key, value in params.items():
            typ = hints.get(key)
            if typ is None or not _checkable(typ) or _sequence_ok(value, typ):
                continue
            try:
                ok = accepts_type(value, typ)
            except TypeError:  # a typing construct isinstance cannot test (Literal, Callable, ...): not checked
                ok = True
            if not ok:
                raise ConfigError(f"method {cls.name!r}: parameter {key!r} must be {describe_type(typ)}, got {value!r}; "
                                  f"e.g. --grid {key}=... with values of that type")

    @classmethod
    def create(cls, params: dict[str, Any] | None = None) -> "Method":
        """Instantiate with ``params``; unknown parameter names are a :class:`ConfigError`."""
        params = dict(params or {})
        known = cls.param_names()
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise ConfigError(
                f"method {cls.name!r} has no parameter {', '.join(map(repr, unknown))}; "
                f"its parameters are: {', '.join(known) or '(none)'}"
            )
        return cls(**params)

    @classmethod
    def input_paths(cls, params: dict[str, Any]) -> dict[str, str]:
        """``{parameter: path}`` of the files and directories these parameters make the method read."""
        from harness.core.inputs import named_paths

        return named_paths(params, cls.input_keys)

    def get_params(self) -> dict[str, Any]:
        """Current hyper-parameters (attributes named like the ``__init__`` arguments)."""
        return {name: getattr(self, name) for name in self.param_names() if hasattr(self, name)}

    def setup(self, ctx: RunContext) -> None:
        """Called by the runner before use: sets ``seed`` and ``device``."""
        self.seed = ctx.seed
        self.device = ctx.device
