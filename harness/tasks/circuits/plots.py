"""Figures of the circuit methods, drawn from what the result records keep: ROC curves of the head scores
and MIB faithfulness curves f(k) of heads and, for methods that score edges, of edges (:func:`plot_circuits`
is the family's registered plotter)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from harness.metrics.circuits import roc_curve
from harness.report.plots import file_slug, save_figure

#: False-positive rates at which the per-seed curves are averaged (vertical averaging).
FPR_GRID = np.linspace(0.0, 1.0, 201)


def mean_roc(curves: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Mean true-positive rate over ``curves`` at :data:`FPR_GRID` (each curve a step-free ``(fpr, tpr)``)."""
    return np.mean([np.interp(FPR_GRID, fpr, tpr) for fpr, tpr in curves], axis=0)


def plot_circuit_rocs(records: Iterable[Mapping[str, Any]], out_dir: Path) -> list[Path]:
    """One ``circuits-roc-<task>.png`` per circuits task: each method's ROC curve (mean over seeds).

    Records without ``artifacts.head_scores`` (older harness versions) are skipped.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_task: dict[tuple[str, str], dict[tuple[str, bool], list]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        art = r.get("artifacts") or {}
        if "head_scores" not in art or "truth" not in art:
            continue
        scores, truth = np.asarray(art["head_scores"], float), np.asarray(art["truth"], bool)
        by_task[(r["task"], r["model"])][(r["method"], r["baseline"])].append(
            (roc_curve(scores, truth), r["metrics"]["roc_auc"]))  # the AUC the task computed from these scores
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for (task, model), methods in sorted(by_task.items()):
        fig, ax = plt.subplots(figsize=(6, 5))
        ranked = sorted(methods.items(), key=lambda kv: -np.mean([auc for _, auc in kv[1]]))
        for i, ((method, baseline), runs) in enumerate(ranked):
            tpr = mean_roc([curve for curve, _ in runs])
            auc = np.mean([a for _, a in runs])
            ax.plot(FPR_GRID, tpr, lw=1.2 if baseline else 2.2, ls="--" if baseline else "-", color=f"C{i % 10}",
                    label=f"{method}{' (baseline)' if baseline else ''}: AUC {auc:.3f} ({len(runs)} seeds)")
        ax.plot([0, 1], [0, 1], color="grey", lw=0.6, ls=":")
        ax.set(xlabel="false-positive rate (non-circuit heads)", ylabel="true-positive rate (circuit heads)",
               title=f"{task} on {model}: ROC of head scores (mean over seeds)", xlim=(0, 1), ylim=(0, 1.02))
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7, loc="lower right")
        written.append(save_figure(fig, out_dir / f"circuits-roc-{file_slug(task.split('/', 1)[-1] + '-' + model)}.png"))
    return written


def mean_faithfulness_curve(curves: list[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """``(ks, mean f)`` over seeds of ``faithfulness_curve`` artifacts that share their ks; ValueError otherwise."""
    ks = np.asarray(curves[0]["ks"], float)
    for c in curves[1:]:
        if not np.array_equal(np.asarray(c["ks"], float), ks):
            raise ValueError("faithfulness curves of one method differ in their ks")
    return ks, np.mean([np.asarray(c["f"], float) for c in curves], axis=0)


def _mean(values: list) -> float:
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else float("nan")


@dataclass(frozen=True)
class CurveLevel:
    """Where a level's f(k) curves live in a record and how its plot is named: ``artifact`` (the curve, as
    :meth:`~harness.tasks.circuits.curves.FaithfulnessCurve.artifact` writes it), its ``cpr`` / ``cmd``
    metrics, the file name's ``prefix`` and the ``noun`` of the components counted on the x axis."""

    artifact: str
    cpr: str
    cmd: str
    prefix: str
    noun: str


#: The curve levels a circuits record can carry: heads (every record) and edges (methods that score edges).
CURVE_LEVELS = {
    "heads": CurveLevel("faithfulness_curve", "cpr", "cmd", "circuits-faithfulness", "heads"),
    "edges": CurveLevel("edge_faithfulness_curve", "edge_cpr", "edge_cmd", "circuits-edge-faithfulness", "edges"),
}


def plot_faithfulness_curves(records: Iterable[Mapping[str, Any]], out_dir: Path, level: str = "heads") -> list[Path]:
    """One ``<prefix>-<task>-<model>.png`` per circuits task and model (prefix ``circuits-faithfulness`` for
    ``level="heads"``, ``circuits-edge-faithfulness`` for ``level="edges"``): each method's f(k) (mean over
    seeds) against k, the % of heads (edges) kept, on a log axis; the legend gives CPR / CMD (``cpr`` /
    ``cmd``, ``edge_cpr`` / ``edge_cmd``; mean over seeds).

    Records without the level's curve artifact (``faithfulness_curve``: older harness versions;
    ``edge_faithfulness_curve``: methods that score no edges) are skipped.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if level not in CURVE_LEVELS:
        raise ValueError(f"unknown curve level {level!r}; use one of {sorted(CURVE_LEVELS)}")
    lv = CURVE_LEVELS[level]
    by_task: dict[tuple[str, str], dict[tuple[str, bool], list]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        curve = (r.get("artifacts") or {}).get(lv.artifact)
        if not curve:
            continue
        m = r["metrics"]
        by_task[(r["task"], r["model"])][(r["method"], r["baseline"])].append((curve, m.get(lv.cpr), m.get(lv.cmd)))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for (task, model), methods in sorted(by_task.items()):
        fig, ax = plt.subplots(figsize=(6, 5))
        ranked = sorted(methods.items(), key=lambda kv: -np.nan_to_num(_mean([run[1] for run in kv[1]])))
        ablations = set()
        for i, ((method, baseline), runs) in enumerate(ranked):
            ks, f = mean_faithfulness_curve([c for c, _, _ in runs])
            ablations |= {c.get("ablation", "?") for c, _, _ in runs}
            cpr_, cmd_ = (_mean([run[j] for run in runs]) for j in (1, 2))
            ax.plot(ks, f, marker="o", ms=3, lw=1.2 if baseline else 2.2, ls="--" if baseline else "-",
                    color=f"C{i % 10}", label=f"{method}{' (baseline)' if baseline else ''}: CPR {cpr_:.3f}, "
                                              f"CMD {cmd_:.3f} ({len(runs)} seeds)")
        ax.axhline(1.0, color="grey", lw=0.6, ls=":")
        ax.axhline(0.0, color="grey", lw=0.6, ls=":")
        ax.set_xscale("log")
        ax.set_xticks(ks, [f"{k:g}" for k in ks], fontsize=7)
        ax.minorticks_off()
        ax.set(xlabel=f"k: % of {lv.noun} kept (top-k% by score; log scale)",
               ylabel="faithfulness f(k) = (m(C_k) - m(empty)) / (m(model) - m(empty))",
               title=f"{task} on {model}\n{'edge' if level == 'edges' else 'head'} faithfulness curves, "
                     f"{'/'.join(sorted(ablations))} ablation (mean over seeds)")  # two lines: long names fit
        ax.title.set_fontsize(9)
        ax.yaxis.label.set_fontsize(8)
        ax.legend(fontsize=7, loc="upper left")
        name = f"{lv.prefix}-{file_slug(task.split('/', 1)[-1] + '-' + model)}.png"
        written.append(save_figure(fig, out_dir / name))
    return written


def plot_circuits(records: Iterable[Mapping[str, Any]], out_dir: Path) -> list[Path]:
    """The circuits family's plotter: per task, the ROC curves, the head-level faithfulness curves, then the
    edge-level ones (tasks where some method scored edges)."""
    records = list(records)
    return (plot_circuit_rocs(records, out_dir) + plot_faithfulness_curves(records, out_dir, "heads")
            + plot_faithfulness_curves(records, out_dir, "edges"))
