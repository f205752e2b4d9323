"""Leaderboard: per task, methods ranked by the main metric with 95% CIs over seeds."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
from tabulate import tabulate

from harness.core import registry
from harness.errors import UnknownNameError
from harness.core.io import atomic_write_text
from harness.report.grouping import group
from harness.report.stats import mean_ci, separated_levels


@dataclass
class Row:
    method: str
    method_version: str
    baseline: bool
    seeds: list[int]
    main: tuple[float, float]  # mean, CI half-width
    metrics: dict[str, float]
    wall_s: float
    peak_rss_mb: float
    commit: str | None
    dirty: bool | None


@dataclass
class Table:
    task: str
    task_version: str
    model: str
    task_config: str
    main_metric: str
    higher_is_better: bool
    metric_names: list[str]
    rows: list[Row] = field(default_factory=list)

    @property
    def direction_label(self) -> str:
        return "higher is better" if self.higher_is_better else "lower is better"

    @property
    def title(self) -> str:
        model = "" if self.model == "-" else f", model {self.model}"
        return f"{self.task} (v{self.task_version}{model}, task config {self.task_config[:8]})"


#: How every leaderboard table (Markdown, HTML) explains its cells.
CELLS_CAPTION = "mean over seeds ± half-width of the 95% t interval; wall s = method time per cell"


def shown_metrics(task: str, names: list[str]) -> list[str]:
    """The metric columns of ``task``'s Markdown / HTML table: its ``leaderboard_metrics`` that were
    recorded, in that order; all recorded metrics for tasks that choose none or are unregistered."""
    try:
        chosen = registry.get_task(task).create().leaderboard_metrics
    except UnknownNameError:
        return list(names)
    return list(names) if chosen is None else [m for m in chosen if m in names]


def commit_label(row: Row) -> str:
    """The code a row ran: the commit's first 10 hex digits, ``+dirty`` for uncommitted changes."""
    return (row.commit or "unknown")[:10] + ("+dirty" if row.dirty else "")


def separation(table: Table) -> str:
    """A sentence on how many levels ``table``'s ranking has beyond its 95% CIs (:func:`separated_levels`), naming
    one method per level; empty when fewer than two rows have a CI."""
    if sum(1 for r in table.rows if not math.isnan(r.main[1])) < 2:
        return ""
    levels = separated_levels([r.main for r in table.rows])
    names = ", ".join(f"{table.rows[i].method} {_fmt(table.rows[i].main[0])}" for i in levels)
    return f"CI-separated levels: {len(levels)} (methods whose 95% CIs are pairwise disjoint, e.g. {names})"


def hidden_metrics(table: Table) -> list[str]:
    """Recorded metrics of ``table`` that its Markdown / HTML table does not show (the CSV has them all)."""
    shown = set(shown_metrics(table.task, table.metric_names)) | {table.main_metric}
    return [m for m in table.metric_names if m not in shown]


def direction(task: str, metric: str) -> bool:
    """True when higher is better; metrics of unregistered tasks are assumed higher-is-better."""
    try:
        task_obj = registry.get_task(task).create()
    except UnknownNameError:
        return True
    try:
        return task_obj.metric_spec(metric).higher_is_better
    except KeyError:
        return True


def build_tables(records: Iterable[dict[str, Any]]) -> list[Table]:
    tables = []
    for (task, version, model, tcfg), rows in group(records).items():
        first = next(iter(rows.values()))[0]
        main = first["main_metric"]
        hib = direction(task, main)
        names: list[str] = []
        table = Table(task, version, model, tcfg, main, hib, names)
        for (label, mversion, _), recs in rows.items():
            for r in recs:
                names.extend(k for k in r["metrics"] if k not in names)
            means = {k: mean_ci([r["metrics"][k] for r in recs if k in r["metrics"]])[0] for k in names}
            prov = recs[-1]["provenance"]
            table.rows.append(Row(
                method=label, method_version=mversion, baseline=recs[0]["baseline"],
                seeds=[r["seed"] for r in recs], main=mean_ci([r["metrics"][main] for r in recs]),
                metrics=means, wall_s=mean_ci([r["timings"]["wall_s"] for r in recs])[0],
                peak_rss_mb=max(r["timings"]["peak_rss_mb"] for r in recs),
                commit=prov.get("commit"), dirty=prov.get("dirty"),
            ))
        table.rows.sort(key=lambda row: -row.main[0] if hib else row.main[0])
        tables.append(table)
    return tables


def _fmt(x: float, digits: int = 3) -> str:
    return "—" if math.isnan(x) else f"{x:.{digits}f}"


def table_frame(table: Table) -> pd.DataFrame:
    """One table as a DataFrame of formatted cells (rank, method, main ± CI, metrics, runtime)."""
    rows = []
    others = [m for m in shown_metrics(table.task, table.metric_names) if m != table.main_metric]
    for rank, row in enumerate(table.rows, 1):
        mean, half = row.main
        cells = {
            "rank": rank,
            "method": row.method + (" (baseline)" if row.baseline else ""),
            f"{table.main_metric} (95% CI)": f"{_fmt(mean)} ± {_fmt(half)}",
        }
        cells.update({m: _fmt(row.metrics.get(m, math.nan)) for m in others})
        cells.update({"seeds": len(row.seeds), "wall s": _fmt(row.wall_s, 2), "peak MiB": f"{row.peak_rss_mb:.0f}",
                      "version": row.method_version})
        rows.append(cells)
    return pd.DataFrame(rows)


def render_markdown(tables: list[Table], plots: list[Path] | None = None, base: Path | None = None) -> str:
    """Markdown of every table; ``plots`` (PNG paths) are linked relative to ``base``."""
    out = io.StringIO()
    out.write("# Leaderboard\n\n")
    if not tables:
        out.write("No results yet: run `harness run`.\n")
    for table in tables:
        out.write(f"## {table.title}\n\nRanked by `{table.main_metric}` ({table.direction_label}); "
                  f"{CELLS_CAPTION}.\n\n")
        levels = separation(table)
        if levels:
            out.write(levels + ".\n\n")
        out.write(tabulate(table_frame(table), headers="keys", tablefmt="github", showindex=False))
        commits = {commit_label(r) for r in table.rows}
        out.write(f"\n\nCode: {', '.join(sorted(commits))}")
        hidden = len(hidden_metrics(table))
        if hidden > 0:
            out.write(f". {hidden} more metrics per row: `harness leaderboard --format csv`")
        out.write("\n\n")
    if plots:
        out.write("## Plots\n\n")
        for p in plots:
            rel = Path(p).relative_to(base) if base and Path(p).is_relative_to(base) else Path(p)
            out.write(f"![{Path(p).stem}]({rel.as_posix()})\n\n")
    return out.getvalue()


def render_csv(tables: list[Table]) -> str:
    frames = []
    for table in tables:
        for rank, row in enumerate(table.rows, 1):
            frames.append({
                "task": table.task, "task_version": table.task_version, "model": table.model,
                "rank": rank, "method": row.method, "method_version": row.method_version,
                "baseline": row.baseline, "n_seeds": len(row.seeds), "main_metric": table.main_metric,
                "main_mean": row.main[0], "main_ci95": row.main[1],
                **{f"mean_{k}": v for k, v in row.metrics.items()},
                "wall_s": row.wall_s, "peak_rss_mb": row.peak_rss_mb, "commit": row.commit,
            })
    return pd.DataFrame(frames).to_csv(index=False)


def write_leaderboard(tables: list[Table], path: Path, fmt: str = "md", plots: list[Path] | None = None) -> Path:
    """Write the leaderboard atomically (markdown or csv) and return the path."""
    path = Path(path)
    text = render_markdown(tables, plots, path.parent) if fmt == "md" else render_csv(tables)
    return atomic_write_text(path, text)
