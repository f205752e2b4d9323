"""Base class of every task, and the metric specification tasks declare."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from types import UnionType
from typing import Any, ClassVar, Mapping, Union, get_args, get_origin, get_type_hints

from harness.core.context import RunContext
from harness.errors import ConfigError, InvalidMetricError


def tolerance(abs_tol: float, rel_tol: float, reference: float) -> float:
    """How much worse than ``reference`` a value may be before ``harness check`` calls it a regression."""
    return max(abs_tol, rel_tol * abs(reference))


@dataclass(frozen=True)
class MetricSpec:
    """A metric a task reports.

    ``higher_is_better`` gives the direction used by leaderboards, compare and
    check.  ``abs_tol`` / ``rel_tol`` are the default regression tolerances of
    ``harness check``: a value is a regression when it is worse than the
    reference by more than ``max(abs_tol, rel_tol * |reference|)``.
    ``optional``: only some cells record it (e.g. edge-level metrics, for methods
    that score edges); a cell without it is no error, and readers show it as
    missing there.
    """

    name: str
    higher_is_better: bool
    description: str
    abs_tol: float = 0.0
    rel_tol: float = 0.0
    unit: str = ""
    gated: bool = True  # False for timings and other machine-dependent numbers
    optional: bool = False


@dataclass(frozen=True)
class NoConfig:
    """The config of a task without settings."""


class Task:
    """A named, versioned evaluation.

    A family's task class sets ``family``, ``metrics``, ``main_metric`` and ``Config`` (a frozen dataclass:
    the task's settings, with their types and default values) and implements :meth:`build`, :meth:`apply`
    and :meth:`evaluate`.  The runner calls, per cell::

        data = task.build(config, ctx)            # deterministic in (config, ctx.seed)
        output = task.apply(method, data, ctx)    # runs the family protocol, validates output
        metrics = task.evaluate(data, output)     # dict of floats

    Each registered name is one *variant* of a class (:func:`harness.core.registry.add_task`): the
    registration sets ``name``, ``version``, ``description`` and any class attribute it overrides, such as
    ``defaults`` (default values of ``Config`` fields for that variant) or ``hook``.
    """

    name: str = ""
    family: ClassVar[str] = ""
    version: str = "0"
    description: str = ""
    metrics: tuple[MetricSpec, ...] = ()
    main_metric: str = ""
    #: The task's settings: a frozen dataclass whose fields are the keys ``--set KEY=VALUE`` accepts.
    Config: ClassVar[type] = NoConfig
    #: Default values of ``Config`` fields that a variant overrides (e.g. ``{"model": "icl-d5"}``).
    defaults: Mapping[str, Any] = {}
    #: False for tasks that need something a laptop may lack (e.g. GPT-2 weights in the
    #: local cache): `harness run` without --tasks skips them; naming them runs them.
    in_default_suite: bool = True
    #: Config overrides that make the task tiny for ``harness selftest`` (seconds, not minutes).
    selftest: Mapping[str, Any] = {}
    #: Metrics shown as columns in the Markdown / HTML leaderboard besides the main one
    #: (None: all of them).  Every metric is still recorded, compared, checked and in the CSV.
    leaderboard_metrics: tuple[str, ...] | None = None
    #: Config keys that name files or directories the task reads (a model directory, a data file): their
    #: content joins the cell's identity (:mod:`harness.core.inputs`).  None: every string setting that
    #: names an existing file or directory (the default, right for most plugins); () when none do.
    input_keys: tuple[str, ...] | None = None

    # --- configuration -------------------------------------------------
    def config_keys(self) -> tuple[str, ...]:
        return tuple(f.name for f in fields(self.Config))

    def default_config(self) -> Any:
        """The variant's default ``Config``."""
        return self.Config(**self.defaults)

    def resolve_config(self, overrides: Mapping[str, Any] | None = None) -> Any:
        """The default ``Config`` with ``overrides``; unknown keys and values of the wrong type are a :class:`ConfigError`."""
        config = self.default_config()
        overrides = dict(overrides or {})
        hints = get_type_hints(self.Config)
        for key, value in overrides.items():
            if key not in hints:
                known = ", ".join(self.config_keys()) or "(none)"
                raise ConfigError(f"task {self.name!r} has no config key {key!r}; known keys: {known}")
            _check_type(self.name, key, value, hints[key])
        return replace(config, **overrides)

    def input_paths(self, config: Any) -> dict[str, str]:
        """``{config key: path}`` of the files and directories ``config`` makes the task read."""
        from harness.core.inputs import named_paths, settings_of

        return named_paths(settings_of(config), self.input_keys)

    def preflight(self, config: Any, ctx: RunContext) -> None:
        """Check, before any cell runs, what can be checked of ``config`` alone (a model loads, a ground-truth
        file is in range for it); raise :class:`~harness.errors.HarnessError` with one line.  None by default."""

    def accepts(self, method_cls: type) -> str | None:
        """None when this task can run methods of ``method_cls``; else the one-line reason it cannot.

        A pair the task refuses is no cell (``harness run`` and ``harness selftest`` leave it out, as they
        leave out methods of other families); naming only methods that no selected task accepts is a
        :class:`ConfigError` with the reasons.  Every method of the family by default.
        """
        return None

    def model_id(self, config: Any) -> str:
        """Identifier of the model the task reads activations from ("-" when none)."""
        return str(getattr(config, "model", "-"))

    def metric_spec(self, name: str) -> MetricSpec:
        for spec in self.metrics:
            if spec.name == name:
                return spec
        raise KeyError(name)

    # --- the three steps ------------------------------------------------
    def build(self, config: Any, ctx: RunContext) -> Any:
        raise NotImplementedError

    def apply(self, method: Any, data: Any, ctx: RunContext) -> Any:
        raise NotImplementedError

    def evaluate(self, data: Any, output: Any) -> dict[str, float]:
        raise NotImplementedError

    def artifacts(self, data: Any, output: Any) -> dict[str, Any]:
        """Small JSON-able outputs worth keeping in the record for plots (e.g. head scores); none by default."""
        return {}

    # --- shared checks --------------------------------------------------
    def check_metrics(self, values: Mapping[str, Any]) -> dict[str, float]:
        """Every declared metric present (optional ones may be absent), a real finite number; returns plain floats."""
        out: dict[str, float] = {}
        for spec in self.metrics:
            if spec.name not in values and not spec.optional:
                raise InvalidMetricError(f"task {self.name!r} did not produce metric {spec.name!r}")
        for key, value in values.items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise InvalidMetricError(f"metric {key!r} is {value!r}, not a number") from None
            if not math.isfinite(number):
                raise InvalidMetricError(f"metric {key!r} is {number} (not finite)")
            out[key] = number
        return out


def config_dict(config: Any) -> dict[str, Any]:
    """A task config as the plain dict that result records store and hash."""
    return asdict(config)


_SIMPLE = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def accepts_type(value: Any, typ: Any) -> bool:
    """Whether ``value`` (parsed from JSON) fits the annotation ``typ`` (an int is a float; a bool is no int)."""
    if typ is Any:
        return True
    if get_origin(typ) in (Union, UnionType):
        return any(accepts_type(value, t) for t in get_args(typ))
    if typ is type(None):
        return value is None
    if typ is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if typ is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, get_origin(typ) or typ)


def describe_type(typ: Any) -> str:
    """``an integer or null`` for ``int | None``."""
    options = [t for t in (get_args(typ) if get_origin(typ) in (Union, UnionType) else (typ,))]
    return " or ".join(_SIMPLE.get(t, "null" if t is type(None) else getattr(t, "__name__", str(t))) for t in options)


def _check_type(task: str, key: str, value: Any, typ: Any) -> None:
    if not accepts_type(value, typ):
        wanted = describe_type(typ)
        raise ConfigError(f"task {task!r}: config key {key!r} must be {wanted}, got {value!r}; "
                          f"e.g. --set {key}=... with a value of that type")
