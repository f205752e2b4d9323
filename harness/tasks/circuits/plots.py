"""ROC curves of the circuit methods, drawn from the head scores kept in the result records."""

from __future__ import annotations

from collections import defaultdict
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
