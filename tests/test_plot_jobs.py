"""The leaderboard's plots as independent jobs (harness.report.plots): how they are cut, and that rendering
them here or through another map (a run's worker processes) gives the same files in the same order."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.report import plots as P


def _per_task_plotter(records, out_dir: Path) -> list[Path]:
    written = []
    for task in sorted({r["task"] for r in records}):
        path = Path(out_dir) / f"{task.replace('/', '-')}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(str(sum(r["task"] == task for r in records)))
        written.append(path)
    return written


def _across_tasks_plotter(records, out_dir: Path) -> list[Path]:
    path = Path(out_dir) / "all.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(str(len(records)))
    return [path]


def _broken_plotter(records, out_dir: Path) -> list[Path]:
    raise RuntimeError("no axes")


@pytest.fixture
def families(monkeypatch):
    monkeypatch.setattr(P, "_PLOTTERS", {})
    monkeypatch.setattr(P, "_PER_TASK", set())
    P.register_plotter("fam-b", _per_task_plotter, per_task=True)
    P.register_plotter("fam-a", _across_tasks_plotter)
    P.register_plotter("fam-c", _broken_plotter)


def _records() -> list[dict]:
    rows = [("fam-b", "x/2", "ok"), ("fam-b", "x/1", "ok"), ("fam-b", "x/1", "ok"), ("fam-a", "y/1", "ok"),
            ("fam-a", "y/2", "ok"), ("fam-a", "y/2", "error"), ("fam-c", "z/1", "ok")]
    return [{"family": f, "task": t, "status": s} for f, t, s in rows]


def test_jobs_are_per_family_and_per_task_where_the_plotter_allows(families):
    jobs = P.plot_jobs([], _records())
    assert [(j.family, sorted({r["task"] for r in j.records})) for j in jobs] == [
        ("fam-a", ["y/1", "y/2"]), ("fam-b", ["x/1"]), ("fam-b", ["x/2"]), ("fam-c", ["z/1"])]
    assert len(jobs[0].records) == 2  # ok records only
    assert len(jobs[1].records) == 2


def test_any_map_gives_the_same_files_in_the_same_order(families, tmp_path, capsys):
    def reversed_map(fn, calls):  # runs the calls last to first, returns them in order (as map_on_workers)
        return list(reversed([fn(*args) for args in reversed(calls)]))

    here = P.render_plots(P.plot_jobs([], _records()), tmp_path / "here")
    there = P.render_plots(P.plot_jobs([], _records()), tmp_path / "there", reversed_map)
    assert [p.name for p in here] == [p.name for p in there] == ["all.txt", "x-1.txt", "x-2.txt"]
    assert [p.read_text() for p in here] == [p.read_text() for p in there] == ["2", "2", "1"]
    assert capsys.readouterr().err.count("warning: fam-c plots failed: RuntimeError: no axes") == 2
