"""Base class of every task, and the metric specification tasks declare."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

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
    """

    name: str
    higher_is_better: bool
    description: str
    abs_tol: float = 0.0
    rel_tol: float = 0.0
    unit: str = ""
    gated: bool = True  # False for timings and other machine-dependent numbers


class Task:
    """A named, versioned evaluation.

    Subclasses set ``metrics``, ``main_metric`` and ``default_config`` and
    implement :meth:`build`, :meth:`apply` and :meth:`evaluate`.  The runner
    calls, per cell::

        data = task.build(config, seed, ctx)      # deterministic in (config, seed)
        output = task.apply(method, data, ctx)    # runs the family protocol, validates output
        metrics = task.evaluate(data, output)     # dict of floats

    ``name``, ``family``, ``version`` and ``description`` are set by
    :func:`harness.core.registry.register_task`.
    """

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    version: ClassVar[str] = "0"
    description: ClassVar[str] = ""
    metrics: ClassVar[tuple[MetricSpec, ...]] = ()
    main_metric: ClassVar[str] = ""
    default_config: ClassVar[Mapping[str, Any]] = {}
    #: False for tasks that need something a laptop may lack (e.g. GPT-2 weights in the
    #: local cache): `harness run` without --tasks skips them; naming them runs them.
    in_default_suite: ClassVar[bool] = True
    #: Metrics shown as columns in the Markdown / HTML leaderboard besides the main one
    #: (None: all of them).  Every metric is still recorded, compared, checked and in the CSV.
    leaderboard_metrics: ClassVar[tuple[str, ...] | None] = None

    # --- configuration -------------------------------------------------
    def resolve_config(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Default config updated with ``overrides``; unknown keys are an error."""
        config = dict(self.default_config)
        for key, value in (overrides or {}).items():
            if key not in config:
                known = ", ".join(sorted(config)) or "(none)"
                raise ConfigError(f"task {self.name!r} has no config key {key!r}; known keys: {known}")
            config[key] = value
        return config

    def model_id(self, config: Mapping[str, Any]) -> str:
        """Identifier of the model the task reads activations from ("-" when none)."""
        return str(config.get("model", "-"))

    def metric_spec(self, name: str) -> MetricSpec:
        for spec in self.metrics:
            if spec.name == name:
                return spec
        raise KeyError(name)

    # --- the three steps ------------------------------------------------
    def build(self, config: Mapping[str, Any], seed: int, ctx: RunContext) -> Any:
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
        """Every declared metric present, a real finite number; returns plain floats."""
        out: dict[str, float] = {}
        for spec in self.metrics:
            if spec.name not in values:
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

