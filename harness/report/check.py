"""Regression check of current results against a committed reference.

The reference file (``results/reference.json``) lists, per (task, method,
config), the mean of each gated metric over a set of seeds together with its
direction and tolerances.  ``harness check`` recomputes those means from the
current records; a metric worse than the reference by more than
``max(abs_tol, rel_tol * |reference|)`` is a regression.  Missing results
and version changes are reported too, so that a reference cannot be
silently bypassed.

Devices: a reference states the ``device_type`` its records were made on
(``"cpu"`` when absent: every reference before the field was).  Records made
on that type of device are checked as above.  Records made on another type
(a CUDA run against the CPU reference) differ by float rounding, kernel
choice and what it sets off (a top-k or argmax flipping), so the reference
may allow them more, per device type, in an optional section::

    "device_tolerance": {
      "cuda": {
        "default": {"abs_tol": 0.01, "rel_tol": 0.0},
        "metrics": {"faithfulness": {"abs_tol": 0.05}},
        "tasks": {"reconstruction/embedded-resid": {"fvu": {"abs_tol": 0.03}}}
      }
    }

The allowance of a metric is the first of ``tasks[task][metric]``,
``metrics[metric]``, ``default`` (no entry: nothing more), and it adds to the
metric's own tolerance, in either direction: a difference within
``tolerance + allowance`` is a *device difference* (reported, not failing),
beyond it a regression (or an improvement).  Without a section for the
records' device type they are checked exactly as same-device records, and
the findings say so.
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
from harness.core.records import device_type, method_label
from harness.report.grouping import group
from harness.core.task import tolerance

REF_SCHEMA = "harness-reference"
REF_SCHEMA_VERSION = 1


def _entry_id(e: dict[str, Any]) -> tuple:
    return (e["task"], e["model"], e["task_config_hash"], method_label(e["method"], e["method_params"]))


def build_reference(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """A reference document from current ok records (gated metrics only)."""
    from harness.report.stats import mean_ci

    records = list(records)
    types = sorted({device_type(r) for r in records})
    if len(types) > 1:
        raise HarnessError(f"the records were made on several types of device ({', '.join(types)}); build a "
                           "reference from one device's results (e.g. --tasks / a results directory per device)")
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
        "commit": git_state()["commit"], "device_type": types[0] if types else "cpu", "entries": entries,
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
    entries = doc.get("entries", [])
    if not isinstance(entries, list):
        raise HarnessError(f"{path}: field 'entries' must be a list, got {type(entries).__name__}")
    for i, e in enumerate(entries):
        _check_entry_fields(e, f"{path}: entry {i}")
    if not isinstance(doc.get("device_type", "cpu"), str):
        raise HarnessError(f"{path}: device_type must be a string such as \"cpu\" or \"cuda\"")
    _check_device_tolerance(doc.get("device_tolerance", {}), path)
    return doc


#: the fields of a reference entry and their JSON types
_ENTRY_FIELDS = {"task": str, "task_version": str, "model": str, "task_config_hash": str, "method": str,
                 "method_version": str, "method_params": dict, "method_config_hash": str, "seeds": list, "metrics": dict}


def _check_entry_fields(e: Any, where: str) -> None:
    if not isinstance(e, dict):
        raise HarnessError(f"{where} is {type(e).__name__ if e is not None else 'null'}, expected an object")
    for key, typ in _ENTRY_FIELDS.items():
        if key not in e:
            raise HarnessError(f"{where} lacks field {key!r}")
        if not isinstance(e[key], typ):
            raise HarnessError(f"{where}: field {key!r} is {type(e[key]).__name__}, expected {typ.__name__}")
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in e["seeds"]):
        raise HarnessError(f"{where}: field 'seeds' must list integers")
    for name, m in e["metrics"].items():
        value = m.get("value") if isinstance(m, dict) else None
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not _finite(value):
            raise HarnessError(f"{where} ({e['task']} / {e['method']}) metric {name!r} has no finite numeric value")
        for tol in ("abs_tol", "rel_tol"):
            if tol in m and (not isinstance(m[tol], (int, float)) or isinstance(m[tol], bool) or not _finite(m[tol])):
                raise HarnessError(f"{where} ({e['task']} / {e['method']}) metric {name!r}: {tol} is not a finite number")


def _finite(value: float) -> bool:
    import math

    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _check_tol(spec: Any, where: str) -> None:
    if not isinstance(spec, dict) or set(spec) - {"abs_tol", "rel_tol"} or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in spec.values()):
        raise HarnessError(f"{where} must be {{\"abs_tol\": x, \"rel_tol\": y}} with numbers >= 0, got {spec!r}")


def _check_device_tolerance(section: Any, path: Path) -> None:
    """``device_tolerance``: ``{device type: {"default": tol, "metrics": {metric: tol}, "tasks": {task: {metric: tol}}}}``."""
    where = f"{path}: device_tolerance"
    if not isinstance(section, dict):
        raise HarnessError(f"{where} must be an object keyed by device type (e.g. \"cuda\")")
    for dev, spec in section.items():
        if not isinstance(spec, dict) or set(spec) - {"default", "metrics", "tasks"}:
            raise HarnessError(f"{where}.{dev} may hold only \"default\", \"metrics\" and \"tasks\", got {spec!r}")
        if "default" in spec:
            _check_tol(spec["default"], f"{where}.{dev}.default")
        for metric, tol in _mapping(spec.get("metrics", {}), f"{where}.{dev}.metrics").items():
            _check_tol(tol, f"{where}.{dev}.metrics.{metric}")
        for task, metrics in _mapping(spec.get("tasks", {}), f"{where}.{dev}.tasks").items():
            for metric, tol in _mapping(metrics, f"{where}.{dev}.tasks.{task}").items():
                _check_tol(tol, f"{where}.{dev}.tasks.{task}.{metric}")


def _mapping(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise HarnessError(f"{where} must be an object, got {value!r}")
    return value


def device_allowance(reference: dict[str, Any], device: str, task: str, metric: str) -> tuple[float, float] | None:
    """``(abs_tol, rel_tol)`` the reference allows ``metric`` of ``task`` on top of its own tolerance when the
    records were made on ``device`` (a type other than the reference's); None when it states nothing for it."""
    section = reference.get("device_tolerance", {}).get(device)
    if section is None:
        return None
    spec = (section.get("tasks", {}).get(task, {}).get(metric) or section.get("metrics", {}).get(metric)
            or section.get("default") or {})
    return float(spec.get("abs_tol", 0.0)), float(spec.get("rel_tol", 0.0))


def carry_device_tolerance(doc: dict[str, Any], previous: Path) -> str | None:
    """Copy the ``device_tolerance`` section of the reference at ``previous`` (the file about to be replaced)
    into ``doc`` when both were made on the same type of device; returns a note saying what was done."""
    try:
        old = read_reference(previous)
    except HarnessError:
        return None
    section = old.get("device_tolerance")
    if not section:
        return None
    if old.get("device_type", "cpu") != doc["device_type"]:
        return (f"note: {previous}'s device_tolerance (for a {old.get('device_type', 'cpu')} reference) was not "
                f"carried over to this {doc['device_type']} reference")
    doc["device_tolerance"] = section
    return f"kept the device_tolerance section of {previous} ({', '.join(sorted(section))})"


@dataclass
class Finding:
    task: str
    method: str
    metric: str
    kind: str  # "regression", "missing", "removed", "version", "improvement", "device"
    reference: float | None = None
    current: float | None = None
    tolerance: float | None = None
    detail: str = ""

    @property
    def failing(self) -> bool:
        """Regressions, missing results and version changes fail; improvements and device differences inform."""
        return self.kind not in ("improvement", "device")


def check(records: Iterable[dict[str, Any]], reference: dict[str, Any]) -> list[Finding]:
    """Every regression, missing result, version change and (informational) improvement or device difference."""
    grouped = group(records)
    current: dict[tuple, tuple[str, str, str, list[dict[str, Any]]]] = {}
    for (task, tversion, model, tcfg), rows in grouped.items():
        for (label, mversion, mcfg), recs in rows.items():
            current[(task, model, tcfg, label)] = (tversion, mversion, mcfg, recs)

    findings: list[Finding] = []
    for e in reference["entries"]:
        label = method_label(e["method"], e["method_params"])
        found = current.get(_entry_id(e))
        removed = _removed(e)
        if found is None and removed:
            findings.append(Finding(e["task"], label, "*", "removed", detail=removed))
            continue
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
        findings += _check_entry(e, label, [by_seed[s] for s in e["seeds"]], reference)
    return findings


def _removed(e: dict[str, Any]) -> str:
    """Why a reference entry can have no current results: its task or method is no longer registered ("" if both are)."""
    gone = []
    for kind, lookup in (("task", registry.get_task), ("method", registry.get_method)):
        try:
            lookup(e[kind])
        except UnknownNameError:
            gone.append(f"{kind} {e[kind]!r}")
    if not gone:
        return ""
    return (f"{' and '.join(gone)} no longer exist{'s' if len(gone) == 1 else ''} (removed or renamed; not loaded: a "
            "plugin?); regenerate the reference with `harness reference` if intended")


def _check_entry(e: dict[str, Any], label: str, recs: list[dict[str, Any]], reference: dict[str, Any]) -> list[Finding]:
    """The findings of one reference entry against its current records (one per seed, in the entry's order)."""
    from harness.report.stats import mean_ci

    ref_device = reference.get("device_type", "cpu")
    others = sorted({device_type(r) for r in recs} - {ref_device})  # the records' device types unlike the reference's
    out = []
    for name, m in e["metrics"].items():
        values = [r["metrics"].get(name) for r in recs]
        if any(v is None for v in values):
            out.append(Finding(e["task"], label, name, "missing", detail="metric absent from current records"))
            continue
        cur, ref = mean_ci(values)[0], float(m["value"])
        tol = tolerance(float(m.get("abs_tol", 0.0)), float(m.get("rel_tol", 0.0)), ref)
        worse = (ref - cur) if m.get("higher_is_better", True) else (cur - ref)
        if abs(worse) <= tol + 1e-12:
            continue
        kind = "regression" if worse > 0 else "improvement"
        if not others:
            out.append(Finding(e["task"], label, name, kind, ref, cur, tol))
            continue
        runs = f"{'/'.join(others)} run, {ref_device} reference"
        allowed = [device_allowance(reference, d, e["task"], name) for d in others]
        if any(a is None for a in allowed):
            out.append(Finding(e["task"], label, name, kind, ref, cur, tol, detail=(
                f"{runs}; the reference states no device_tolerance for {'/'.join(others)}: checked as same-device")))
            continue
        total = tol + max(tolerance(a, r, ref) for a, r in allowed)
        if abs(worse) <= total + 1e-12:
            out.append(Finding(e["task"], label, name, "device", ref, cur, total,
                               detail=f"device difference ({runs}), within tolerance"))
        else:
            out.append(Finding(e["task"], label, name, kind, ref, cur, total,
                               detail=f"{runs}: beyond the cross-device tolerance"))
    return out
