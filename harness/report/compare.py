"""Paired comparison of two methods on the same task over shared seeds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from harness.errors import HarnessError
from harness.report.leaderboard import direction
from harness.core.records import method_label
from harness.report.grouping import table_key
from harness.report.stats import PairedDifference, paired_difference


@dataclass
class Comparison:
    task: str
    metric: str
    method_a: str
    method_b: str
    seeds: list[int]
    a: list[float]
    b: list[float]
    diff: PairedDifference
    higher_is_better: bool

    @property
    def verdict(self) -> str:
        d = self.diff
        if d.n < 2:
            return (f"only {d.n} shared seed(s): too few to judge; run both methods with --seeds 0 1 2 "
                    "(or more) on the same task")
        better_a = d.ci_low > 0 if self.higher_is_better else d.ci_high < 0
        better_b = d.ci_high < 0 if self.higher_is_better else d.ci_low > 0
        size = f"{d.mean:+.4f} {self.metric} (95% CI [{d.ci_low:+.4f}, {d.ci_high:+.4f}], n={d.n}, paired t p={d.p_value:.3g})"
        if better_a:
            return f"{self.method_a} beats {self.method_b} on {self.task}: {size}"
        if better_b:
            return f"{self.method_b} beats {self.method_a} on {self.task}: {size}"
        return f"no significant difference between {self.method_a} and {self.method_b} on {self.task}: {size}"


def compare(records: Iterable[dict[str, Any]], method_a: str, method_b: str, task: str,
            metric: str | None = None) -> Comparison:
    """Paired difference A - B of ``metric`` (default: the task's main metric) over shared seeds.

    Methods are named by label (``name`` or ``name[param=value]``).  Records
    must share task version, model and task config to be paired.
    """
    recs = [r for r in records if r["task"] == task and r["status"] == "ok"]
    if not recs:
        raise HarnessError(f"no results for task {task!r}; run `harness run --tasks {task}` first")
    metric = metric or recs[0]["main_metric"]

    def by_seed(label: str) -> dict[tuple, dict[int, float]]:
        out: dict[tuple, dict[int, float]] = {}
        for r in recs:
            if method_label(r["method"], r["method_params"]) == label and metric in r["metrics"]:
                ident = table_key(r)[1:]  # task version, model, task-config hash: as the leaderboard groups
                out.setdefault(ident, {})[r["seed"]] = r["metrics"][metric]
        if not out:
            have = sorted({method_label(r["method"], r["method_params"]) for r in recs})
            raise HarnessError(f"no {metric!r} results for method {label!r} on {task!r}; methods with results: "
                               + ", ".join(have))
        return out

    sa, sb = by_seed(method_a), by_seed(method_b)
    shared_idents = [i for i in sa if i in sb]
    if not shared_idents:
        raise HarnessError(f"{method_a!r} and {method_b!r} have no results on the same task version, model and config")
    ident = max(shared_idents, key=lambda i: len(set(sa[i]) & set(sb[i])))
    seeds = sorted(set(sa[ident]) & set(sb[ident]))
    a = [sa[ident][s] for s in seeds]
    b = [sb[ident][s] for s in seeds]
    diff = paired_difference(a, b)  # n = 0 and NaNs when no seed is shared
    return Comparison(task, metric, method_a, method_b, seeds, a, b, diff, direction(task, metric))
