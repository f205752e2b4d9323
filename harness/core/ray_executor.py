"""Cells as Ray tasks: ``harness run --executor ray [--ray-address ADDR]``.

Each unit of cells sharing built data (:func:`harness.core.parallel.units_of`) is one Ray task that
declares its resources (``threads`` CPUs; a share of a GPU for CUDA runs) and is retried on worker loss
(``max_retries``). The task returns its records to the driver, which writes them: a cluster needs no
shared filesystem for results (each node builds or finds the embedded models in its own cache). A unit
whose retries are spent is split into single-cell tasks, so a cell that kills its worker every time
costs an error record for that cell alone.

Without an address a local cluster is started on this machine, bound to the loopback interface only:
Ray is imported with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (its single-node mode, in which the node
address resolves to 127.0.0.1 and every server binds there; without it Ray resolves 127.0.0.1 to the
machine's routable address and several servers listen on all interfaces), no dashboard, no usage
statistics. With ``--ray-address auto`` or ``HOST:PORT`` the driver joins a cluster started with
``ray start`` (README, "Running on a Ray cluster").
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Sequence

from harness.core.parallel import WorkerSetup
from harness.errors import HarnessError

INSTALL_HINT = "pip install 'interp-harness[ray]'  (from a checkout: pip install -e '.[ray]')"
#: GPU share of one CUDA cell: the harness's cells are small, several share a GPU
GPU_PER_CELL = 0.25
MAX_RETRIES = 2
_CELLS: dict[int, list] = {}  # per Ray worker process: the run's cells, expanded once per run spec


def import_ray(local: bool):
    """``ray``, imported for a loopback-only local cluster when ``local``; HarnessError with the install command.

    Ray reads ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` when it is first imported: a process that imported Ray
    before (and did not set it) gets a local cluster on its routable address, so this refuses to start one.
    """
    if local:
        if "ray" in sys.modules and os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") != "0":
            raise HarnessError("Ray was imported before the harness could bind its local cluster to 127.0.0.1: set "
                               "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before importing ray, or pass --ray-address")
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError:
        raise HarnessError(f"--executor ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def start(address: str | None, num_cpus: int | None = None):
    """Connect to the cluster at ``address``, or start a local one bound to 127.0.0.1; returns ``ray``."""
    ray = import_ray(local=address is None)
    if not ray.is_initialized():
        if address is None:
            ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, num_cpus=num_cpus,
                     log_to_driver=False, configure_logging=False)
        else:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
    return ray


def run_on_ray(setup: WorkerSetup, units: list[list[int]], address: str | None,
               deliver: Callable[[int, dict], None], fail: Callable[[int, str], None]) -> None:
    """Run ``units`` as Ray tasks; ``deliver`` each returned record, ``fail`` cells whose tasks could not finish."""
    ray = start(address, num_cpus=None)
    gpus = GPU_PER_CELL if setup.device.startswith("cuda") else 0
    remote = ray.remote(_run_unit).options(num_cpus=setup.threads, num_gpus=gpus, max_retries=MAX_RETRIES)
    single = ray.remote(_run_unit).options(num_cpus=setup.threads, num_gpus=gpus, max_retries=0)
    refs = {remote.remote(setup, unit): (unit, True) for unit in units}
    while refs:
        (ref,), _ = ray.wait(list(refs), num_returns=1)
        unit, splittable = refs.pop(ref)
        try:
            for index, record in ray.get(ref):
                deliver(index, record)
        except ray.exceptions.RayError as exc:
            if splittable and len(unit) > 1:  # find the cell that fails: one task per cell, no retries
                refs.update({single.remote(setup, [i]): ([i], False) for i in unit})
                continue
            why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'Ray task failed'}"
            for i in unit:
                fail(i, f"{why} (Ray task failed after {MAX_RETRIES} retries)")


def _run_unit(setup: WorkerSetup, unit: Sequence[int]) -> list[tuple[int, dict[str, Any]]]:
    """In a Ray worker: run the cells ``unit`` of ``setup.spec`` and return ``[(index, record dict)]``."""
    import torch

    from harness.core import registry
    from harness.core.cell import expand
    from harness.core.context import RunContext
    from harness.core.runner import run_cell
    from harness.core.threads import thread_budget

    key = hash(repr(setup.spec))
    if key not in _CELLS:
        sys.path.extend(p for p in setup.paths if p not in sys.path and os.path.isdir(p))
        for module in setup.spec.plugins:
            registry.load_plugin_module(module)
        registry.load_all()
        _CELLS.clear()
        _CELLS[key] = expand(setup.spec)
    cells = _CELLS[key]
    data_cache: dict = {}
    out = []
    for i in unit:
        ctx = RunContext(seed=cells[i].seed, device=torch.device(setup.device), cache_dir=setup.cache_dir,
                         threads=setup.threads, executor=setup.executor,
                         allow_pickle_weights=setup.spec.allow_pickle_weights)
        with thread_budget(setup.threads):
            out.append((i, run_cell(cells[i], ctx, data_cache).to_dict()))
        cells[i].method = None
    return out
