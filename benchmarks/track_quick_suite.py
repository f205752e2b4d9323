"""asv ``track_*`` benchmarks: the main metric of every (task, method) cell of the quick suite, per family.

One class per family; its ``setup_cache`` runs the family's quick-suite cells
(default-suite tasks x default methods, seed 0) once through the harness
runner, into a temporary results directory and the usual model / activation
cache (``HARNESS_CACHE``), and each parameter reads one cell's main metric.
A failed cell is reported as asv's failure (NaN), not a number.  Quality
metrics are deterministic for a given seed on a given machine, so a step in
this history is a change in the code, not noise.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

from harness.core import registry

FAMILIES = ("circuits", "clustering", "icl", "reconstruction")
#: Pinned asv versions (bump when the tracked cells change meaning, e.g. a new seed or config).
VERSION = "1"


def _quick_cells(family: str) -> list[str]:
    """``task|method`` labels of the quick suite's cells of a family (task names start with ``family/``),
    as the runner expands ``harness run --suite quick``."""
    from harness.core.cell import SUITES, RunSpec, expand

    registry.load_builtin()
    cells = expand(RunSpec(seeds=SUITES["quick"]))
    return [f"{c.task_entry.name}|{c.method_entry.name}" for c in cells if c.task_entry.family.split("-")[0] == family]


def _run_family(family: str) -> dict[str, float]:
    from harness.core.cell import SUITES, RunSpec
    from harness.core.runner import run

    tasks = sorted({c.split("|")[0] for c in _quick_cells(family)})
    with tempfile.TemporaryDirectory() as tmp:
        summary = run(RunSpec(tasks=tasks, seeds=SUITES["quick"], results_dir=Path(tmp), progress=False))
    return {f"{r['task']}|{r['method']}": (r["metrics"][r["main_metric"]] if r["status"] == "ok" else math.nan)
            for r in summary.records}


def _track_class(family: str) -> type:
    class Track:
        params = _quick_cells(family)
        param_names = ["task|method"]
        version = VERSION
        timeout = 1800.0
        unit = "main metric"

        def setup_cache(self) -> dict[str, float]:
            return _run_family(family)

        def track(self, results: dict[str, float], cell: str) -> float:
            return results.get(cell, math.nan)

    setattr(Track, f"track_{family}", Track.track)
    del Track.track
    Track.__name__ = Track.__qualname__ = f"Track{family.title()}"
    Track.__doc__ = f"Main metric of the {family} family's quick-suite cells (seed 0)."
    return Track


for _family in FAMILIES:
    _cls = _track_class(_family)
    globals()[_cls.__name__] = _cls
