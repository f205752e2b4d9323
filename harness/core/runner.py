"""The runner: run each cell of a run spec in isolation and record every result.

Cells come from :func:`harness.core.cell.expand` with their identity computed once.  Each cell is
seeded, timed and guarded: an exception, a NaN metric, or an output of the wrong shape becomes a record
with status ``error`` and the run goes on.  Cells already recorded (same identity) are skipped unless
``force``, so an interrupted run resumes.

On a CUDA device a cell runs under :func:`~harness.core.seeding.deterministic_device` (deterministic
kernels, no TF32); its record's provenance names the device and those settings.

Seeding: python, numpy and torch are seeded with the cell's seed before the task builds its data *and*
again before the method runs, so the method's random stream is the same whether the data was built
just now or reused from the previous cell of the same task and seed.
"""

from __future__ import annotations

import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from harness.core.cache import default_cache_dir
from harness.core.cell import Cell, RunSpec, expand, json_safe
from harness.core.context import RunContext
from harness.core.provenance import provenance
from harness.core.records import Record, Store
from harness.core.resources import measure
from harness.core.parallel import MapCalls, WorkerSetup, affinity_key, map_here, run_in_workers, units_of
from harness.core.seeding import deterministic_device, resolve_device, seed_everything
from harness.core.threads import default_threads, resolve_jobs, thread_budget
from harness.errors import ConfigError, HarnessError, RecordError


@dataclass
class RunSummary:
    records: list[dict[str, Any]] = field(default_factory=list)
    ran: int = 0
    skipped: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)
    after_cells: Any = None  # what run()'s ``after_cells`` returned

    @property
    def ok(self) -> bool:
        return not self.failed


_TIMINGS = ("wall_s", "cpu_s", "peak_rss_mb", "build_s", "evaluate_s")


def _execute(cell: Cell, ctx: RunContext, data_cache: dict, timings: dict[str, float]) -> tuple[dict, dict]:
    """Build (or reuse) the task data, run the method through the task, evaluate: ``(metrics, artifacts)``."""
    if cell.error:
        raise HarnessError(cell.error.split(": ", 1)[-1])
    task = cell.task
    data_key = (cell.task_entry.name, cell.identity.task_config_hash, cell.seed)
    if data_key not in data_cache:
        data_cache.clear()  # keep one task's data in memory at a time
        seed_everything(cell.seed)
        t0 = time.perf_counter()
        data_cache[data_key] = task.build(cell.config, ctx)
        timings["build_s"] = time.perf_counter() - t0
    data = data_cache[data_key]
    seed_everything(cell.seed)
    cell.method.setup(ctx)
    with measure() as m:
        output = task.apply(cell.method, data, ctx)
    timings.update(wall_s=m.wall_s, cpu_s=m.cpu_s, peak_rss_mb=m.peak_rss_mb)
    t0 = time.perf_counter()
    metrics = task.check_metrics(task.evaluate(data, output))
    artifacts = json_safe(task.artifacts(data, output))
    timings["evaluate_s"] = time.perf_counter() - t0
    return metrics, artifacts


def run_cell(cell: Cell, ctx: RunContext, data_cache: dict) -> Record:
    """Run one cell and return its record (status ok or error).  Never raises on method failure."""
    error: str | None = None
    metrics: dict[str, float] = {}
    artifacts: dict[str, Any] = {}
    timings = dict.fromkeys(_TIMINGS, 0.0)
    with deterministic_device(ctx.device):  # CUDA: deterministic kernels, no TF32 (recorded in provenance)
        try:
            metrics, artifacts = _execute(cell, ctx, data_cache, timings)
        except KeyboardInterrupt:
            raise
        except HarnessError as exc:
            error = cell.error or f"{type(exc).__name__}: {exc}"
        except SystemExit as exc:  # sys.exit() in a method ends the cell, never the run
            error = (f"SystemExit: the cell called sys.exit({exc.code!r}); recorded as an error, the run went on\n"
                     f"{traceback.format_exc()}")
        except BaseException as exc:  # noqa: BLE001 - isolation of a failing method is the point
            error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
        prov = provenance(ctx.device, ctx.executor)
    if error:
        metrics, artifacts = {}, {}
    return _record(cell, metrics, artifacts, error, timings, prov)


def error_record(cell: Cell, ctx: RunContext, error: str) -> Record:
    """The record of a cell that failed outside :func:`run_cell` (e.g. its worker process died)."""
    return _record(cell, {}, {}, error, dict.fromkeys(_TIMINGS, 0.0), provenance(ctx.device, ctx.executor))


def _record(cell: Cell, metrics: dict, artifacts: dict, error: str | None, timings: dict, prov: dict) -> Record:
    t, m, ident = cell.task_entry, cell.method_entry, cell.identity
    if ident.inputs:  # the external inputs by content: path and SHA-256 of each (harness.core.inputs)
        prov = {**prov, "inputs": ident.inputs}
    return Record(
        cell_key=ident.key, task=t.name, task_version=t.version, family=t.family,
        method=m.name, method_version=m.version, method_params=json_safe(cell.method_params),
        baseline=m.baseline, model=ident.model, seed=cell.seed, config=ident.config,
        config_hash=ident.config_hash, metrics=metrics, main_metric=cell.task.main_metric,
        status="error" if error else "ok", error=error, timings=timings,
        provenance=prov, artifacts=artifacts,
    )


def run(spec: RunSpec, on_record: Callable[[dict[str, Any]], None] | None = None,
        after_cells: Callable[[MapCalls], Any] | None = None) -> RunSummary:
    """Run every cell of ``spec`` (serially, or in ``spec.jobs`` worker processes); each finished cell is
    written to the store at once, by this process.

    ``after_cells(map_calls)``: called once every cell is recorded, with ``map_calls(fn, [args, ...])``
    that runs ``fn(*args)`` for each (module-level, picklable) ``fn`` in the run's worker processes before
    they stop (under ``--jobs``; here otherwise); its return value is ``summary.after_cells``.  The
    leaderboard's plots are drawn this way.
    """
    cells = expand(spec)
    device = resolve_device(spec.device)
    _check_limits(spec, device)
    store = Store(Path(spec.results_dir))
    store.check_writable()  # before any work: a results directory that is a file or read-only is one line
    cache_dir = Path(spec.cache_dir) if spec.cache_dir else default_cache_dir()
    summary = RunSummary()
    done: dict[int, dict[str, Any]] = {}
    todo = _todo(cells, spec, store, summary, done)
    ray = spec.executor == "ray"
    jobs = 1 if ray else min(resolve_jobs(spec.jobs), max(1, len(todo)))
    threads = spec.threads_per_cell or (1 if ray else default_threads(jobs))
    in_process = jobs == 1 and not ray and not isolated(spec)
    preflight(cells, todo, device if in_process else torch.device("cpu"), cache_dir, spec.allow_pickle_weights)
    bar = tqdm(total=len(cells), initial=len(done), desc="cells", unit="cell", disable=not spec.progress,
               dynamic_ncols=True)

    def deliver(i: int, record: dict[str, Any]) -> None:
        store.write(record)
        summary.ran += 1
        done[i] = record
        bar.set_postfix_str(cells[i].label, refresh=False)
        bar.update(1)
        if record["status"] != "ok":
            summary.failed.append(record)
            bar.write(f"FAILED {cells[i].label}: {record['error'].splitlines()[0]}")
        if on_record:
            on_record(record)

    after = after_cells or (lambda map_calls: None)
    try:
        if in_process:
            data_cache: dict = {}
            for i in todo:
                ctx = RunContext(seed=cells[i].seed, device=device, cache_dir=cache_dir, show_progress=spec.progress,
                                 threads=threads, allow_pickle_weights=spec.allow_pickle_weights)
                with thread_budget(threads):
                    record = run_cell(cells[i], ctx, data_cache).to_dict()
                cells[i].method = None  # release the fitted method (a run may hold hundreds of cells)
                deliver(i, record)
            summary.after_cells = after(map_here)
        else:
            setup = WorkerSetup(spec, str(device), cache_dir, threads, "ray" if ray else f"local:{jobs}",
                                tuple(sys.path))
            units = units_of(cells, todo, _expected_seconds(store))

            def fail(i: int, why: str) -> None:
                ctx = RunContext(seed=cells[i].seed, device=device, cache_dir=cache_dir, threads=threads,
                                 executor=setup.executor)
                deliver(i, error_record(cells[i], ctx, why).to_dict())

            if ray:
                from harness.core.ray_executor import run_on_ray

                run_on_ray(setup, units, spec.ray_address, deliver, fail)
                summary.after_cells = after(map_here)
            else:
                summary.after_cells = run_in_workers(setup, units, jobs, deliver, fail,
                                                     [affinity_key(cells[u[0]]) for u in units], after)
    finally:
        bar.close()
        summary.records = [done[i] for i in sorted(done)]
    return summary


def _todo(cells: list[Cell], spec: RunSpec, store: Store, summary: RunSummary, done: dict[int, dict]) -> list[int]:
    """The indices of the cells to run; the others (recorded ok, not ``force``) go to ``done`` as skipped."""
    todo = []
    for i, cell in enumerate(cells):
        existing = _recorded(cell, spec, store)
        if existing is not None and existing["status"] == "ok":
            summary.skipped += 1
            done[i] = existing
        else:
            todo.append(i)
    return todo


def preflight(cells: list[Cell], todo: list[int], device, cache_dir: Path, allow_pickle_weights: bool = False) -> None:
    """What can be checked before the first cell, once per task config of the cells to run: the inputs it
    names (a model loads, a ground-truth file is in range for it; :meth:`~harness.core.task.Task.preflight`).
    A failure is a :class:`ConfigError` naming the task."""
    seen = set()
    for i in todo:
        c = cells[i]
        if (c.task_entry.name, c.identity.task_config_hash) in seen:
            continue
        seen.add((c.task_entry.name, c.identity.task_config_hash))
        ctx = RunContext(seed=c.seed, device=device, cache_dir=cache_dir, allow_pickle_weights=allow_pickle_weights)
        try:
            c.task.preflight(c.config, ctx)
        except HarnessError as exc:
            raise ConfigError(f"{c.task_entry.name}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - a user's model or file that cannot be read: one line, before any work
            raise ConfigError(f"{c.task_entry.name}: its inputs cannot be used: {type(exc).__name__}: {exc}") from None


def _check_limits(spec: RunSpec, device) -> None:
    if spec.executor == "ray" and (spec.cell_timeout or spec.cell_memory_gb):
        raise ConfigError("--cell-timeout and --cell-memory work with the local executor (serial or --jobs), "
                          "not with --executor ray")
    if spec.cell_memory_gb and device.type == "cuda":
        raise ConfigError("--cell-memory limits a worker's address space (RLIMIT_AS), which CUDA's own reservations "
                          "exceed; use it on CPU runs (--device cpu)")


def isolated(spec: RunSpec) -> bool:
    """Cells run in worker processes even with one job: ``--isolate``, or a per-cell time or memory limit
    (only a worker can be stopped or limited without stopping the run)."""
    return bool(spec.isolate or spec.cell_timeout or spec.cell_memory_gb)


def _recorded(cell: Cell, spec: RunSpec, store: Store) -> dict[str, Any] | None:
    """The record already stored for ``cell`` (None when there is none, it is unreadable, or ``force``)."""
    if spec.force or cell.error is not None:
        return None
    try:
        return store.find(cell.task_entry.name, cell.method_entry.name, cell.seed, cell.identity.key)
    except RecordError as exc:
        tqdm.write(f"warning: {exc}; re-running that cell")
        return None


def _expected_seconds(store: Store) -> Callable[[Cell], float]:
    """A cell's expected seconds: the mean wall + build time of the same task and method in the store's
    earlier records (any config), else 1 s."""
    seen: dict[tuple[str, str], list[float]] = {}
    try:
        for r in store.load_all():
            t = r.get("timings") or {}
            seen.setdefault((r["task"], r["method"]), []).append(float(t.get("wall_s", 0)) + float(t.get("build_s", 0)))
    except (RecordError, OSError, KeyError, TypeError, ValueError):
        seen = {}

    def expected(cell: Cell) -> float:
        past = seen.get((cell.task_entry.name, cell.method_entry.name))
        return sum(past) / len(past) if past else 1.0

    return expected
