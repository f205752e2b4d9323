"""Result records: one JSON file per cell, schema-versioned, validated, written atomically.

A record holds everything needed to trust and reproduce one number: which
task and method (with versions), which model and seed, the full config and
its hash, the metrics, status, timings and provenance.  Files live in
``<results_dir>/records/<task>/<method>/`` and are named by the cell key,
so a re-run finds what is already done.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from harness.errors import RecordError
from harness.core.io import atomic_write_text

SCHEMA = "harness-record"
SCHEMA_VERSION = 1
STATUSES = ("ok", "error")

# field -> (accepted types, required)
_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "schema": ((str,), True),
    "schema_version": ((int,), True),
    "cell_key": ((str,), True),
    "task": ((str,), True),
    "task_version": ((str,), True),
    "family": ((str,), True),
    "method": ((str,), True),
    "method_version": ((str,), True),
    "method_params": ((dict,), True),
    "baseline": ((bool,), True),
    "model": ((str,), True),
    "seed": ((int,), True),
    "config": ((dict,), True),
    "config_hash": ((str,), True),
    "metrics": ((dict,), True),
    "main_metric": ((str,), True),
    "status": ((str,), True),
    "error": ((str, type(None)), True),
    "timings": ((dict,), True),
    "provenance": ((dict,), True),
    "artifacts": ((dict,), False),  # small outputs for plots (Task.artifacts); absent in older records
}
_TIMINGS = ("wall_s", "cpu_s", "peak_rss_mb")


def canonical_json(value: Any) -> str:
    """Deterministic JSON (sorted keys, no whitespace) used for hashing."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def config_hash(config: Mapping[str, Any]) -> str:
    """First 16 hex digits of the SHA-256 of the canonical JSON of ``config``."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:16]


def cell_key(task: str, task_version: str, method: str, method_version: str, cfg_hash: str, seed: int,
             model: str) -> str:
    """Identity of a cell: two runs with the same key are the same experiment."""
    ident = canonical_json([task, task_version, method, method_version, cfg_hash, int(seed), model])
    return hashlib.sha256(ident.encode()).hexdigest()[:20]


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def record_path(results_dir: Path, task: str, method: str, seed: int, key: str) -> Path:
    return Path(results_dir) / "records" / _slug(task) / _slug(method) / f"seed{seed}-{key}.json"


def validate(record: Any, source: str = "record") -> dict[str, Any]:
    """Check a record against the schema; raises :class:`RecordError` naming ``source`` and the problem."""
    if not isinstance(record, dict):
        raise RecordError(f"{source}: not a result record (top level is {type(record).__name__}, expected an object)")
    if record.get("schema") != SCHEMA:
        raise RecordError(f"{source}: not a harness result record (schema is {record.get('schema')!r}, expected {SCHEMA!r})")
    if record.get("schema_version") != SCHEMA_VERSION:
        raise RecordError(
            f"{source}: record schema version {record.get('schema_version')!r} is not supported "
            f"(this harness reads version {SCHEMA_VERSION}); re-run the cell with --force"
        )
    for name, (types, required) in _FIELDS.items():
        if name not in record:
            if required:
                raise RecordError(f"{source}: missing field {name!r}")
            continue
        value = record[name]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise RecordError(
                f"{source}: field {name!r} has type {type(value).__name__}, expected "
                + " or ".join(t.__name__ for t in types)
            )
    if record["status"] not in STATUSES:
        raise RecordError(f"{source}: status {record['status']!r} is not one of {STATUSES}")
    for key, value in record["metrics"].items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise RecordError(f"{source}: metric {key!r} is {value!r}, expected a finite number")
    if record["status"] == "ok":
        if record["main_metric"] not in record["metrics"]:
            raise RecordError(f"{source}: main metric {record['main_metric']!r} missing from metrics")
    elif not record["error"]:
        raise RecordError(f"{source}: status is 'error' but no error message is recorded")
    for key in _TIMINGS:
        value = record["timings"].get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise RecordError(f"{source}: timings.{key} is {value!r}, expected a number")
    if config_hash(record["config"]) != record["config_hash"]:
        raise RecordError(f"{source}: config_hash does not match the config (the file was edited or corrupted)")
    return record


def write_record(path: Path, record: Mapping[str, Any]) -> Path:
    """Validate then write atomically (temp file in the same directory + rename)."""
    record = validate(dict(record), source=str(path))
    return atomic_write_text(Path(path), json.dumps(record, indent=2, sort_keys=True) + "\n")


def read_record(path: Path) -> dict[str, Any]:
    """Read and validate one record file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise RecordError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordError(f"{path}: corrupt JSON ({exc.msg} at line {exc.lineno}); delete it and re-run") from None
    return validate(record, source=str(path))


@dataclass
class Store:
    """The records under one results directory."""

    results_dir: Path

    @property
    def records_dir(self) -> Path:
        return Path(self.results_dir) / "records"

    def path_for(self, record: Mapping[str, Any]) -> Path:
        return record_path(self.results_dir, record["task"], record["method"], record["seed"], record["cell_key"])

    def write(self, record: Mapping[str, Any]) -> Path:
        return write_record(self.path_for(record), record)

    def find(self, task: str, method: str, seed: int, key: str) -> dict[str, Any] | None:
        """The record of a cell, or None.  A corrupt file raises :class:`RecordError`."""
        path = record_path(self.results_dir, task, method, seed, key)
        return read_record(path) if path.exists() else None

    def paths(self) -> list[Path]:
        if not self.records_dir.exists():
            return []
        return sorted(p for p in self.records_dir.rglob("*.json") if not p.name.startswith(".tmp-"))

    def load_all(self, statuses: Iterable[str] = ("ok",)) -> list[dict[str, Any]]:
        """Every record with one of ``statuses``; corrupt files raise :class:`RecordError`."""
        wanted = set(statuses)
        return [r for r in (read_record(p) for p in self.paths()) if r["status"] in wanted]
