"""Cells in worker processes on this machine: ``harness run --jobs N``.

The driver (:func:`harness.core.runner.run`) decides which cells to run; this module runs them in ``N``
long-lived worker processes (``spawn``: no state inherited from the driver's threads). Cells that
share built data (same task, task config and seed) form one *unit*, sent to one worker, which builds
the data once; units go out largest expected first (the wall time of the same task and method in
earlier records of the results directory), so a long cell does not start last. Each worker sends
back one record per cell; the driver writes them (one writer), so the store, the progress bar, the
resume logic and the exit codes are those of a serial run. A worker that dies (a segfault, the OOM
killer, ``os._exit`` in a method) costs an error record for the cell it was running, naming the exit
code; a new worker takes the rest of its unit. Each worker's thread budget is set in its environment
before torch loads and again per cell (:func:`harness.core.threads.thread_budget`).

Only the standard library is imported at module level: a worker sets its thread environment before
anything imports torch.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from harness.core.cell import Cell, RunSpec

#: deliver(cell index, record dict): the driver's one writer
Deliver = Callable[[int, dict], None]


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
                   fail: Callable[[int, str], None]) -> None:
    """Run ``units`` in ``jobs`` worker processes; ``deliver`` each record, ``fail(i, why)`` a cell whose worker died."""
    ctx = mp.get_context("spawn")
    pending = deque(deque(u) for u in units)
    workers: list[_Worker] = []
    try:
        for _ in range(min(jobs, len(pending))):
            workers.append(_start(ctx, setup))
        for w in workers:
            _assign(w, pending)
        while any(w.unit for w in workers):
            busy = [w for w in workers if w.unit]
            ready = wait([w.conn for w in busy] + [w.process.sentinel for w in busy])
            for w in busy:
                if w.conn in ready and _receive(w, deliver):
                    continue
                if w.process.sentinel in ready or not w.process.is_alive():
                    _replace_dead(w, workers, ctx, setup, fail, pending)
            for w in workers:
                if not w.unit:
                    _assign(w, pending)
    finally:
        for w in workers:
            _stop(w)


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


def _assign(w: _Worker, pending: deque) -> None:
    if pending and w.process.is_alive():
        w.unit = pending.popleft()
        w.conn.send(list(w.unit))


def _receive(w: _Worker, deliver: Deliver) -> bool:
    """Handle one message; False when the pipe broke (the worker died)."""
    try:
        kind, index, record = w.conn.recv()
    except (EOFError, OSError):
        return False
    if kind == "record":
        deliver(index, record)
        if w.unit and w.unit[0] == index:
            w.unit.popleft()
    return True


def _replace_dead(w: _Worker, workers: list[_Worker], ctx, setup: WorkerSetup,
                  fail: Callable[[int, str], None], pending: deque) -> None:
    """Record the cell a dead worker was running as failed, queue the rest of its unit, start a new worker."""
    w.process.join(timeout=5)
    code = w.process.exitcode
    if w.unit:
        fail(w.unit.popleft(), f"WorkerDied: the worker process running this cell exited with code {code} "
                               "(a crash, the OOM killer or os._exit in the method); the run went on")
        if w.unit:
            pending.appendleft(w.unit)
    w.unit = deque()
    workers[workers.index(w)] = _start(ctx, setup)


def _stop(w: _Worker) -> None:
    try:
        if w.process.is_alive():
            w.conn.send(None)
            w.process.join(timeout=5)
    except (OSError, BrokenPipeError):
        pass
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
    while True:
        try:
            unit = conn.recv()
        except (EOFError, KeyboardInterrupt):
            return
        if unit is None:
            return
        for i in unit:
            cell = cells[i]
            ctx = RunContext(seed=cell.seed, device=device, cache_dir=setup.cache_dir, show_progress=False,
                             threads=setup.threads, executor=setup.executor)
            with thread_budget(setup.threads):
                record = run_cell(cell, ctx, data_cache).to_dict()
            cell.method = None
            conn.send(("record", i, record))
