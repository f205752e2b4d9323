"""Plots and summary tables of the icl family, from result records.

``plot_icl(records, out_dir)`` writes, per predictor task, the error curves of
every predictor and their SPD to the transformer against the number of
in-context examples, and per probe task the held-out R^2 by layer (trained
model solid, untrained control dashed).  ``summarize_icl(records)`` returns
the same numbers as Markdown tables.  Records are dicts with ``task``,
``method``, ``metrics`` (and ``status``, ``family`` when present); metrics
are averaged over seeds.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from harness.protocols.icl import REFERENCE_PREDICTORS
from harness.report.plots import save_figure

#: The references every predictor is compared with, in table order (as the tasks define them).
REFERENCE_ORDER = ("transformer",) + REFERENCE_PREDICTORS


def _mean_metrics(records: Iterable[Mapping]) -> dict[str, dict[str, dict[str, float]]]:
    """``{task: {method: {metric: mean over seeds}}}`` of the ok records of the icl families."""
    acc: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in records:
        if r.get("status", "ok") != "ok" or not str(r.get("task", "")).startswith("icl/"):
            continue
        for k, v in (r.get("metrics") or {}).items():
            acc[r["task"]][r["method"]][k].append(float(v))
    return {t: {m: {k: float(np.mean(v)) for k, v in ms.items()} for m, ms in mt.items()} for t, mt in acc.items()}


def _indexed(metrics: Mapping[str, float], pattern: str) -> tuple[list[int], list[float]]:
    rx = re.compile(pattern)
    pairs = sorted((int(m.group(1)), v) for k, v in metrics.items() if (m := rx.fullmatch(k)))
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _slug(task: str) -> str:
    return task.replace("/", "-")


def plot_icl(records: Iterable[Mapping], out_dir: str | Path) -> list[Path]:
    """Write ``<task>-curves.png`` / ``<task>-probes.png`` (``/`` -> ``-``, e.g. ``icl-linear-d5-curves.png``) into ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for task, by_method in sorted(_mean_metrics(records).items()):
        any_metrics = next(iter(by_method.values()))
        if "err_final" in any_metrics:
            fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
            for method in sorted(by_method, key=lambda m: (m != "icl-transformer", m)):
                ks, errs = _indexed(by_method[method], r"err_k(\d+)")
                style = dict(lw=2.5, color="black", zorder=5) if method == "icl-transformer" else dict(lw=1.2)
                ax1.plot(ks, errs, marker="o", ms=3, label=method, **style)
                if method != "icl-transformer":
                    ks, spds = _indexed(by_method[method], r"spd_transformer_k(\d+)")
                    ax2.plot(ks, spds, marker="o", ms=3, label=method, **style)
            ax1.set(title=f"{task}: squared error / d (axis clipped at 1.3)", xlabel="in-context examples k",
                    ylabel="error / d")
            ax1.set_ylim(0, 1.3)
            ax2.set(title="SPD / d to the transformer", xlabel="in-context examples k", ylabel="SPD / d")
            ax2.set_yscale("symlog", linthresh=1e-3)
            ax1.legend(fontsize=7)
            ax2.legend(fontsize=7)
            written.append(save_figure(fig, out_dir / f"{_slug(task)}-curves.png"))
        elif "r2_w_best" in any_metrics:
            fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
            for ax, target, title in zip(axes, ("w", "xty"), ("w", "X^T y")):
                for i, method in enumerate(sorted(by_method)):
                    color = f"C{i}"
                    ls, r2 = _indexed(by_method[method], rf"r2_{target}_layer(\d+)")
                    lc, r2c = _indexed(by_method[method], rf"r2_{target}_layer(\d+)_control")
                    ax.plot(ls, r2, marker="o", color=color, label=f"{method} (trained)")
                    ax.plot(lc, r2c, marker="x", ls="--", color=color, label=f"{method} (untrained control)")
                ax.axhline(0, color="grey", lw=0.5)
                ax.set(title=f"{task}: decoding {title}", xlabel="layer (0 = read-in)", ylabel="held-out R^2")
                ax.set_ylim(-0.1, 1.02)
            axes[0].legend(fontsize=7)
            written.append(save_figure(fig, out_dir / f"{_slug(task)}-probes.png"))
    return written


def summarize_icl(records: Iterable[Mapping]) -> str:
    """Markdown tables: per predictor task, each predictor's error and its SPD / ILWD to every reference;
    per probe task, R^2 by layer (trained / control)."""
    lines: list[str] = []
    for task, by_method in sorted(_mean_metrics(records).items()):
        any_metrics = next(iter(by_method.values()))
        if "err_final" in any_metrics:
            refs = [r for r in REFERENCE_ORDER if f"spd_{r}" in any_metrics]
            lines.append(f"### {task}\n")
            lines.append("| method | err_final | err_mean | " + " | ".join(f"SPD {r}" for r in refs) + " |")
            lines.append("|---|---|---|" + "---|" * len(refs))
            for method in sorted(by_method, key=lambda m: by_method[m]["err_final"]):
                mm = by_method[method]
                lines.append(f"| {method} | {mm['err_final']:.4f} | {mm['err_mean']:.4f} | "
                             + " | ".join(f"{mm[f'spd_{r}']:.4f}" for r in refs) + " |")
            lines.append("")
            lines.append("| method | " + " | ".join(f"ILWD {r}" for r in refs) + " |")
            lines.append("|---|" + "---|" * len(refs))
            for method in sorted(by_method, key=lambda m: by_method[m]["err_final"]):
                mm = by_method[method]
                lines.append(f"| {method} | " + " | ".join(f"{mm[f'ilwd_{r}']:.4f}" for r in refs) + " |")
            tf = by_method.get("icl-transformer")
            if tf:
                classical = [r for r in refs if r != "transformer"]
                for kind in ("spd", "ilwd"):
                    best = min(classical, key=lambda r: tf[f"{kind}_{r}"])
                    lines.append(f"\nTransformer closest by {kind.upper()}: **{best}** ({tf[f'{kind}_{best}']:.4f}).")
            lines.append("")
        elif "r2_w_best" in any_metrics:
            lines.append(f"### {task}\n")
            n_layers = len(_indexed(any_metrics, r"r2_w_layer(\d+)")[0])
            lines.append("| method | target | model | " + " | ".join(f"L{l}" for l in range(n_layers)) + " |")
            lines.append("|---|---|---|" + "---|" * n_layers)
            for method in sorted(by_method):
                mm = by_method[method]
                for target in ("w", "xty"):
                    for suffix, label in (("", "trained"), ("_control", "untrained")):
                        vals = [mm[f"r2_{target}_layer{l}{suffix}"] for l in range(n_layers)]
                        lines.append(f"| {method} | {target} | {label} | " + " | ".join(f"{v:.3f}" for v in vals) + " |")
            lines.append("")
    return "\n".join(lines)
