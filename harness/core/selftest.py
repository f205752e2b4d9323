"""``harness selftest``: every registered task x method, once, on tiny settings, on one device.

What a user runs first on a new machine (or a new GPU): each pair runs as a real cell (the same
:func:`~harness.core.cell.make_cell` and :func:`~harness.core.runner.run_cell` as ``harness run``, seed 0)
with the task's ``selftest`` config overrides and the method's ``selftest_params``, so that the whole
matrix takes about a minute.  No record is written; the cache is the user's (built models and gathered
activations are reused, as by ``harness run``).
The numbers mean nothing at these sizes: only ok / failed and the time are reported.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from harness.core import registry
from harness.core.cache import default_cache_dir
from harness.core.cell import make_cell
from harness.core.context import RunContext
from harness.core.runner import run_cell
from harness.core.threads import default_threads, thread_budget
from harness.core.seeding import resolve_device


@dataclass(frozen=True)
class SelftestResult:
    """One task x method pair: ``ok``, the one-line reason when not, and its seconds (build included)."""

    task: str
    method: str
    ok: bool
    reason: str
    seconds: float

    def line(self) -> str:
        state = "ok" if self.ok else f"FAILED: {self.reason}"
        return f"{self.task:32s} {self.method:20s} {self.seconds:6.2f} s  {state}"


def _pairs(tasks: Sequence[str] | None, methods: Sequence[str] | None) -> list[tuple[registry.Entry, registry.Entry]]:
    task_entries = [registry.get_task(n) for n in tasks] if tasks else [t for t in registry.tasks() if t.in_default_suite]
    wanted = {registry.get_method(n).name for n in methods} if methods else None
    pairs = []
    for t in task_entries:
        task = t.create()
        for m in registry.methods(t.family):
            chosen = (wanted is None and m.in_default_suite) or (wanted is not None and m.name in wanted)
            if chosen and task.accepts(m.cls) is None:  # a pair the task refuses is no cell of `harness run` either
                pairs.append((t, m))
    return pairs


def selftest(device: str | torch.device = "auto", tasks: Sequence[str] | None = None,
             methods: Sequence[str] | None = None,
             cache_dir: Path | None = None, report: Callable[[SelftestResult], None] | None = None,
             ) -> list[SelftestResult]:
    """Run every default-suite task x method of its family (or the ones named) once on ``device``.

    ``device``: ``auto``, ``cpu``, ``cuda`` (as ``--device``), or a ``torch.device`` used as it is (the
    tests run the matrix on a fake second device, ``tests/fake_device.py``).

    ``report`` is called with each result as soon as it is known (e.g. to print a line).
    """
    registry.load_all()
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    ctx = RunContext(seed=0, device=dev,
                     cache_dir=Path(cache_dir) if cache_dir else default_cache_dir(), show_progress=False)
    threads = default_threads(1)
    ctx = RunContext(seed=0, device=ctx.device, cache_dir=ctx.cache_dir, threads=threads)
    results: list[SelftestResult] = []
    data_cache: dict = {}
    tasks_made: dict[str, tuple] = {}
    for t, m in _pairs(tasks, methods):
        if t.name not in tasks_made:
            task = t.create()
            tasks_made[t.name] = (task, task.resolve_config(task.selftest))
        task, config = tasks_made[t.name]
        t0 = time.perf_counter()
        cell = make_cell(t, task, config, m, dict(m.cls.selftest_params), 0)
        with thread_budget(threads):  # as `harness run` does: the free cores, so a busy machine does not stall it
            record = run_cell(cell, ctx, data_cache)
        reason = record.error.strip().splitlines()[0] if record.error else ""
        result = SelftestResult(t.name, m.name, record.status == "ok", reason, time.perf_counter() - t0)
        results.append(result)
        if report:
            report(result)
    return results
