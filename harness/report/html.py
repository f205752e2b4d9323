"""The leaderboard as one self-contained HTML page: tables, plots and benchmark history.

The page needs no network to be viewed: CSS is inline, plots are embedded as
base64 ``data:`` URIs, history charts are inline SVG, and there is no script.
Every table cell comes from :func:`harness.report.leaderboard.table_frame`, so a
metric is formatted in one place for the Markdown, CSV and HTML leaderboards.
Every piece of text from records (task, method and metric names, provenance)
goes through :func:`html.escape`.
"""

from __future__ import annotations

import base64
import html
import itertools
import json
import math
import re
import struct
import sys
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from harness.core.io import atomic_write_text
from harness.report.leaderboard import CELLS_CAPTION, Row, Table, commit_label, hidden_metrics, separation, table_frame
from harness.report.plots import file_slug

DEFAULT_ASV_RESULTS = Path("results/asv/results")
ASV_COMMAND = "asv run --python=same --quick --set-commit-hash $(git rev-parse HEAD)"
_ASV_SKIP = {"machine.json", "benchmarks.json"}
_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml",
         ".gif": "image/gif", ".webp": "image/webp"}

HistoryPoint = tuple[str, float, float]  # commit hash, date (ms since the epoch, as asv stores it), value
History = Mapping[str, Sequence[HistoryPoint]]

_CSS = """
:root { --fg: #1d2125; --muted: #5f6b76; --line: #d8dee4; --head: #f3f5f7; --accent: #1f6feb; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); }
header, main { max-width: 1200px; margin: 0 auto; padding: 0 20px; }
header { padding-top: 16px; }
h1 { font-size: 24px; margin: 8px 0 4px; }
h2 { font-size: 20px; margin: 32px 0 8px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 16px; margin: 20px 0 4px; }
a { color: var(--accent); }
code { font: 12px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: var(--head);
       padding: 1px 4px; border-radius: 3px; }
.generated, .caption, .note { color: var(--muted); margin: 4px 0; }
code.cmd { white-space: nowrap; }
nav.toc { margin: 12px 0; }
nav.toc ul { margin: 2px 0; padding-left: 20px; }
nav.toc > ul { columns: 2 260px; padding-left: 16px; }
nav.toc li { break-inside: avoid; }
.scroll { overflow-x: auto; width: fit-content; max-width: 100%; border: 1px solid var(--line); border-radius: 4px;
           /* shadows at an edge with more columns behind it (the covers scroll with the table) */
           background: linear-gradient(to right, #fff 30%, #fff0) left / 40px 100% no-repeat local,
                       linear-gradient(to left, #fff 30%, #fff0) right / 40px 100% no-repeat local,
                       radial-gradient(farthest-side at 0 50%, #0003, #0000) left / 14px 100% no-repeat scroll,
                       radial-gradient(farthest-side at 100% 50%, #0003, #0000) right / 14px 100% no-repeat scroll; }
table.leaderboard { border-collapse: collapse; white-space: nowrap; font-size: 13px; }
table.leaderboard th, table.leaderboard td { padding: 4px 10px; border-bottom: 1px solid var(--line);
                                             text-align: right; vertical-align: top; }
table.leaderboard th { background: var(--head); font-weight: 600; }
table.leaderboard th.text, table.leaderboard td.text { text-align: left; }
table.leaderboard td.main { font-weight: 600; }
table.leaderboard tbody tr:hover { background: #f6f8fa; }
tr.baseline td { color: #6e7781; font-style: italic; }
tr.baseline td.main { font-weight: normal; }
.badge { display: inline-block; margin-left: 6px; padding: 0 6px; border-radius: 8px; font-size: 11px;
         font-style: normal; color: #57606a; background: #eaeef2; border: 1px solid #d0d7de; }
details summary { cursor: pointer; color: var(--accent); }
td.prov summary { font: 12px ui-monospace, Menlo, Consolas, monospace; }
details.hidden-metrics { color: var(--muted); margin: 0 0 6px; }
details.hidden-metrics p { margin: 4px 0 0 16px; line-height: 1.7; }
details dl { margin: 4px 0 2px; display: grid; grid-template-columns: auto auto; gap: 0 8px; text-align: left;
             font-style: normal; }
details dt { color: var(--muted); }
details dd { margin: 0; font-family: ui-monospace, Menlo, Consolas, monospace; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(min(100%, 480px), 1fr)); gap: 16px;
         align-items: start; }
figure { margin: 8px 0; max-width: 100%; min-width: 0; }
figure.wide { grid-column: 1 / -1; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: 12px; }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr)); gap: 16px; }
svg.history { width: 100%; height: auto; max-width: 640px; }
svg.history .line { fill: none; stroke: var(--accent); stroke-width: 1.5; }
svg.history circle { fill: var(--accent); }
ul.legend { list-style: none; padding: 0; margin: 4px 0 0; columns: 2 200px; font-size: 12px; }
ul.legend .swatch { display: inline-block; width: 10px; height: 10px; margin-right: 5px; border-radius: 2px; }
.changed { color: #b35900; font-weight: 600; }
svg.history .axis { stroke: #8c959f; stroke-width: 1; }
svg.history text { font-size: 11px; fill: var(--muted); }
"""


def _e(text: Any) -> str:
    """HTML-escape ``text`` (quotes too, so the result is safe inside attributes)."""
    return html.escape(str(text), quote=True)




def family_of(task: str) -> str:
    """The family of a task: its name up to the first ``/``."""
    return task.split("/", 1)[0]


def plot_family(path: Path, families: Iterable[str]) -> str | None:
    """The family a plot file belongs to, from its name: ``main-<family>_...`` (the main-metric plots)
    or ``<family>`` followed by a non-alphanumeric character (the family plotters); None if no family matches."""
    name = Path(path).name
    for family in sorted(families, key=len, reverse=True):  # longest first: "icl2" before "icl"
        slug = file_slug(family)
        if name.startswith(f"main-{slug}_"):
            return family
        if name.startswith(slug) and not name[len(slug):len(slug) + 1].isalnum():
            return family
    return None


def data_uri(path: Path) -> str:
    """The file as a base64 ``data:`` URI (its MIME type from the suffix)."""
    path = Path(path)
    mime = _MIME.get(path.suffix.lower(), "application/octet-stream")
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


# ---------------------------------------------------------------- tables
def _provenance(row: Row) -> list[tuple[str, str]]:
    """(label, value) pairs saying which code, method version and seeds produced a row."""
    dirty = {True: "yes (uncommitted changes)", False: "no", None: "unknown"}[row.dirty]
    return [("commit", row.commit or "unknown"), ("dirty", dirty), ("method version", row.method_version),
            ("seeds", ", ".join(str(s) for s in row.seeds))]


def _provenance_cell(row: Row) -> str:
    """An expandable ``<details>`` cell: the commit label as summary, every provenance field inside."""
    items = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in _provenance(row))
    return f'<td class="text prov"><details><summary>{_e(commit_label(row))}</summary><dl>{items}</dl></details></td>'


def _method_cell(row: Row) -> str:
    badge = ' <span class="badge">baseline</span>' if row.baseline else ""
    return f'<td class="text method">{_e(row.method)}{badge}</td>'


def table_html(table: Table) -> str:
    """One leaderboard table as HTML: the cells of :func:`table_frame`, a baseline badge instead of the
    ``(baseline)`` suffix, and per row a hover title and an expandable cell with its provenance."""
    frame = table_frame(table)
    main_col = f"{table.main_metric} (95% CI)"
    head = "".join(f'<th scope="col" class="{"text" if c == "method" else "num"}">{_e(c)}</th>' for c in frame.columns)
    head += '<th scope="col" class="text">provenance</th>'
    body = []
    for cells, row in zip(frame.to_dict("records"), table.rows):
        tds = []
        for col, value in cells.items():
            if col == "method":
                tds.append(_method_cell(row))
            else:
                tds.append(f'<td class="{"main" if col == main_col else "num"}">{_e(value)}</td>')
        tds.append(_provenance_cell(row))
        title = "; ".join(f"{k}: {v}" for k, v in _provenance(row))
        cls = ' class="baseline"' if row.baseline else ""
        body.append(f'<tr{cls} title="{_e(title)}">{"".join(tds)}</tr>')
    return (f'<div class="scroll"><table class="leaderboard"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def _caption(table: Table) -> str:
    text = (f"Ranked by <code>{_e(table.main_metric)}</code> ({table.direction_label}); {_e(CELLS_CAPTION)}; "
            "hover a row or open its provenance for the code that produced it.")
    out = f'<p class="caption">{text}</p>'
    levels = separation(table)
    if levels:
        out += f'<p class="caption">{_e(levels)}.</p>'
    hidden = hidden_metrics(table)
    if hidden:
        names = " ".join(f"<code>{_e(m)}</code>" for m in hidden)
        out += (f'<details class="hidden-metrics"><summary>{len(hidden)} more metrics per row</summary>'
                f"<p>{names}: <code>harness leaderboard --format csv</code> has their values.</p></details>")
    return out


def _task_section(table: Table, anchor: str) -> str:
    return (f'<section class="task" id="{_e(anchor)}"><h3>{_e(table.title)}</h3>'
            f'{_caption(table)}{table_html(table)}</section>')


# ---------------------------------------------------------------- plots
def png_size(path: Path) -> tuple[int, int] | None:
    """(width, height) in pixels from a PNG's header; None for other files."""
    with open(path, "rb") as fh:
        head = fh.read(24)
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", head[16:24])


def _figure(path: Path) -> str:
    """An embedded image; one wider than two grid columns spans the whole row."""
    path = Path(path)
    alt = path.stem.replace("_", " ").replace("-", " ")
    size = png_size(path)
    dims = f' width="{size[0]}" height="{size[1]}"' if size else ""
    wide = ' class="wide"' if size and size[0] > 900 else ""
    return (f'<figure{wide}><img src="{data_uri(path)}" alt="{_e(alt)}"{dims}>'
            f'<figcaption>{_e(path.name)}</figcaption></figure>')


def _plots_block(paths: Sequence[Path], heading: str = "Plots") -> str:
    if not paths:
        return ""
    head = f"<h3>{_e(heading)}</h3>" if heading else ""
    return f'{head}<div class="plots">{"".join(_figure(p) for p in paths)}</div>'


# ---------------------------------------------------------------- history
def _fmt_value(v: float) -> str:
    return f"{v:.4g}"


def _fmt_date(ms: float) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d")


_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
            "#17becf")
_CELL_PARAM = re.compile(r"^(?P<bench>.*)\('(?P<task>[^'|]+)\|(?P<method>[^']+)'\)$")


def chart_of(series: str) -> tuple[str, str]:
    """(chart, line) of a history series: ``track_x('task|method')`` (one quick-suite cell) is drawn as line
    ``method`` in the chart ``track_x('task')``; any other series is a chart of its own with one line."""
    m = _CELL_PARAM.match(series)
    if m is None:
        return series, series
    return f"{m['bench']}('{m['task']}')", m["method"]


def history_svg(name: str, lines: Mapping[str, Sequence[HistoryPoint]], width: int = 640, height: int = 200) -> str:
    """An inline SVG line chart: x = commit order (the union of the lines' commits, by date), y = value, one
    coloured polyline per line; each point's ``<title>`` (shown on hover) gives the line, short hash, commit
    date and value.  ``lines`` maps line names to points; a line named like the chart gets no name prefix."""
    left, right, top, bottom = 64, 16, 12, 30
    commits = sorted({(d, c) for pts in lines.values() for c, d, _ in pts})
    order = {c: i for i, (_, c) in enumerate(commits)}
    values = [v for pts in lines.values() for _, _, v in pts]
    lo, hi = min(values), max(values)
    if hi == lo:
        pad = abs(hi) * 0.05 or 1.0
        lo, hi = lo - pad, hi + pad
    n = len(commits)

    def x(i: int) -> float:
        return left + (width - left - right) * (0.5 if n == 1 else i / (n - 1))

    def y(v: float) -> float:
        return top + (height - top - bottom) * (hi - v) / (hi - lo)

    body = []
    for k, (line_name, pts) in enumerate(lines.items()):
        color = _PALETTE[k % len(_PALETTE)]
        coords = [(x(order[c]), y(v)) for c, _, v in pts]
        label = "" if line_name == name else f"{_e(line_name)} · "
        body.append(f'<polyline class="line" style="stroke:{color}" points="'
                    + " ".join(f"{a:.1f},{b:.1f}" for a, b in coords) + '"/>')
        body.extend(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3.5" style="fill:{color}"><title>{label}{_e(c[:8])} · '
                    f'{_fmt_date(d)} · {_e(_fmt_value(v))}</title></circle>' for (a, b), (c, d, v) in zip(coords, pts))
    axes = (f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}"/>'
            f'<line class="axis" x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}"/>')
    labels = (f'<text x="{left - 6}" y="{top + 4}" text-anchor="end">{_e(_fmt_value(hi))}</text>'
              f'<text x="{left - 6}" y="{height - bottom}" text-anchor="end">{_e(_fmt_value(lo))}</text>'
              f'<text x="{x(0):.1f}" y="{height - 10}" text-anchor="{"middle" if n == 1 else "start"}">'
              f'{_e(commits[0][1][:8])}</text>')
    if n > 1:
        labels += f'<text x="{x(n - 1):.1f}" y="{height - 10}" text-anchor="end">{_e(commits[-1][1][:8])}</text>'
    return (f'<svg class="history" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="{_e(name)}: {n} commits">{axes}{labels}{"".join(body)}</svg>')


def _legend(lines: Mapping[str, Sequence[HistoryPoint]]) -> str:
    """Colour key of a multi-line chart with each line's latest value and its change from the commit before."""
    items = []
    for k, (line_name, pts) in enumerate(lines.items()):
        latest = pts[-1][2]
        delta = "" if len(pts) < 2 or pts[-1][2] == pts[-2][2] else \
            f' <span class="changed">({latest - pts[-2][2]:+.4g})</span>'
        items.append(f'<li><span class="swatch" style="background:{_PALETTE[k % len(_PALETTE)]}"></span>'
                     f'{_e(line_name)}: {_e(_fmt_value(latest))}{delta}</li>')
    return f'<ul class="legend">{"".join(items)}</ul>'


def _changes(series: Mapping[str, Sequence[HistoryPoint]]) -> str:
    """A table of the series whose latest value differs from the one before (what the last commit changed)."""
    rows = [(name, pts[-2], pts[-1]) for name, pts in series.items() if len(pts) > 1 and pts[-1][2] != pts[-2][2]]
    measured = [pts for pts in series.values() if len(pts) > 1]
    if not measured:
        return '<p class="note">One commit measured so far: changes appear once a second commit is.</p>'
    if not rows:
        return '<p class="note">No tracked metric changed at the latest measured commit.</p>'
    body = "".join(f"<tr><td><code>{_e(n)}</code></td><td>{_e(a[0][:8])}</td><td>{_e(_fmt_value(a[2]))}</td>"
                   f"<td>{_e(b[0][:8])}</td><td>{_e(_fmt_value(b[2]))}</td><td>{b[2] - a[2]:+.4g}</td></tr>"
                   for n, a, b in rows)
    return ('<h3>Changed at the latest commit</h3><div class="scroll"><table><thead><tr><th>series</th>'
            '<th>before</th><th>value</th><th>latest</th><th>value</th><th>change</th></tr></thead>'
            f'<tbody>{body}</tbody></table></div>')


def _history_section(history: History | None, source: Path | None) -> str:
    where = f" in <code>{_e(source)}</code>" if source is not None else ""
    head = '<section id="history"><h2>Benchmark history</h2>'
    series = {k: v for k, v in (history or {}).items() if v}
    if not series:
        return (f'{head}<p class="note">No asv <code>track_*</code> benchmark results{where}. Create them from the '
                f'repository root with <code class="cmd">{_e(ASV_COMMAND)}</code>, then regenerate this page.</p></section>')
    charts: dict[str, dict[str, Sequence[HistoryPoint]]] = defaultdict(dict)
    for name, pts in sorted(series.items()):
        chart, line = chart_of(name)
        charts[chart][line] = pts
    figures = "".join(
        f'<figure><figcaption><code>{_e(chart)}</code> ({len({c for pts in lines.values() for c, _, _ in pts})} '
        f'commits)</figcaption>{history_svg(chart, lines)}{_legend(lines) if len(lines) > 1 else ""}</figure>'
        for chart, lines in charts.items())
    note = (f'<p class="note">asv <code>track_*</code> benchmarks{where}, one point per commit in commit-date '
            'order (a quick-suite cell <code>task|method</code> is a line in its task\'s chart); hover a point for '
            'its commit.</p>')
    return f'{head}{note}{_changes(series)}<div class="charts">{figures}</div></section>'


# ---------------------------------------------------------------- page
def _group(tables: Sequence[Table],
           plots: Sequence[Path]) -> tuple[dict[str, list[Table]], dict[str, list[Path]], list[Path]]:
    """Tables and plots by family (families sorted, tables in their given order), and the unmatched plots."""
    by_family: dict[str, list[Table]] = defaultdict(list)
    for t in tables:
        by_family[family_of(t.task)].append(t)
    plots_by: dict[str, list[Path]] = defaultdict(list)
    other: list[Path] = []
    for p in plots:
        family = plot_family(Path(p), by_family)
        (plots_by[family] if family else other).append(Path(p))
    return dict(sorted(by_family.items())), plots_by, other


def _toc(by_family: Mapping[str, list[Table]], anchors: Mapping[int, str], has_other: bool) -> str:
    items = []
    for family, tables in by_family.items():
        sub = "".join(f'<li><a href="#{_e(anchors[id(t)])}">{_e(t.title)}</a></li>' for t in tables)
        items.append(f'<li><a href="#family-{_e(file_slug(family))}">{_e(family)}</a><ul>{sub}</ul></li>')
    if has_other:
        items.append('<li><a href="#other-plots">Other plots</a></li>')
    items.append('<li><a href="#history">Benchmark history</a></li>')
    return f'<nav class="toc" aria-label="Contents"><h2>Contents</h2><ul>{"".join(items)}</ul></nav>'


def render_html(tables: Sequence[Table], plots: Sequence[Path], history: History | None = None,
                title: str = "interp-harness leaderboard", *, n_records: int | None = None,
                generated: datetime | None = None, history_source: Path | None = None) -> str:
    """The whole leaderboard as one self-contained HTML page.

    ``tables`` come from :func:`harness.report.leaderboard.build_tables`; ``plots`` are PNG files (embedded as data
    URIs, each in the section of the family its file name starts with, the rest under "Other plots");
    ``history`` maps an asv benchmark to its (commit, date, value) points (see :func:`read_asv_history`).
    ``n_records`` (default: the records behind the tables, one per row and seed), ``generated`` (default:
    now) and ``history_source`` (the asv results directory) only go into the page's text.
    """
    generated = generated or datetime.now(timezone.utc)
    if n_records is None:
        n_records = sum(len(r.seeds) for t in tables for r in t.rows)
    by_family, plots_by, other = _group(tables, plots)
    anchors = {id(t): f"task-{i}-{file_slug(t.task)}" for i, t in enumerate(tables)}
    sections = []
    for family, fam_tables in by_family.items():
        body = "".join(_task_section(t, anchors[id(t)]) for t in fam_tables)
        sections.append(f'<section class="family" id="family-{_e(file_slug(family))}"><h2>{_e(family)}</h2>'
                        f'{body}{_plots_block(plots_by.get(family, []))}</section>')
    if not tables:
        sections.append('<p class="note">No results yet: run <code>harness run</code>.</p>')
    if other:
        sections.append(f'<section id="other-plots"><h2>Other plots</h2>{_plots_block(other, "")}</section>')
    sections.append(_history_section(history, history_source))
    stamp = generated.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = (f'<header><h1>{_e(title)}</h1><p class="generated">Generated {_e(stamp)} from {n_records} result '
              f'records: {len(tables)} tables in {len(by_family)} families, {len(plots)} plots.</p>'
              f'{_toc(by_family, anchors, bool(other))}</header>')
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{_e(title)}</title><link rel="icon" href="data:,"><style>{_CSS}</style></head>\n'
            f'<body>{header}<main>{"".join(sections)}</main></body></html>\n')


def write_html(path: Path, tables: Sequence[Table], plots: Sequence[Path], history: History | None = None,
               title: str = "interp-harness leaderboard", **kwargs: Any) -> Path:
    """Write :func:`render_html` to ``path`` atomically and return the path (``kwargs`` go to render_html)."""
    return atomic_write_text(Path(path), render_html(tables, plots, history, title, **kwargs))


# ---------------------------------------------------------------- asv results
def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _load_asv_file(path: Path) -> dict[str, Any] | None:
    """One asv result file, or None (with a warning) when it is unreadable or lacks the fields we read."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # ValueError: corrupt JSON or not UTF-8
        _warn(f"skipping asv results file {path}: {exc}")
        return None
    needed = ("commit_hash", "date", "result_columns", "results")
    missing = [k for k in needed if not isinstance(doc, dict) or k not in doc]
    if missing:
        _warn(f"skipping asv results file {path}: not an asv 0.6 results file (missing {', '.join(missing)})")
        return None
    cols, results, date = doc["result_columns"], doc["results"], doc["date"]
    if not (isinstance(cols, list) and "result" in cols and isinstance(results, dict) and _is_number(date)):
        _warn(f"skipping asv results file {path}: not an asv 0.6 results file (needs a 'result' column, "
              "a results object and a numeric date)")
        return None
    return doc


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _expand(name: str, value: Any, params: Any) -> Iterator[tuple[str, float]]:
    """(series name, value) of one benchmark result: a number is one series; a list (asv stores one value per
    parameter combination) is one series per combination, ``name(p1, p2)``; null and NaN values are skipped."""
    if not isinstance(value, list):
        value = [value]
    combos = list(itertools.product(*params)) if isinstance(params, list) and params else []
    if len(value) == 1 and not combos:
        labels = [name]
    elif len(combos) == len(value):
        labels = [f"{name}({', '.join(str(p) for p in combo)})" for combo in combos]
    else:
        labels = [f"{name}[{i}]" for i in range(len(value))]
    for label, v in zip(labels, value):
        if _is_number(v):
            yield label, float(v)


def _track_points(doc: Mapping[str, Any]) -> Iterator[tuple[str, float]]:
    """(series name, value) of every ``track_*`` benchmark in one asv results file."""
    cols = doc["result_columns"]
    i_result = cols.index("result")
    i_params = cols.index("params") if "params" in cols else None
    for name, row in doc["results"].items():
        if not name.rsplit(".", 1)[-1].startswith("track_") or not isinstance(row, list):
            continue
        value = row[i_result] if len(row) > i_result else None
        params = row[i_params] if i_params is not None and len(row) > i_params else None
        yield from _expand(name, value, params)


def read_asv_history(results_dir: Path = DEFAULT_ASV_RESULTS) -> dict[str, list[HistoryPoint]]:
    """``{benchmark: [(commit_hash, date_ms, value), ...]}`` of every asv ``track_*`` benchmark, in commit-date order.

    Reads asv 0.6 result files ``<results_dir>/<machine>/<commit[:8]>-<env>.json`` (``machine.json`` and
    ``benchmarks.json`` are skipped; unreadable files are skipped with a warning). A commit measured in several
    environments keeps the last file's value; with several machines, series are named ``machine: benchmark``.
    A missing directory gives ``{}``.
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        return {}
    files = [p for p in sorted(results_dir.glob("*/*.json")) if p.name not in _ASV_SKIP]
    several = len({p.parent.name for p in files}) > 1
    series: dict[str, dict[str, tuple[float, float]]] = defaultdict(dict)
    for path in files:
        doc = _load_asv_file(path)
        if doc is None:
            continue
        for name, value in _track_points(doc):
            key = f"{path.parent.name}: {name}" if several else name
            series[key][str(doc["commit_hash"])] = (float(doc["date"]), value)
    return {name: sorted(((c, d, v) for c, (d, v) in pts.items()), key=lambda p: (p[1], p[0]))
            for name, pts in sorted(series.items())}
