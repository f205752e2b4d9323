"""Plots written next to the leaderboard: each family registers a plotter over its records.

A plotter is ``fn(records: list[dict], out_dir: Path) -> list[Path]`` (PNG files).
Plotters run with matplotlib's Agg backend; one that fails is reported and
skipped, never taking the leaderboard down.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

from harness.core.io import temp_path_beside

Plotter = Callable[[list[dict[str, Any]], Path], list[Path]]
_PLOTTERS: dict[str, Plotter] = {}


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


def register_plotter(family: str, fn: Plotter) -> Plotter:
    _PLOTTERS[family] = fn
    return fn


def write_plots(records: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Run every family's plotter on its ok records; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    written: list[Path] = []
    for family, fn in sorted(_PLOTTERS.items()):
        mine = [r for r in records if r["family"] == family and r["status"] == "ok"]
        if not mine:
            continue
        try:
            written.extend(fn(mine, Path(out_dir)))
        except Exception as exc:  # noqa: BLE001 - a broken plot must not lose the tables
            print(f"warning: {family} plots failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    return written


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
