"""Thread budgets: how many threads a cell may use, set for torch, OpenMP and BLAS alike.

Small models are fastest on one thread and, above all, robust to a busy machine: two threads of one
cell that wait for each other on oversubscribed cores stall the whole cell (measured on 2 cores: four
clustering cells took 18-21 s alone, 57 s beside one competing CPU-bound process with torch's default
2 threads). The policy: a cell gets ``free cores // concurrent cells`` threads, where the free cores are
the cores this process may use (its CPU affinity) less the processes already running elsewhere on the
machine (the kernel's count of runnable tasks, sampled when the run starts).
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Iterator

#: Environment variables that size OpenMP / BLAS thread pools when a library first loads (worker processes).
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
              "NUMEXPR_NUM_THREADS")


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS has one, else ``os.cpu_count()``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def busy_elsewhere(samples: int = 5, interval_s: float = 0.05) -> int:
    """Runnable processes on the machine besides this one: the median over a few samples of the kernel's
    count of runnable tasks (``/proc/loadavg``, Linux) less this process's own runnable threads (its
    OpenMP pool spins for a while after a parallel region: counting those once made a serial run on an
    idle 2-core machine take 1 thread); 0 where it cannot be read."""
    counts = []
    for i in range(samples):
        running = runnable_tasks()
        if running is None:
            return 0
        counts.append(max(0, running - own_runnable_threads()))
        if i + 1 < samples:
            time.sleep(interval_s)
    return sorted(counts)[len(counts) // 2]


def runnable_tasks() -> int | None:
    """The kernel's count of runnable tasks (threads) on the machine, this process's included; None off Linux."""
    try:
        with open("/proc/loadavg") as fh:
            return int(fh.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return None


def own_runnable_threads() -> int:
    """This process's threads in state R (running or runnable) now, at least 1 (the caller)."""
    n = 0
    try:
        names = os.listdir("/proc/self/task")
    except OSError:
        return 1
    for tid in names:
        try:
            with open(f"/proc/self/task/{tid}/stat") as fh:
                text = fh.read()
        except OSError:
            continue  # the thread ended
        n += text[text.rindex(")") + 2 : text.rindex(")") + 3] == "R"
    return max(1, n)


def free_cores() -> int:
    """Cores not taken by other running processes (at least 1)."""
    return max(1, available_cores() - busy_elsewhere())


def default_threads(concurrent_cells: int, free: int | None = None) -> int:
    """Threads per cell when ``concurrent_cells`` run at once: the free cores shared out, at least 1."""
    free = free_cores() if free is None else free
    return max(1, free // max(1, concurrent_cells))


def resolve_jobs(jobs: int | str) -> int:
    """``--jobs``: a positive int, or ``"auto"`` = the free cores."""
    if jobs == "auto":
        return free_cores()
    try:
        n = int(jobs)
    except (TypeError, ValueError):
        raise ValueError(f"--jobs must be a positive integer or 'auto', got {jobs!r}") from None
    if n < 1:
        raise ValueError(f"--jobs must be a positive integer or 'auto', got {jobs!r}")
    return n


def thread_env(n: int) -> dict[str, str]:
    """The environment that gives a new process ``n`` threads in every pool."""
    return {name: str(n) for name in THREAD_ENV}


@contextlib.contextmanager
def thread_budget(n: int) -> Iterator[None]:
    """Run the body with ``n`` threads in torch's intra-op pool and in every OpenMP / BLAS pool loaded."""
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        torch.set_num_threads(before)
