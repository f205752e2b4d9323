"""Records you can trust (issue 14): a cell's identity covers every input, nothing a method does ends the run,
names stay inside the results directory, and bad input is one line before any work.

Each test here is a regression test of one case the issue measured on main; README "Guarantees" names them.
"""

from __future__ import annotations

import sys

import pytest

from harness.core import registry
from harness.core.records import Store
from harness.core.runner import run

import trust_plugin  # noqa: F401  (the misbehaving toy methods)
from toy_plugin import toy_spec


def _by_method(summary) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in summary.records:
        out.setdefault(r["method"] if not r["method_params"] else f"{r['method']}{r['method_params']}", []).append(r)
    return out


# ------------------------------------------------------------ nothing a method does ends the run
def test_sys_exit_in_a_method_is_an_error_record_and_the_run_goes_on(results_dir):
    summary = run(toy_spec(results_dir, ["trust-misbehave", "toy-good"], seeds=[0, 1], grid={"how": ["exit", "base"]}))
    errors = [r for r in summary.records if r["method"] == "trust-misbehave"]
    assert [r["status"] for r in errors] == ["error"] * 4
    assert sum(r["error"].startswith("SystemExit: the cell called sys.exit(3)") for r in errors) == 2
    assert sum(r["error"].startswith("_Custom: not an Exception") for r in errors) == 2
    assert [r["status"] for r in summary.records if r["method"] == "toy-good"] == ["ok", "ok"]
    assert len(Store(results_dir).paths()) == 6


def test_isolate_turns_os_exit_into_an_error_record(results_dir):
    spec = toy_spec(results_dir, ["trust-misbehave", "toy-good"], seeds=[0, 1], grid={"how": ["os_exit"]},
                    isolate=True, plugins=("trust_plugin",), threads_per_cell=1)
    summary = run(spec)
    died = [r for r in summary.records if r["method"] == "trust-misbehave"]
    assert [r["status"] for r in died] == ["error", "error"]
    assert all("WorkerDied" in r["error"] and "exited with code 7" in r["error"] for r in died)
    assert [r["status"] for r in summary.records if r["method"] == "toy-good"] == ["ok", "ok"]
    assert {r["provenance"]["execution"]["executor"] for r in summary.records} == {"local:1"}


def test_cell_timeout_stops_the_cell_and_records_why(results_dir):
    spec = toy_spec(results_dir, ["trust-misbehave", "toy-good"], seeds=[0], grid={"how": ["sleep"], "seconds": [60]},
                    cell_timeout=3, plugins=("trust_plugin",), threads_per_cell=1)
    import time

    t0 = time.monotonic()
    summary = run(spec)
    assert time.monotonic() - t0 < 50
    slow = [r for r in summary.records if r["method"] == "trust-misbehave"]
    assert len(slow) == 1 and slow[0]["status"] == "error"
    assert slow[0]["error"].startswith("CellTimeout: the cell ran past --cell-timeout 3 s")
    assert [r["status"] for r in summary.records if r["method"] == "toy-good"] == ["ok"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS is measured against /proc")
def test_cell_memory_limit_records_an_error_with_the_reason(results_dir):
    spec = toy_spec(results_dir, ["trust-misbehave"], seeds=[0], grid={"how": ["alloc"], "gb": [3.0, 0.01]},
                    cell_memory_gb=1.0, plugins=("trust_plugin",), threads_per_cell=1)
    summary = run(spec)
    by_gb = {r["method_params"]["gb"]: r for r in summary.records}
    assert by_gb[3.0]["status"] == "error"
    assert by_gb[3.0]["error"].startswith("CellMemoryLimit: the cell exceeded --cell-memory 1 GB")
    assert by_gb[0.01]["status"] == "ok"
