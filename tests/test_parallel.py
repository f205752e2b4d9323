"""`harness run --jobs N`: worker processes, the thread policy, and the cache lock.

Quality metrics must not depend on how cells are executed (same seed, same thread budget -> same metrics),
a worker that dies costs only its cell, and two processes never build one cache entry at once.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from collections import deque
from pathlib import Path

import pytest

from harness.core import registry
from harness.core.cache import cache_lock
from harness.core.cell import RunSpec
from harness.core.records import Store
from harness.core.runner import run
from harness.core.threads import default_threads, resolve_jobs, thread_budget

TASKS = ["clustering/wine", "circuits/ioi", "icl/linear-d5"]
METHODS = ["kmeans-raw", "gmm", "eap", "act-patch-mean", "ols", "ridge"]
OVERRIDES = {"n_fit": 8, "n_eval": 16}


def spec(tmp_path: Path, name: str, **kw) -> RunSpec:
    base = dict(tasks=TASKS, methods=METHODS, seeds=[0, 1], results_dir=tmp_path / name,
                cache_dir=tmp_path / "cache", progress=False, threads_per_cell=1)
    return RunSpec(**{**base, **kw})


def metrics_by_cell(summary) -> dict:
    return {r["cell_key"]: r["metrics"] for r in summary.records}


def test_jobs_give_the_metrics_of_a_serial_run(tmp_path):
    registry.load_all()
    serial = run(spec(tmp_path, "serial"))
    parallel = run(spec(tmp_path, "jobs2", jobs=2))
    assert serial.ok and parallel.ok and serial.ran == parallel.ran > 8
    assert metrics_by_cell(serial) == metrics_by_cell(parallel)  # bit-identical
    assert [r["cell_key"] for r in serial.records] == [r["cell_key"] for r in parallel.records]
    execution = {r["provenance"]["execution"]["executor"] for r in parallel.records}
    assert execution == {"local:2"} and {r["provenance"]["execution"]["threads"] for r in parallel.records} == {1}
    again = run(spec(tmp_path, "jobs2", jobs=2))  # resume: nothing left to do
    assert again.ran == 0 and again.skipped == parallel.ran


def test_work_after_the_cells_runs_in_the_workers_or_here(tmp_path):
    """``after_cells``' map_calls spreads calls over the run's workers under --jobs (the leaderboard's plots),
    runs them here otherwise, and returns results in call order either way."""
    import os

    registry.load_all()
    small = dict(tasks=["clustering/wine"], methods=["kmeans-raw"], seeds=[0, 1, 2])
    serial = run(spec(tmp_path, "serial", **small), after_cells=lambda m: m(os.getpid, [()] * 4))
    assert serial.after_cells == [os.getpid()] * 4
    jobs = run(spec(tmp_path, "jobs", jobs=2, **small), after_cells=lambda m: m(os.getpid, [()] * 6))
    assert len(jobs.after_cells) == 6 and os.getpid() not in jobs.after_cells
    assert len(set(jobs.after_cells)) == 2  # both workers took calls


def test_calls_whose_worker_dies_or_raises_are_redone_here(tmp_path):
    import os

    registry.load_plugin_module("parallel_plugin")
    registry.load_all()
    import parallel_plugin

    pid = os.getpid()
    for fn in (parallel_plugin.exit_unless_in, parallel_plugin.fail_in_workers):
        summary = run(spec(tmp_path, fn.__name__, tasks=["clustering/wine"], methods=["kmeans-raw"], seeds=[0, 1],
                           jobs=2, plugins=("parallel_plugin",)),
                      after_cells=lambda m, fn=fn: m(fn, [(pid,)] * 3))
        assert summary.ok and summary.after_cells == ["here"] * 3


def test_a_worker_that_dies_costs_only_its_cell(tmp_path):
    registry.load_plugin_module("parallel_plugin")
    registry.load_all()
    s = RunSpec(tasks=["toy/vector"], methods=["test-exit", "toy-good"], seeds=[0, 1],
                grid={"exit_code": [3]}, results_dir=tmp_path / "res", cache_dir=tmp_path / "cache",
                progress=False, jobs=2, threads_per_cell=1, plugins=("parallel_plugin",))
    summary = run(s)
    by_method = {}
    for r in summary.records:
        by_method.setdefault(r["method"], []).append(r)
    assert [r["status"] for r in by_method["toy-good"]] == ["ok", "ok"]
    assert [r["status"] for r in by_method["test-exit"]] == ["error", "error"]
    assert all("exited with code 3" in r["error"] for r in by_method["test-exit"])
    stored = Store(tmp_path / "res").load_all(statuses=("ok", "error"))
    assert len(stored) == 4 and len({r["cell_key"] for r in stored}) == 4


def _hold(entry: str, log: str, seconds: float) -> None:
    with cache_lock(entry):
        start = time.time()
        time.sleep(seconds)
        with open(log, "a") as fh:
            fh.write(json.dumps([start, time.time()]) + "\n")


def test_cache_lock_admits_one_process_at_a_time(tmp_path):
    ctx = mp.get_context("spawn")
    log = tmp_path / "log.jsonl"
    procs = [ctx.Process(target=_hold, args=(str(tmp_path / "entry"), str(log), 0.5)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    spans = sorted(json.loads(line) for line in log.read_text().splitlines())
    assert len(spans) == 3
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # no two holders overlap


def test_thread_policy():
    assert default_threads(1, free=8) == 8 and default_threads(3, free=8) == 2 and default_threads(4, free=2) == 1
    assert resolve_jobs("3") == 3 and resolve_jobs("auto") >= 1
    for bad in ("0", "-1", "many"):
        with pytest.raises(ValueError, match="--jobs"):
            resolve_jobs(bad)
    import torch

    before = torch.get_num_threads()
    with thread_budget(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_busy_elsewhere_leaves_out_this_process_own_threads(monkeypatch):
    """The machine's runnable count includes this process's spinning OpenMP threads; they are not other
    work (counting them made a serial run on an idle 2-core machine pick 1 thread)."""
    from harness.core import threads

    monkeypatch.setattr(threads, "runnable_tasks", lambda: 3)
    monkeypatch.setattr(threads, "own_runnable_threads", lambda: 3)  # this process: main thread + 2 spinning
    assert threads.busy_elsewhere(samples=3, interval_s=0) == 0
    monkeypatch.setattr(threads, "runnable_tasks", lambda: 5)
    assert threads.busy_elsewhere(samples=3, interval_s=0) == 2
    monkeypatch.setattr(threads, "runnable_tasks", lambda: None)  # no /proc/loadavg
    assert threads.busy_elsewhere(samples=3, interval_s=0) == 0
    assert threads.own_runnable_threads() >= 1  # the caller itself is running


def test_cli_rejects_bad_jobs_before_any_work(tmp_path, capsys):
    from harness.cli import main

    code = main(["run", "--tasks", "clustering/wine", "--jobs", "0", "--results-dir", str(tmp_path / "r")])
    assert code == 2 and "--jobs" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def _harness(*args: str, results: Path, cache: Path):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "harness", "run", *args, "--results-dir", str(results), "--cache-dir", str(cache),
           "--no-progress", "--threads-per-cell", "1"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_kill_9_of_the_driver_then_the_same_command_resumes(tmp_path):
    import os
    import signal

    args = ("--tasks", "clustering/digits", "clustering/wine", "--methods", "kmeans-raw", "gmm", "pca-kmeans",
            "--seeds", "0", "1", "--jobs", "2")
    records = tmp_path / "res" / "records"
    proc = _harness(*args, results=tmp_path / "res", cache=tmp_path / "cache")
    deadline = time.time() + 120
    def complete() -> list[Path]:  # a write interrupted by the kill leaves a hidden temporary file, never a record
        return [p for p in records.rglob("*.json") if not p.name.startswith(".")]

    while time.time() < deadline and proc.poll() is None and not complete():
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(complete())
    assert 0 < done_before < 12
    again = _harness(*args, results=tmp_path / "res", cache=tmp_path / "cache")
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert f"{done_before} already recorded" in out
    stored = Store(tmp_path / "res").load_all(statuses=("ok", "error"))
    assert len(stored) == 12 and len({r["cell_key"] for r in stored}) == 12  # every record readable, none twice


def test_two_runs_on_one_results_dir_and_cache(tmp_path):
    """Started together with overlapping cells, from a cold cache: every cell recorded once and valid, the
    activations gathered under the lock (one entry per hook, no stray temporary files)."""
    a = _harness("--tasks", "reconstruction/embedded-resid", "--methods", "identity", "pca", "--seeds", "0",
                 results=tmp_path / "res", cache=tmp_path / "cache")
    b = _harness("--tasks", "reconstruction/embedded-resid", "--methods", "pca", "random-dict", "--seeds", "0",
                 results=tmp_path / "res", cache=tmp_path / "cache")
    for p in (a, b):
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    stored = Store(tmp_path / "res").load_all(statuses=("ok", "error"))
    assert sorted(r["method"] for r in stored) == ["identity", "pca", "random-dict"]
    acts = sorted(p.name for p in (tmp_path / "cache" / "activations").iterdir() if not p.name.endswith(".lock"))
    assert len(acts) == 1 and acts[0].endswith(".safetensors")  # gathered once, no stray temporary file


def test_free_workers_keep_to_their_task_and_avoid_one_started_elsewhere():
    from harness.core.parallel import _Unit, pick_unit

    pending = [_Unit(k, deque([i])) for i, k in enumerate(["a", "a", "b", "b", "c"])]  # largest first
    assert pick_unit(pending, None, set(), set()) == 0  # first worker: the largest
    assert pick_unit(pending, None, set(), {"a"}) == 2  # second worker: not the task the first is building
    assert pick_unit(pending, "b", {"b"}, {"a"}) == 2  # affinity: the task it ran last
    assert pick_unit(pending, "c", {"b", "c"}, {"a"}) == 4  # affinity wins over size
    assert pick_unit(pending[:2], "c", {"b", "c"}, {"a"}) == 0  # only another worker's task left: share it
    assert pick_unit(pending[2:4], "c", {"c", "b"}, {"a"}) == 0  # a task it ran before, model still loaded
