"""The CLI end to end on a real family (wine: the fastest clustering task)."""

from __future__ import annotations

import json

from harness.cli import main
from harness.core.records import Store


def test_run_twice_second_does_no_work_and_check_passes(capsys, results_dir, tmp_path):
    args = ["run", "--tasks", "clustering/wine", "--methods", "kmeans-raw", "ae-kmeans", "--seeds", "0", "1",
            "--no-progress", "--device", "cpu", "--results-dir", str(results_dir)]
    assert main(args) == 0
    first = {p.name: json.loads(p.read_text())["metrics"] for p in Store(results_dir).paths()}
    out = capsys.readouterr().out
    assert "4 cells: 4 run, 0 already recorded, 0 failed" in out and "clustering/wine" in out
    assert main(args) == 0
    assert "4 cells: 0 run, 4 already recorded, 0 failed" in capsys.readouterr().out
    second = {p.name: json.loads(p.read_text())["metrics"] for p in Store(results_dir).paths()}
    assert first == second and len(first) == 4

    ref = tmp_path / "reference.json"
    assert main(["reference", "--out", str(ref), "--results-dir", str(results_dir)]) == 0
    assert main(["check", "--reference", str(ref), "--results-dir", str(results_dir)]) == 0
    doc = json.loads(ref.read_text())
    entry = next(e for e in doc["entries"] if e["method"] == "ae-kmeans")
    entry["metrics"]["nmi"]["value"] += 0.2
    ref.write_text(json.dumps(doc))
    capsys.readouterr()
    assert main(["check", "--reference", str(ref), "--results-dir", str(results_dir)]) == 1
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if "regression" in l and "|" in l)
    assert "clustering/wine" in line and "ae-kmeans" in line and "nmi" in line


def test_unknown_method_exits_2(capsys, results_dir):
    assert main(["run", "--tasks", "clustering/wine", "--methods", "kmeans-rw", "--results-dir", str(results_dir)]) == 2
    assert "did you mean 'kmeans-raw'" in capsys.readouterr().err
