"""Cells in worker processes on this machine: ``harness run --jobs N``.

The driver (:func:`harness.core.runner.run`) decides which cells to run; this module runs them in ``N``
long-lived worker processes (``spawn``: no state inherited from the driver's threads). Cells that
share built data (same task, task config and seed) form one *unit*, sent to one worker, which builds
the data once; units go out largest expected first (the wall time of the same task and method in
earlier records of the results directory), so a long cell does not start last, with *task affinity*:
a free worker takes the largest pending unit of the task it ran last (its process still holds that
task's model and caches), else of a task no other worker has started, else the largest.  Without
affinity, seeds of one task spread over all workers and each loaded the same model (MiniLM: 9 s per
worker) and built the same activations under the cache lock while the other waited. Each worker sends
back one record per cell; the driver writes them (one writer), so the store, the progress bar, the
resume logic and the exit codes are those of a serial run. A worker that dies (a segfault, the OOM
killer, ``os._exit`` in a method) costs an error record for the cell it was running, naming the exit
code or signal; a new worker takes the rest of its unit. Each worker's thread budget is set in its
environment before torch loads and again per cell (:func:`harness.core.threads.thread_budget`).

Limits (``--cell-timeout``, ``--cell-memory``): a worker tells the driver when it starts a cell; the
driver kills a worker whose current cell has run past the timeout and records that cell as an error
(``CellTimeout``). A memory limit is an address-space limit (``RLIMIT_AS``) set in each worker, the
given amount above the worker's own size at rest; an allocation beyond it fails inside the cell, which
is recorded as an error (``CellMemoryLimit``). ``--isolate`` runs serial cells this way too, in one worker.

Only the standard library is imported at module level: a worker sets its thread environment before
anything imports torch.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from harness.core.cell import Cell, RunSpec

#: deliver(cell index, record dict): the driver's one writer
Deliver = Callable[[int, dict], None]
#: ``map_calls(fn, [args, ...]) -> [fn(*args), ...]``, in order
MapCalls = Callable[[Callable, Sequence[tuple]], list]


def map_here(fn: Callable, calls: Sequence[tuple]) -> list:
    """:data:`MapCalls` in this process."""
    return [fn(*args) for args in calls]


@dataclass(frozen=True)
class WorkerSetup:
    """What a worker needs to rebuild the driver's cells and run them as the driver would."""

    spec: "RunSpec"
    device: str
    cache_dir: Path
    threads: int
    executor: str
    paths: tuple[str, ...] = ()  # the driver's sys.path: plugin modules importable there are importable here


@dataclass
class _Worker:
    process: Any
    conn: Any
    unit: deque = field(default_factory=deque)  # cell indices sent and not yet recorded
    started: float | None = None  # time.monotonic() when the worker said it started the cell unit[0]
    last_key: Any = None  # the affinity key (task, task config) of the unit it ran last
    seen: set = field(default_factory=set)  # every affinity key this process has run


@dataclass
class _Unit:
    key: Any  # affinity: units with the same key share a model and caches (same task and task config)
    cells: deque


def affinity_key(cell: "Cell") -> tuple:
    """Units of one task and task config (any seed) load the same model and caches."""
    return (cell.task_entry.name, cell.identity.task_config_hash)


def pick_unit(pending: Sequence[_Unit], last_key: Any, seen: set, started_elsewhere: set) -> int:
    """Index in ``pending`` (largest first) of the unit a free worker should take (see the module docstring)."""
    for test in (lambda u: u.key == last_key, lambda u: u.key in seen, lambda u: u.key not in started_elsewhere):
        for i, unit in enumerate(pending):
            if test(unit):
                return i
    return 0


def units_of(cells: Sequence["Cell"], todo: Sequence[int], expected_s: Callable[["Cell"], float]) -> list[list[int]]:
    """Group ``todo`` cell indices by built data (task, task config, seed), largest expected unit first."""
    groups: dict[tuple, list[int]] = {}
    for i in todo:
        c = cells[i]
        groups.setdefault((c.task_entry.name, c.identity.task_config_hash, c.seed), []).append(i)
    units = list(groups.values())
    units.sort(key=lambda unit: -sum(expected_s(cells[i]) for i in unit))  # stable: ties keep the run's order
    return units


def run_in_workers(setup: WorkerSetup, units: list[list[int]], jobs: int, deliver: Deliver,
                   fail: Callable[[int, str], None], keys: Sequence[Any] | None = None,
                   after: Callable[[MapCalls], Any] | None = None) -> Any:
    """Run ``units`` in ``jobs`` worker processes; ``deliver`` each record, ``fail(i, why)`` a cell whose worker died.

    ``keys``: one affinity key per unit (:func:`affinity_key` of its cells); None: no affinity.
    ``after(map_calls)``: called when every unit is done, before the workers stop, with a :data:`MapCalls`
    that spreads calls over them (the leaderboard's plots); its return value is returned.
    """
    ctx = mp.get_context("spawn")
    keys = list(keys) if keys is not None else list(range(len(units)))
    pending = [_Unit(k, deque(u)) for k, u in zip(keys, units)]
    workers: list[_Worker] = []
    timeout = getattr(setup.spec, "cell_timeout", None)
    try:
        for _ in range(min(jobs, len(pending))):
            workers.append(_start(ctx, setup))
        for w in workers:
            _assign(w, pending, workers)
        while any(w.unit for w in workers):
            busy = [w for w in workers if w.unit]
            ready = wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout=_next_deadline(busy, timeout))
            for w in busy:
                if w.conn in ready and _receive(w, deliver):
                    continue
                if w.process.sentinel in ready or not w.process.is_alive():
                    _replace_dead(w, workers, ctx, setup, fail, pending)
            for w in busy:
                if timeout and w.unit and w.started is not None and time.monotonic() - w.started > timeout:
                    _kill(w)
                    _replace_dead(w, workers, ctx, setup, fail, pending, why=(
                        f"CellTimeout: the cell ran past --cell-timeout {timeout:g} s; its worker process was "
                        "stopped and the run went on"))
            for w in workers:
                if not w.unit:
                    _assign(w, pending, workers)
        return after(lambda fn, calls: map_on_workers(workers, fn, calls)) if after else None
    finally:
        _stop_all(workers)


def map_on_workers(workers: list[_Worker], fn: Callable, calls: Sequence[tuple]) -> list:
    """``[fn(*args) for args in calls]``, each call sent to a free worker (``fn`` must be a module-level
    function, so it pickles by name); a call whose worker died or raised is redone here, where its
    exception, if any, is raised."""
    results: list = [None] * len(calls)
    pending, running, here = deque(range(len(calls))), {}, []  # running: worker index -> call index
    while pending or running:
        for k, w in enumerate(workers):
            if k not in running and pending and w.process.is_alive():
                i = pending.popleft()
                try:
                    w.conn.send(("call", fn, calls[i]))
                    running[k] = i
                except (OSError, BrokenPipeError):
                    here.append(i)
        if not running:
            break  # no live worker: the rest runs here
        ready = wait([workers[k].conn for k in running] + [workers[k].process.sentinel for k in running])
        for k in list(running):
            w = workers[k]
            if w.conn in ready:
                try:
                    kind, _, (ok, value) = w.conn.recv()
                except (EOFError, OSError):
                    here.append(running.pop(k))
                    continue
                i = running.pop(k)
                if ok:
                    results[i] = value
                else:
                    here.append(i)
            elif w.process.sentinel in ready:
                here.append(running.pop(k))
    for i in sorted(here + list(pending)):
        results[i] = fn(*calls[i])
    return results


def _next_deadline(busy: list[_Worker], timeout: float | None) -> float | None:
    """Seconds until the first running cell reaches ``timeout`` (None: wait without a deadline)."""
    started = [w.started for w in busy if w.started is not None]
    if not timeout or not started:
        return None
    return max(0.0, min(started) + timeout - time.monotonic()) + 0.01


def _kill(w: _Worker) -> None:
    if w.process.is_alive():
        w.process.kill()
    w.process.join(timeout=10)


def exit_reason(code: int | None) -> str:
    """``exited with code 3`` or ``was killed by signal 9 (SIGKILL)``."""
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "unknown signal"
        return f"was killed by signal {-code} ({name})"
    return f"exited with code {code}"


def _start(ctx, setup: WorkerSetup) -> _Worker:
    parent, child = ctx.Pipe()
    from harness.core.threads import thread_env

    saved = {k: os.environ.get(k) for k in thread_env(1)}
    os.environ.update(thread_env(setup.threads))  # inherited at spawn, read when the worker loads torch
    main = sys.modules.get("__main__")
    main_file = getattr(main, "__file__", None)
    if main_file and not Path(main_file).is_file():  # `python -` / `python -c`: spawn cannot re-import it
        del main.__file__
    try:
        process = ctx.Process(target=worker_main, args=(child, setup), daemon=True)
        process.start()
    finally:
        if main_file and getattr(main, "__file__", None) is None:
            main.__file__ = main_file
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    child.close()
    return _Worker(process, parent)


def _assign(w: _Worker, pending: list[_Unit], workers: list[_Worker]) -> None:
    if pending and w.process.is_alive():
        elsewhere = set().union(*(x.seen for x in workers if x is not w))
        unit = pending.pop(pick_unit(pending, w.last_key, w.seen, elsewhere))
        w.unit, w.last_key = unit.cells, unit.key
        w.seen.add(unit.key)
        w.conn.send(list(w.unit))


def _receive(w: _Worker, deliver: Deliver) -> bool:
    """Handle one message; False when the pipe broke (the worker died)."""
    try:
        kind, index, record = w.conn.recv()
    except (EOFError, OSError):
        return False
    if kind == "start":
        w.started = time.monotonic()
    elif kind == "record":
        w.started = None
        deliver(index, record)
        if w.unit and w.unit[0] == index:
            w.unit.popleft()
    return True


def _replace_dead(w: _Worker, workers: list[_Worker], ctx, setup: WorkerSetup,
                  fail: Callable[[int, str], None], pending: list[_Unit], why: str | None = None) -> None:
    """Record the cell a dead (or killed) worker was running as failed, queue the rest of its unit, start a
    new worker."""
    w.process.join(timeout=5)
    if w.unit:
        if why is None:
            memory = getattr(setup.spec, "cell_memory_gb", None)
            why = (f"WorkerDied: the worker process running this cell {exit_reason(w.process.exitcode)} "
                   "(a crash, the OOM killer or os._exit in the method"
                   + (f"; or an allocation beyond --cell-memory {memory:g} GB" if memory else "")
                   + "); the run went on")
        fail(w.unit.popleft(), why)
        if w.unit:
            pending.insert(0, _Unit(w.last_key, w.unit))
    w.unit, w.started = deque(), None
    workers[workers.index(w)] = _start(ctx, setup)


def _stop_all(workers: list[_Worker]) -> None:
    """Ask every worker to exit, then wait for them (they shut down at once, not one after another:
    a worker's interpreter takes about a second to exit); terminate one that does not within 5 s."""
    for w in workers:
        try:
            if w.process.is_alive():
                w.conn.send(None)
        except (OSError, BrokenPipeError):
            pass
    deadline = time.monotonic() + 5
    for w in workers:
        w.process.join(timeout=max(0.0, deadline - time.monotonic()))
        if w.process.is_alive():
            w.process.terminate()
            w.process.join(timeout=5)
        w.conn.close()


def worker_main(conn, setup: WorkerSetup) -> None:
    """A worker: rebuild the run's cells once, then run the cell indices it is sent, one record back per cell."""
    import torch

    from harness.core import registry
    from harness.core.cell import expand
    from harness.core.context import RunContext
    from harness.core.runner import run_cell
    from harness.core.threads import thread_budget

    for module in setup.spec.plugins:
        registry.load_plugin_module(module)
    registry.load_all()
    cells = expand(setup.spec)
    device = torch.device(setup.device)
    data_cache: dict = {}
    memory_gb = getattr(setup.spec, "cell_memory_gb", None)
    if memory_gb:
        limit_address_space(memory_gb)
    while True:
        try:
            unit = conn.recv()
        except (EOFError, KeyboardInterrupt):
            return
        if unit is None:
            return
        if isinstance(unit, tuple):  # ("call", fn, args): work after the cells (map_on_workers)
            _, fn, args = unit
            try:
                conn.send(("result", -1, (True, fn(*args))))
            except Exception:  # noqa: BLE001 - the driver redoes the call and raises it there
                conn.send(("result", -1, (False, None)))
            continue
        for i in unit:
            cell = cells[i]
            ctx = RunContext(seed=cell.seed, device=device, cache_dir=setup.cache_dir, show_progress=False,
                             threads=setup.threads, executor=setup.executor,
                             allow_pickle_weights=setup.spec.allow_pickle_weights)
            conn.send(("start", i, None))
            with thread_budget(setup.threads):
                record = run_cell(cell, ctx, data_cache).to_dict()
            cell.method = None
            if memory_gb:
                record = memory_limit_reason(record, memory_gb)
            conn.send(("record", i, record))


def _address_space() -> int:
    """This process's virtual size in bytes (``VmSize``; 0 where /proc is absent)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def limit_address_space(gb: float) -> None:
    """``RLIMIT_AS`` of this process: its size now plus ``gb`` GiB (an allocation beyond fails)."""
    import resource

    limit = _address_space() + int(gb * 2**30)
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))


_MEMORY_ERRORS = ("MemoryError", "can't allocate memory", "Cannot allocate memory", "std::bad_alloc",
                  "out of memory")


def memory_limit_reason(record: dict, gb: float) -> dict:
    """An error record whose error is an allocation failure, its reason named: the cell exceeded the limit."""
    error = record.get("error") or ""
    if record.get("status") == "error" and any(m in error for m in _MEMORY_ERRORS):
        record = dict(record, error=f"CellMemoryLimit: the cell exceeded --cell-memory {gb:g} GB "
                                    f"(address space of its worker); {error}")
    return record
