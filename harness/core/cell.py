"""What to run and the cells it expands to: a cell's identity is computed here, once.

A :class:`RunSpec` (tasks x methods x seeds, config overrides, a method-parameter grid) expands into
:class:`Cell` objects in run order.  Each cell holds its task instance, its typed task config, its method
instance (created once, with the explicit parameters) and its :class:`CellIdentity`: the config record
``{"task": ..., "method": <every method parameter>}``, its hash, the model id and the cell key.  The
runner, the store and every executor read the identity from the cell and never recompute it.
"""

from __future__ import annotations

import fnmatch
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from harness.core import inputs, registry
from harness.core.method import Method
from harness.core.records import canonical_json, cell_key, config_hash, method_label, side_config_hash
from harness.core.task import Task, config_dict
from harness.errors import ConfigError, HarnessError

DEFAULT_SEEDS = (0, 1, 2)
MAX_SEED = 2**32 - 1  # numpy's seed range (every generator the tasks seed accepts it)
SUITES: dict[str, tuple[int, ...]] = {"default": DEFAULT_SEEDS, "quick": (0,)}


@dataclass
class RunSpec:
    """What to run.  ``methods=None`` means every method of each task's family."""

    tasks: Sequence[str] | None = None
    methods: Sequence[str] | None = None
    seeds: Sequence[int] = DEFAULT_SEEDS
    task_overrides: Mapping[str, Any] = field(default_factory=dict)
    grid: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    device: str = "auto"
    results_dir: Path = Path("results")
    cache_dir: Path | None = None
    force: bool = False
    progress: bool = True
    jobs: int | str = 1  # worker processes on this machine, or "auto" (the free cores)
    threads_per_cell: int | None = None  # None: the free cores shared out among the concurrent cells
    plugins: Sequence[str] = ()  # modules imported before running (worker processes import them too)
    executor: str = "local"  # "local" (this machine: serial or --jobs) or "ray"
    ray_address: str | None = None  # None: a local Ray cluster on 127.0.0.1; "auto" or HOST:PORT: join one
    isolate: bool = False  # run serial cells in a worker process too (a method's os._exit costs its cell only)
    cell_timeout: float | None = None  # seconds a cell may run (in a worker process) before it is stopped
    cell_memory_gb: float | None = None  # address space a worker may add over its size at rest (RLIMIT_AS)
    allow_pickle_weights: bool = False  # user models: also load pickle weights (.bin, weights_only); else safetensors only


@dataclass(frozen=True)
class CellIdentity:
    """Everything that makes two cells the same experiment (see :func:`harness.core.records.cell_key`)."""

    config: dict[str, Any]  # {"task": task config, "method": every method parameter[, "inputs": hashes]}, JSON-safe
    config_hash: str
    task_config_hash: str  # the task's settings (and input hashes) alone: cells sharing it share built data
    model: str
    key: str
    inputs: dict[str, Any] = field(default_factory=dict)  # {"task"/"method": {key: {"path", "sha256"}}}: provenance


@dataclass
class Cell:
    """One (task, task config, method, method parameters, seed)."""

    task_entry: registry.Entry
    task: Task
    config: Any  # the task's typed Config
    method_entry: registry.Entry
    method_params: dict[str, Any]  # explicit (non-default) parameters, e.g. from --grid
    seed: int
    method: Method | None  # None when the parameters are invalid: then ``error`` says why
    error: str | None
    identity: CellIdentity

    @property
    def label(self) -> str:
        return f"{self.task_entry.name} | {method_label(self.method_entry.name, self.method_params)} | seed {self.seed}"


def json_safe(value: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON round trip of ``value`` (non-JSON values become strings, as in the config hash)."""
    return json.loads(canonical_json(dict(value)))


def explicit_params(method_entry: registry.Entry, params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` less those given at the method's default value: ``--grid n_init=10`` for a method whose
    default is 10 is the plain method (one label, one leaderboard row)."""
    defaults = method_entry.cls.default_params() if hasattr(method_entry.cls, "default_params") else {}
    return {k: v for k, v in params.items()
            if not (k in defaults and canonical_json(v) == canonical_json(defaults[k]))}


def cell_inputs(task_entry: registry.Entry, task: Task, config: Any, method_entry: registry.Entry,
                params: Mapping[str, Any]) -> dict[str, dict[str, dict[str, str]]]:
    """The external inputs of a cell by content (:mod:`harness.core.inputs`), per side; empty sides left out."""
    method_paths = method_entry.cls.input_paths(dict(params)) if hasattr(method_entry.cls, "input_paths") else {}
    sides = {
        "task": (task.input_paths(config), [task_entry.cls, *task_entry.variant.values()]),
        "method": (method_paths, [method_entry.cls]),
    }
    out = {}
    for side, (paths, objects) in sides.items():
        try:
            described = inputs.describe(paths, inputs.plugin_sources(objects))
        except OSError as exc:
            raise ConfigError(f"cannot read an input of {task_entry.name} | {method_entry.name} ({side}): "
                              f"{exc.filename}: {exc.strerror}") from None
        if described:
            out[side] = described
    return out


def make_cell(task_entry: registry.Entry, task: Task, config: Any, method_entry: registry.Entry,
              params: Mapping[str, Any], seed: int) -> Cell:
    """Create the method once and compute the cell's identity once."""
    params = explicit_params(method_entry, params)
    method, error, full_params = None, None, params
    try:
        method = method_entry.create(params)
        full_params = method.get_params()
    except HarnessError as exc:  # bad parameters: the runner records the error
        error = f"{type(exc).__name__}: {exc}"
    ident_config: dict[str, Any] = {"task": config_dict(config), "method": json_safe(full_params)}
    described = cell_inputs(task_entry, task, config, method_entry, full_params)
    if described:  # only then: a cell without external inputs keeps the identity it always had
        ident_config["inputs"] = {side: inputs.short(d) for side, d in described.items()}
    cfg_hash = config_hash(ident_config)
    model = task.model_id(config)
    key = cell_key(task_entry.name, task_entry.version, method_entry.name, method_entry.version, cfg_hash,
                   int(seed), model)
    identity = CellIdentity(ident_config, cfg_hash, side_config_hash(ident_config, "task"), model, key, described)
    return Cell(task_entry, task, config, method_entry, params, int(seed), method, error, identity)


def _grid_points(grid: Mapping[str, Sequence[Any]], accepted: set[str]) -> list[dict[str, Any]]:
    keys = [k for k in grid if k in accepted]
    if not keys:
        return [{}]
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def _select(spec: RunSpec) -> tuple[list[registry.Entry], list[registry.Entry] | None]:
    if spec.tasks:
        task_entries = [registry.get_task(n) for n in spec.tasks]
    else:
        task_entries = [t for t in registry.tasks() if t.in_default_suite]
    if not task_entries:
        raise ConfigError("no tasks selected")
    method_entries = [registry.get_method(n) for n in spec.methods] if spec.methods is not None else None
    if not spec.seeds:
        raise ConfigError("no seeds given; pass e.g. --seeds 0 1 2")
    for seed in spec.seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise ConfigError(f"seed {seed!r} is not an integer from 0 to {MAX_SEED}; pass e.g. --seeds 0 1 2")
    families = {t.family for t in task_entries}
    for m in method_entries or []:
        if m.family not in families:
            raise ConfigError(
                f"method {m.name!r} (family {m.family!r}) fits none of the selected tasks "
                f"(families: {', '.join(sorted(families))})"
            )
    return task_entries, method_entries


def _in_default_suite_on(method_entry: registry.Entry, task_entry: registry.Entry) -> bool:
    """Whether a run without --methods pairs the method with the task (``Method.default_suite_tasks``)."""
    patterns = getattr(method_entry.cls, "default_suite_tasks", None)
    return patterns is None or any(fnmatch.fnmatchcase(task_entry.name, p) for p in patterns)


def _refusal(task_entry: registry.Entry, task: Task, method_entry: registry.Entry) -> str | None:
    """Why ``task`` does not run ``method_entry`` (:meth:`Task.accepts`), as ``"task: reason"``; None if it does."""
    reason = task.accepts(method_entry.cls)
    return None if reason is None else f"{task_entry.name}: {reason}"


def expand(spec: RunSpec) -> list[Cell]:
    """Cells in run order: task, then seed, then method (so task data is built once per seed)."""
    task_entries, method_entries = _select(spec)
    used_overrides: set[str] = set()
    used_grid: set[str] = set()
    cells: list[Cell] = []
    refused: dict[str, list[str | None]] = {}  # method -> per selected task of its family: why not (None: runs)
    for t in task_entries:
        task: Task = t.create()
        overrides = {k: v for k, v in spec.task_overrides.items() if k in task.config_keys()}
        used_overrides |= set(overrides)
        config = task.resolve_config(overrides)
        if method_entries is not None:
            candidates = [m for m in method_entries if m.family == t.family]
        else:
            candidates = [m for m in registry.methods(t.family) if m.in_default_suite and _in_default_suite_on(m, t)]
        for m in candidates:
            refused.setdefault(m.name, []).append(_refusal(t, task, m))
        candidates = [m for m in candidates if refused[m.name][-1] is None]
        points = []
        for m in candidates:
            accepted = set(m.cls.param_names())
            used_grid |= accepted & set(spec.grid)
            grid_points = _grid_points(spec.grid, accepted)
            for point in grid_points:  # values of the wrong type: one line naming the parameter, before any work
                m.cls.check_params(point)
            points.append((m, grid_points))
        for seed in spec.seeds:
            for m, grid_points in points:
                cells.extend(make_cell(t, task, config, m, params, seed) for params in grid_points)
    if method_entries is not None:
        nowhere = {name: reasons for name, reasons in refused.items() if None not in reasons}
        if nowhere:
            raise ConfigError("; ".join(f"method {name!r} runs on none of the selected tasks: {', '.join(reasons)}"
                                        for name, reasons in nowhere.items()))
    unused = sorted(set(spec.task_overrides) - used_overrides)
    if unused:
        raise ConfigError(f"no selected task has the config key(s) {', '.join(map(repr, unused))}")
    unused_grid = sorted(set(spec.grid) - used_grid)
    if unused_grid:
        raise ConfigError(f"no selected method has the parameter(s) {', '.join(map(repr, unused_grid))}")
    return cells
