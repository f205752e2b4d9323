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
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, get_args, get_origin, get_type_hints

from harness.errors import RecordError
from harness.core.io import atomic_write_text

SCHEMA = "harness-record"
SCHEMA_VERSION = 1
STATUSES = ("ok", "error")


@dataclass
class Record:
    """One cell's result: the schema of a record file, in one place.

    ``config`` is ``{"task": <task config>, "method": <every method parameter>}`` and ``config_hash`` its
    hash; ``cell_key`` hashes the whole identity (task + version, method + version, config hash, seed,
    model).  ``metrics`` are finite floats (empty when ``status`` is ``"error"``, then ``error`` says why);
    ``timings`` hold at least ``wall_s``, ``cpu_s`` and ``peak_rss_mb``; ``provenance`` says where and with
    what code the number was made; ``artifacts`` are small outputs kept for plots.  Files store
    :meth:`to_dict`; :func:`validate` checks a dict against these fields.
    """

    cell_key: str
    task: str
    task_version: str
    family: str
    method: str
    method_version: str
    method_params: dict
    baseline: bool
    model: str
    seed: int
    config: dict
    config_hash: str
    metrics: dict
    main_metric: str
    status: str
    error: Optional[str]
    timings: dict
    provenance: dict
    artifacts: dict = field(default_factory=dict)  # optional: absent in older records
    schema: str = SCHEMA
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _field_table() -> dict[str, tuple[tuple[type, ...], bool]]:
    """field -> (accepted types, required), read off :class:`Record`."""
    table = {}
    for f in fields(Record):
        hint = get_type_hints(Record)[f.name]
        types = tuple(get_origin(t) or t for t in (get_args(hint) or (hint,)))
        required = f.default is MISSING and f.default_factory is MISSING or f.name in ("schema", "schema_version")
        table[f.name] = (types, required)
    return table


_FIELDS = _field_table()
_TIMINGS = ("wall_s", "cpu_s", "peak_rss_mb")


def method_label(name: str, params: Mapping[str, Any]) -> str:
    """``topk-sae[k=16]`` for explicit parameters, plain name otherwise."""
    if not params:
        return name
    return name + "[" + ",".join(f"{k}={params[k]}" for k in sorted(params)) + "]"


def device_type(record: Mapping[str, Any]) -> str:
    """The type of device a record was made on (``"cpu"``, ``"cuda"``): its ``provenance.device_type``, else
    read off ``provenance.device`` (records written before ``device_type`` existed), else ``"cpu"``."""
    prov = record.get("provenance") or {}
    kind = prov.get("device_type") or str(prov.get("device") or "cpu").split(":")[0]
    return str(kind)


def canonical_json(value: Any) -> str:
    """Deterministic JSON (sorted keys, no whitespace) used for hashing."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def config_hash(config: Mapping[str, Any]) -> str:
    """First 16 hex digits of the SHA-256 of the canonical JSON of ``config``."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:16]


def side_config_hash(config: Mapping[str, Any], side: str) -> str:
    """The hash of one side (``"task"`` or ``"method"``) of a record's config: its settings, and with them the
    content hashes of that side's external inputs when it has any (``config["inputs"][side]``; cells
    without inputs keep the plain hash of their settings)."""
    inputs = (config.get("inputs") or {}).get(side)
    if not inputs:
        return config_hash(config[side])
    return config_hash({side: config[side], "inputs": inputs})


def cell_key(task: str, task_version: str, method: str, method_version: str, cfg_hash: str, seed: int,
             model: str) -> str:
    """Identity of a cell: two runs with the same key are the same experiment."""
    ident = canonical_json([task, task_version, method, method_version, cfg_hash, int(seed), model])
    return hashlib.sha256(ident.encode()).hexdigest()[:20]


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def record_path(results_dir: Path, task: str, method: str, seed: int, key: str) -> Path:
    """``<results_dir>/records/<task>/<method>/seed<S>-<key>.json``; a path that would lie outside
    ``records/`` (a name or key such as ``..``) is a :class:`RecordError`."""
    base = Path(results_dir) / "records"
    path = base / _slug(task) / _slug(method) / f"seed{seed}-{key}.json"
    inside = os.path.normpath(path).startswith(os.path.join(os.path.normpath(base), ""))
    if not inside or any(part in (".", "..") for part in (_slug(task), _slug(method))) or "/" in str(key):
        raise RecordError(f"the record of task {task!r}, method {method!r}, seed {seed}, key {key!r} would be written "
                          f"outside {base}; refusing")
    return path


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
        if not _finite(value):
            raise RecordError(f"{source}: metric {key!r} is {_short(value)}, expected a finite number")
    _validate_parts(record, source)
    if record["status"] == "ok":
        if record["main_metric"] not in record["metrics"]:
            raise RecordError(f"{source}: main metric {record['main_metric']!r} missing from metrics")
    elif not record["error"]:
        raise RecordError(f"{source}: status is 'error' but no error message is recorded")
    for key in _TIMINGS:
        value = record["timings"].get(key)
        if not _finite(value):
            raise RecordError(f"{source}: timings.{key} is {_short(value)}, expected a finite number")
    if config_hash(record["config"]) != record["config_hash"]:
        raise RecordError(f"{source}: config_hash does not match the config (the file was edited or corrupted)")
    return record


def _finite(value: Any) -> bool:
    """A real, finite number that is also finite as a float (``10**400`` is an int no float can hold)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _validate_parts(record: dict[str, Any], source: str) -> None:
    """The nested fields readers index: ``config.task`` / ``config.method`` (and ``config.inputs``) objects,
    ``provenance.timestamp`` a string, ``seed`` a non-negative integer."""
    config = record["config"]
    for side in ("task", "method"):
        if not isinstance(config.get(side), dict):
            raise RecordError(f"{source}: field 'config' lacks the object {side!r} (it holds "
                              f"{', '.join(map(repr, sorted(config))) or 'nothing'})")
    inputs = config.get("inputs", {})
    if not isinstance(inputs, dict) or not all(isinstance(v, dict) for v in inputs.values()):
        raise RecordError(f"{source}: field 'config.inputs' must map 'task' / 'method' to objects")
    if not isinstance(record["provenance"].get("timestamp"), str):
        raise RecordError(f"{source}: field 'provenance.timestamp' is missing or not a string")
    if record["seed"] < 0:
        raise RecordError(f"{source}: field 'seed' is {record['seed']}, expected a non-negative integer")


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

    def check_writable(self, stale_after_s: float = 3600.0) -> None:
        """Before a run's first cell: the results directory is a directory this process can write records into
        (a :class:`RecordError` in one line otherwise); temporary files of writes that died more than
        ``stale_after_s`` ago are removed."""
        import tempfile
        import time

        root = Path(self.results_dir)
        for d in (root, self.records_dir):
            if d.exists() and not d.is_dir():
                where = f"results directory {root}" + (f": {d}" if d != root else "")
                raise RecordError(f"{where} is a file, not a directory; pass another --results-dir")
        try:
            self.records_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.records_dir, prefix=".tmp-probe-"):
                pass
        except OSError as exc:
            raise RecordError(f"results directory {root} is not writable ({exc.strerror}: {exc.filename}); "
                              "pass another --results-dir") from None
        now = time.time()
        for tmp in self.records_dir.rglob(".tmp-*"):
            try:
                if tmp.is_file() and now - tmp.stat().st_mtime > stale_after_s:
                    tmp.unlink()
            except OSError:
                pass

    def check_readable(self) -> None:
        """For readers: the results directory exists and is a directory (one line otherwise; nothing is created)."""
        root = Path(self.results_dir)
        if not root.exists():
            raise RecordError(f"results directory {root} does not exist; run `harness run --results-dir {root}` first")
        if not root.is_dir() or (self.records_dir.exists() and not self.records_dir.is_dir()):
            raise RecordError(f"results directory {root} is not a directory of results (a file is in the way)")

    def find(self, task: str, method: str, seed: int, key: str) -> dict[str, Any] | None:
        """The record of a cell, or None.  A corrupt file raises :class:`RecordError`."""
        path = record_path(self.results_dir, task, method, seed, key)
        return read_record(path) if path.exists() else None

    def paths(self) -> list[Path]:
        if not self.records_dir.exists():
            return []
        return sorted(p for p in self.records_dir.rglob("*.json") if not p.name.startswith(".tmp-"))

    def load_all(self, statuses: Iterable[str] = ("ok",),
                 on_bad: Callable[[RecordError], None] | None = None) -> list[dict[str, Any]]:
        """Every record with one of ``statuses``.  A bad file (corrupt, foreign, invalid) raises
        :class:`RecordError`, or with ``on_bad`` is passed to it and skipped (``--skip-bad-records``)."""
        wanted = set(statuses)
        records = []
        for p in self.paths():
            try:
                r = read_record(p)
            except RecordError as exc:
                if on_bad is None:
                    raise
                on_bad(exc)
                continue
            if r["status"] in wanted:
                records.append(r)
        return records
