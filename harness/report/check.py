"""Regression check of current results against a committed reference.

The reference file (``results/reference.json``) lists, per (task, method,
config), the mean of each gated metric over a set of seeds together with its
direction and tolerances.  ``harness check`` recomputes those means from the
current records; a metric worse than the reference by more than
``max(abs_tol, rel_tol * |reference|)`` is a regression.  Missing results
and version changes are reported too, so that a reference cannot be
silently bypassed.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from harness.core import registry
from harness.errors import HarnessError, UnknownNameError
from harness.core.io import atomic_write_text
from harness.core.provenance import git_state
from harness.core.records import method_label
from harness.report.grouping import group
from harness.core.task import tolerance

REF_SCHEMA = "harness-reference"
REF_SCHEMA_VERSION = 1


def _entry_id(e: dict[str, Any]) -> tuple:
    return (e["task"], e["model"], e["task_config_hash"], method_label(e["method"], e["method_params"]))


def build_reference(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """A reference document from current ok records (gated metrics only)."""
    from harness.report.stats import mean_ci

    entries = []
    for (task, tversion, model, tcfg), rows in group(records).items():
        try:
            task_obj = registry.get_task(task).create()
        except UnknownNameError:
            continue
        for (label, mversion, mcfg), recs in rows.items():
            r0 = recs[0]
            metrics = {}
            for spec in task_obj.metrics:
                if not spec.gated or not all(spec.name in r["metrics"] for r in recs):
                    continue
                metrics[spec.name] = {
                    "value": round(mean_ci([r["metrics"][spec.name] for r in recs])[0], 6),
                    "higher_is_better": spec.higher_is_better,
                    "abs_tol": spec.abs_tol,
                    "rel_tol": spec.rel_tol,
                }
            entries.append({
                "task": task, "task_version": tversion, "model": model, "task_config_hash": tcfg,
                "method": r0["method"], "method_version": mversion, "method_params": r0["method_params"],
                "method_config_hash": mcfg, "seeds": [r["seed"] for r in recs], "metrics": metrics,
            })
    return {
        "schema": REF_SCHEMA, "schema_version": REF_SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_state()["commit"], "entries": entries,
    }


def write_reference(doc: dict[str, Any], path: Path) -> Path:
    return atomic_write_text(Path(path), json.dumps(doc, indent=2, sort_keys=True) + "\n")


def read_reference(path: Path) -> dict[str, Any]:
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise HarnessError(f"reference file {path} does not exist; create it with `harness reference --out {path}`") from None
    except json.JSONDecodeError as exc:
        raise HarnessError(f"{path}: corrupt JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(doc, dict) or doc.get("schema") != REF_SCHEMA:
        raise HarnessError(f"{path}: not a harness reference file (schema {doc.get('schema') if isinstance(doc, dict) else None!r})")
    if doc.get("schema_version") != REF_SCHEMA_VERSION:
        raise HarnessError(f"{path}: reference schema version {doc.get('schema_version')!r} is not supported")
    for i, e in enumerate(doc.get("entries", [])):
        for key in ("task", "task_version", "model", "task_config_hash", "method", "method_version",
                    "method_params", "method_config_hash", "seeds", "metrics"):
            if key not in e:
                raise HarnessError(f"{path}: entry {i} lacks field {key!r}")
        for name, m in e["metrics"].items():
            if not isinstance(m, dict) or not isinstance(m.get("value"), (int, float)):
                raise HarnessError(f"{path}: entry {i} ({e['task']} / {e['method']}) metric {name!r} has no numeric value")
    return doc


@dataclass
class Finding:
    task: str
    method: str
    metric: str
    kind: str  # "regression", "missing", "version", "improvement"
    reference: float | None = None
    current: float | None = None
    tolerance: float | None = None
    detail: str = ""

    @property
    def failing(self) -> bool:
        return self.kind != "improvement"


def check(records: Iterable[dict[str, Any]], reference: dict[str, Any]) -> list[Finding]:
    """Every regression, missing result, version change and (informational) improvement."""
    from harness.report.stats import mean_ci

    grouped = group(records)
    current: dict[tuple, tuple[str, str, str, list[dict[str, Any]]]] = {}
    for (task, tversion, model, tcfg), rows in grouped.items():
        for (label, mversion, mcfg), recs in rows.items():
            current[(task, model, tcfg, label)] = (tversion, mversion, mcfg, recs)

    findings: list[Finding] = []
    for e in reference["entries"]:
        label = method_label(e["method"], e["method_params"])
        found = current.get(_entry_id(e))
        if found is None:
            findings.append(Finding(e["task"], label, "*", "missing", detail="no current results for this task/method/config"))
            continue
        tversion, mversion, mcfg, recs = found
        if tversion != e["task_version"] or mversion != e["method_version"] or mcfg != e["method_config_hash"]:
            findings.append(Finding(e["task"], label, "*", "version", detail=(
                f"reference has task v{e['task_version']} / method v{e['method_version']} (config {e['method_config_hash'][:8]}), "
                f"current has task v{tversion} / method v{mversion} (config {mcfg[:8]}); "
                "if the change is intended, regenerate the reference with `harness reference`")))
            continue
        by_seed = {r["seed"]: r for r in recs}
        missing = [s for s in e["seeds"] if s not in by_seed]
        if missing:
            findings.append(Finding(e["task"], label, "*", "missing", detail=f"no current results for seeds {missing}"))
            continue
        for name, m in e["metrics"].items():
            values = [by_seed[s]["metrics"].get(name) for s in e["seeds"]]
            if any(v is None for v in values):
                findings.append(Finding(e["task"], label, name, "missing", detail="metric absent from current records"))
                continue
            cur = mean_ci(values)[0]
            ref = float(m["value"])
            tol = tolerance(float(m.get("abs_tol", 0.0)), float(m.get("rel_tol", 0.0)), ref)
            worse = (ref - cur) if m.get("higher_is_better", True) else (cur - ref)
            if worse > tol + 1e-12:
                findings.append(Finding(e["task"], label, name, "regression", ref, cur, tol))
            elif -worse > tol + 1e-12:
                findings.append(Finding(e["task"], label, name, "improvement", ref, cur, tol))
    return findings
