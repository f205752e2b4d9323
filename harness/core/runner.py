"""The runner: expand a run spec into cells, run each in isolation, record every result.

A cell is (task, task config, method, method params, seed).  Each cell is
seeded, timed and guarded: an exception, a NaN metric, or an output of the
wrong shape becomes a record with status ``error`` and the run goes on.
Cells already recorded (same task version, method version, config hash,
seed and model) are skipped unless ``force``, so an interrupted run resumes.
"""

from __future__ import annotations

import itertools
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from tqdm.auto import tqdm

from harness.core import registry
from harness.core.cache import default_cache_dir
from harness.core.context import RunContext
from harness.errors import ConfigError, HarnessError, RecordError
from harness.core.method import Method
from harness.core.provenance import provenance
from harness.core.records import SCHEMA, SCHEMA_VERSION, Store, canonical_json, cell_key, config_hash
from harness.core.resources import measure
from harness.core.seeding import resolve_device, seed_everything
from harness.core.task import Task

DEFAULT_SEEDS = (0, 1, 2)
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


@dataclass
class Cell:
    task: registry.Entry
    method: registry.Entry
    seed: int
    task_config: dict[str, Any]
    method_params: dict[str, Any]  # explicit (non-default) parameters, e.g. from --grid

    @property
    def label(self) -> str:
        return f"{self.task.name} | {method_label(self.method.name, self.method_params)} | seed {self.seed}"


@dataclass
class RunSummary:
    records: list[dict[str, Any]] = field(default_factory=list)
    ran: int = 0
    skipped: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


def method_label(name: str, params: Mapping[str, Any]) -> str:
    """``topk-sae[k=16]`` for explicit parameters, plain name otherwise."""
    if not params:
        return name
    return name + "[" + ",".join(f"{k}={params[k]}" for k in sorted(params)) + "]"


def _grid_points(grid: Mapping[str, Sequence[Any]], accepted: set[str]) -> list[dict[str, Any]]:
    keys = [k for k in grid if k in accepted]
    if not keys:
        return [{}]
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def expand(spec: RunSpec) -> list[Cell]:
    """Cells in run order: task, then seed, then method (so task data is built once per seed)."""
    if spec.tasks:
        task_entries = [registry.get_task(n) for n in spec.tasks]
    else:
        task_entries = [t for t in registry.tasks() if t.cls.in_default_suite]
    if not task_entries:
        raise ConfigError("no tasks selected")
    method_entries = [registry.get_method(n) for n in spec.methods] if spec.methods is not None else None
    if not spec.seeds:
        raise ConfigError("no seeds given; pass e.g. --seeds 0 1 2")

    families = {t.family for t in task_entries}
    if method_entries is not None:
        for m in method_entries:
            if m.family not in families:
                raise ConfigError(
                    f"method {m.name!r} (family {m.family!r}) fits none of the selected tasks "
                    f"(families: {', '.join(sorted(families))})"
                )

    used_overrides: set[str] = set()
    used_grid: set[str] = set()
    cells: list[Cell] = []
    for t in task_entries:
        task: Task = t.cls()
        overrides = {k: v for k, v in spec.task_overrides.items() if k in task.default_config}
        used_overrides |= set(overrides)
        task_config = task.resolve_config(overrides)
        if method_entries is not None:
            candidates = [m for m in method_entries if m.family == t.family]
        else:
            candidates = [m for m in registry.methods(t.family) if m.cls.in_default_suite]
        points = []
        for m in candidates:
            accepted = set(m.cls.param_names())
            used_grid |= accepted & set(spec.grid)
            points.append((m, _grid_points(spec.grid, accepted)))
        for seed in spec.seeds:
            for m, grid_points in points:
                for params in grid_points:
                    cells.append(Cell(t, m, int(seed), task_config, params))
    unused = sorted(set(spec.task_overrides) - used_overrides)
    if unused:
        raise ConfigError(f"no selected task has the config key(s) {', '.join(map(repr, unused))}")
    unused_grid = sorted(set(spec.grid) - used_grid)
    if unused_grid:
        raise ConfigError(f"no selected method has the parameter(s) {', '.join(map(repr, unused_grid))}")
    return cells


def _json_safe(params: Mapping[str, Any]) -> dict[str, Any]:
    import json

    return json.loads(canonical_json(dict(params)))


def _identity(cell: Cell, task: Task, full_params: Mapping[str, Any]) -> tuple[dict[str, Any], str, str, str]:
    """``(config, config_hash, model, cell_key)`` of a cell whose method has the parameters ``full_params``."""
    config = {"task": cell.task_config, "method": _json_safe(full_params)}
    cfg_hash = config_hash(config)
    model = task.model_id(cell.task_config)
    key = cell_key(cell.task.name, cell.task.version, cell.method.name, cell.method.version, cfg_hash, cell.seed,
                   model)
    return config, cfg_hash, model, key


def run_cell(cell: Cell, ctx: RunContext, data_cache: dict, device_name: str) -> dict[str, Any]:
    """Run one cell and return its record (status ok or error).  Never raises on method failure."""
    task: Task = cell.task.cls()
    method_cls = cell.method.cls
    error: str | None = None
    metrics: dict[str, float] = {}
    artifacts: dict[str, Any] = {}
    timings: dict[str, float] = {"wall_s": 0.0, "cpu_s": 0.0, "peak_rss_mb": 0.0, "build_s": 0.0, "evaluate_s": 0.0}
    full_params = dict(cell.method_params)
    try:
        method: Method = method_cls.create(cell.method_params)
        full_params = method.get_params()
        data_key = (cell.task.name, config_hash(cell.task_config), cell.seed)
        if data_key not in data_cache:
            data_cache.clear()  # keep one task's data in memory at a time
            seed_everything(cell.seed)
            t0 = time.perf_counter()
            data_cache[data_key] = task.build(cell.task_config, cell.seed, ctx)
            timings["build_s"] = time.perf_counter() - t0
        data = data_cache[data_key]
        seed_everything(cell.seed)
        method.setup(ctx)
        with measure() as m:
            output = task.apply(method, data, ctx)
        timings.update(wall_s=m.wall_s, cpu_s=m.cpu_s, peak_rss_mb=m.peak_rss_mb)
        t0 = time.perf_counter()
        metrics = task.check_metrics(task.evaluate(data, output))
        artifacts = _json_safe(task.artifacts(data, output))
        timings["evaluate_s"] = time.perf_counter() - t0
    except KeyboardInterrupt:
        raise
    except HarnessError as exc:
        error = f"{type(exc).__name__}: {exc}"
        metrics, artifacts = {}, {}
    except Exception as exc:  # noqa: BLE001 - isolation of a failing method is the point
        error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
        metrics, artifacts = {}, {}

    config, cfg_hash, model, key = _identity(cell, task, full_params)
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "cell_key": key,
        "task": cell.task.name,
        "task_version": cell.task.version,
        "family": cell.task.family,
        "method": cell.method.name,
        "method_version": cell.method.version,
        "method_params": _json_safe(cell.method_params),
        "baseline": cell.method.baseline,
        "model": model,
        "seed": cell.seed,
        "config": config,
        "config_hash": cfg_hash,
        "metrics": metrics,
        "main_metric": task.main_metric,
        "status": "error" if error else "ok",
        "error": error,
        "timings": timings,
        "provenance": provenance(device_name),
        "artifacts": artifacts,
    }


def _planned_key(cell: Cell) -> str:
    """The cell key before running: needs the method's full params, so instantiate it."""
    method = cell.method.cls.create(cell.method_params)
    return _identity(cell, cell.task.cls(), method.get_params())[3]


def run(spec: RunSpec, on_record: Callable[[dict[str, Any]], None] | None = None) -> RunSummary:
    """Run every cell of ``spec``; each finished cell is written to the store at once."""
    cells = expand(spec)
    device = resolve_device(spec.device)
    store = Store(Path(spec.results_dir))
    cache_dir = Path(spec.cache_dir) if spec.cache_dir else default_cache_dir()
    summary = RunSummary()
    data_cache: dict = {}
    bar = tqdm(cells, desc="cells", unit="cell", disable=not spec.progress, dynamic_ncols=True)
    for cell in bar:
        bar.set_postfix_str(cell.label, refresh=False)
        try:
            key: str | None = _planned_key(cell)
        except HarnessError:  # bad method parameters: run_cell turns this into an error record
            key = None
        existing = None
        if key is not None and not spec.force:
            try:
                existing = store.find(cell.task.name, cell.method.name, cell.seed, key)
            except RecordError as exc:
                bar.write(f"warning: {exc}; re-running that cell")
        if existing is not None and existing["status"] == "ok":
            summary.skipped += 1
            summary.records.append(existing)
            continue
        ctx = RunContext(seed=cell.seed, device=device, cache_dir=cache_dir, show_progress=spec.progress)
        record = run_cell(cell, ctx, data_cache, str(device))
        store.write(record)
        summary.ran += 1
        summary.records.append(record)
        if record["status"] != "ok":
            summary.failed.append(record)
            bar.write(f"FAILED {cell.label}: {record['error'].splitlines()[0]}")
        if on_record:
            on_record(record)
    bar.close()
    return summary
