"""Grouping of result records into the rows that leaderboard, compare and check read."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable

from harness.core.records import method_label


def table_key(r: dict[str, Any]) -> tuple[str, str, str, str]:
    """Records in one table share task, task version, model and task config."""
    return (r["task"], r["task_version"], r["model"], _task_cfg(r))


def _task_cfg(r: dict[str, Any]) -> str:
    from harness.core.records import side_config_hash

    return side_config_hash(r["config"], "task")


def row_key(r: dict[str, Any]) -> tuple[str, str, str]:
    """Records in one row also share method, method version and full method config."""
    from harness.core.records import side_config_hash

    return (method_label(r["method"], r["method_params"]), r["method_version"], side_config_hash(r["config"], "method"))


def group(records: Iterable[dict[str, Any]]) -> dict[tuple, dict[tuple, list[dict[str, Any]]]]:
    """``{table_key: {row_key: [records sorted by seed]}}``; a later record of the same seed wins."""
    tables: dict[tuple, dict[tuple, dict[int, dict[str, Any]]]] = defaultdict(lambda: defaultdict(dict))
    for r in records:
        seeds = tables[table_key(r)][row_key(r)]
        prev = seeds.get(r["seed"])
        if prev is None or prev["provenance"]["timestamp"] <= r["provenance"]["timestamp"]:
            seeds[r["seed"]] = r
    return {
        t: {k: [rows[s] for s in sorted(rows)] for k, rows in sorted(table.items())}
        for t, table in sorted(tables.items())
    }
