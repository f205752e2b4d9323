"""Plots written next to the leaderboard: each family registers a plotter over its records.

A plotter is ``fn(records: list[dict], out_dir: Path) -> list[Path]`` (PNG files).
Plotters run with matplotlib's Agg backend; one that fails is reported and
skipped, never taking the leaderboard down.

The plots of a run are cut into independent :class:`PlotJob` s (one per leaderboard table's
main-metric figure, one per family, or per family and task for plotters registered ``per_task``), so
that ``harness run --jobs N`` renders them in its worker processes (which already hold every module)
instead of one after another in the driver; :func:`render_plots` gives the same files, in the same
order, whether the jobs run here or there.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from harness.core.io import temp_path_beside
from harness.core.parallel import MapCalls, map_here

Plotter = Callable[[list[dict[str, Any]], Path], list[Path]]
_PLOTTERS: dict[str, Plotter] = {}
#: families whose plotter draws each task on its own figures, so it may run on one task's records at a time
_PER_TASK: set[str] = set()


def file_slug(text: str) -> str:
    """``text`` as a file-name part: letters, digits, ``-`` and ``_`` kept, everything else ``_``."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


def save_figure(fig: Any, path: str | Path) -> Path:
    """Lay out ``fig``, write it to ``path`` as a 110-dpi PNG (via a temporary file, so a crash never leaves a
    half-written image) and close it; returns the path."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    tmp = temp_path_beside(path, ".png")  # unique: two runs may write the same plot at once
    try:
        fig.savefig(tmp, dpi=110)
        tmp.replace(path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def register_plotter(family: str, fn: Plotter, per_task: bool = False) -> Plotter:
    """Register ``fn`` as ``family``'s plotter; ``per_task``: its figures are per task (never across tasks),
    so it may be called on each task's records separately (in parallel under ``--jobs``)."""
    _PLOTTERS[family] = fn
    (_PER_TASK.add if per_task else _PER_TASK.discard)(family)
    return fn


@dataclass(frozen=True)
class PlotJob:
    """One independent part of the plots: the main-metric figures of ``tables`` (``family`` None), or
    ``family``'s plotter on ``records`` (its ok records, or one task's of them)."""

    family: str | None
    tables: tuple = ()
    records: tuple = ()


def plot_jobs(tables: Sequence, records: Sequence[dict[str, Any]]) -> list[PlotJob]:
    """The plots of ``tables`` and ``records`` as independent jobs, in the order their files are listed:
    each table's main-metric figure, then each family (by name), per task (by name) where it allows."""
    jobs = [PlotJob(None, tables=(t,)) for t in tables]
    for family in sorted(_PLOTTERS):
        mine = [r for r in records if r["family"] == family and r["status"] == "ok"]
        if not mine:
            continue
        if family in _PER_TASK:
            for task in sorted({r["task"] for r in mine}):
                jobs.append(PlotJob(family, records=tuple(r for r in mine if r["task"] == task)))
        else:
            jobs.append(PlotJob(family, records=tuple(mine)))
    return jobs


def render_plot_job(job: PlotJob, out_dir: Path) -> tuple[list[Path], str | None]:
    """Draw one job's figures into ``out_dir``: ``(files written, warning or None)``; a plotter that
    raises gives a warning, never an exception (a broken plot must not lose the tables)."""
    import matplotlib

    matplotlib.use("Agg")
    if job.family is None:
        return plot_main_metric(list(job.tables), Path(out_dir)), None
    try:
        return _PLOTTERS[job.family](list(job.records), Path(out_dir)), None
    except Exception as exc:  # noqa: BLE001 - reported by the caller, the other plots go on
        return [], f"warning: {job.family} plots failed: {type(exc).__name__}: {exc}"


def render_plots(jobs: Sequence[PlotJob], out_dir: Path, map_calls: MapCalls | None = None) -> list[Path]:
    """Render ``jobs`` (here, or through ``map_calls``: e.g. a run's worker processes); the files written,
    in job order, whichever way they ran. Warnings of failed plotters go to stderr."""
    written: list[Path] = []
    for paths, warning in (map_calls or map_here)(render_plot_job, [(job, Path(out_dir)) for job in jobs]):
        if warning:
            print(warning, file=sys.stderr)
        written.extend(paths)
    return written


def write_plots(records: list[dict[str, Any]], out_dir: Path, map_calls: MapCalls | None = None) -> list[Path]:
    """Run every family's plotter on its ok records; returns the files written."""
    return render_plots(plot_jobs([], records), out_dir, map_calls)


def plot_main_metric(tables: list, out_dir: Path) -> list[Path]:
    """One PNG per leaderboard table: the main metric per method, mean with 95% CI, baselines grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for t in tables:
        rows = list(reversed(t.rows))  # best at the top
        means = np.array([r.main[0] for r in rows])
        halves = np.nan_to_num(np.array([r.main[1] for r in rows]))
        fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(rows) + 1.2))
        colors = ["#9e9e9e" if r.baseline else "#1f77b4" for r in rows]
        ax.barh(range(len(rows)), means, xerr=halves, color=colors, capsize=3)
        ax.set_yticks(range(len(rows)), [r.method for r in rows], fontsize=8)
        ax.set_xlabel(f"{t.main_metric} ({t.direction_label}); bars: mean, whiskers: 95% CI; grey = baseline", fontsize=8)
        ax.set_title(t.title, fontsize=9)
        written.append(save_figure(fig, out_dir / f"main-{file_slug(f'{t.task}-{t.task_config[:8]}')}.png"))
    return written
