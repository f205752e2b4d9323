"""Fidelity against L0: one panel per reconstruction task, one curve per method (baselines dashed).

Each point is one (method, parameters) cell group averaged over seeds: x =
mean held-out L0, y = the task's main metric (loss recovered for language
models, explained variance otherwise).  A sweep such as ``--grid
k=8,16,32,64`` gives one point per ``k``, joined in order of L0.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

from harness.report.plots import save_figure

FIGURE_NAME = "reconstruction_fidelity_vs_l0.png"
#: parameters that move a method along its sparsity curve; any other explicit
#: parameter (e.g. ``g-sae[grad_at_encode=False]``) makes a curve of its own
SPARSITY_PARAMS = ("k", "l1_coef")


def _curve(method: str, params: dict) -> str:
    other = {k: v for k, v in params.items() if k not in SPARSITY_PARAMS}
    return method if not other else method + "[" + ",".join(f"{k}={other[k]}" for k in sorted(other)) + "]"


def fidelity_points(records: Iterable[dict[str, Any]]) -> tuple[dict[str, dict[str, list]], dict[str, bool]]:
    """``({task: {curve: [(mean L0, mean main metric, params), ...] sorted by L0}}, {curve: is_baseline})``.

    A curve is a method with its non-sparsity parameters (see :data:`SPARSITY_PARAMS`).
    """
    groups: dict[tuple, list[dict]] = defaultdict(list)
    baseline: dict[str, bool] = {}
    for r in records:
        if r.get("family") != "reconstruction" or r.get("status") != "ok":
            continue
        metrics = r.get("metrics") or {}
        main = r.get("main_metric")
        if main not in metrics or "l0" not in metrics:
            continue
        params = r.get("method_params") or {}
        curve = _curve(r["method"], params)
        key = (r["task"], r.get("task_version"), curve, _params_key(params))
        groups[key].append(r)
        baseline[curve] = bool(r.get("baseline"))
    out: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for (task, _, method, _), recs in groups.items():
        main = recs[0]["main_metric"]
        l0 = sum(r["metrics"]["l0"] for r in recs) / len(recs)
        y = sum(r["metrics"][main] for r in recs) / len(recs)
        out[task][method].append((l0, y, dict(recs[0].get("method_params") or {})))
    for task in out:
        for method in out[task]:
            out[task][method].sort(key=lambda p: p[0])
    return {t: dict(m) for t, m in out.items()}, baseline


def _params_key(params: dict) -> str:
    return ",".join(f"{k}={params[k]}" for k in sorted(params))


def plot_fidelity_vs_l0(records: Iterable[dict[str, Any]], out_path: str | Path) -> Path | None:
    """Write the figure to ``out_path`` (PNG); returns the path, or None when no record qualifies."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = list(records)
    points, baseline = fidelity_points(records)
    if not points:
        return None
    main_of = {r["task"]: r["main_metric"] for r in records if r.get("family") == "reconstruction"}
    tasks = sorted(points)
    cols = min(2, len(tasks))
    rows = (len(tasks) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 4.4 * rows), squeeze=False)
    methods = sorted({m for t in points.values() for m in t})
    cmap = plt.get_cmap("tab10")
    colour = {m: cmap(i % 10) for i, m in enumerate(methods)}
    for ax, task in zip(axes.flat, tasks):
        for method in sorted(points[task]):
            pts = points[task][method]
            xs = [max(p[0], 1e-1) for p in pts]
            ys = [p[1] for p in pts]
            style = "--" if baseline.get(method) else "-"
            label = method + (" (baseline)" if baseline.get(method) else "")
            ax.plot(xs, ys, style, marker="o" if not baseline.get(method) else "s", color=colour[method],
                    label=label, linewidth=1.6, markersize=5)
        ax.set_xscale("log")
        ax.set_xlabel("L0 (mean active latents per held-out token)")
        ax.set_ylabel(main_of.get(task, "main metric").replace("_", " "))
        ax.set_title(task)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    return save_figure(fig, out_path)


def write_fidelity_plots(records: Iterable[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """Write :data:`FIGURE_NAME` into ``out_dir`` (next to the leaderboard); returns the paths written."""
    path = plot_fidelity_vs_l0(records, Path(out_dir) / FIGURE_NAME)
    return [path] if path else []
