"""Core harness: registry, records, runner (isolation, resume), stats, leaderboard, compare, check, CLI."""

from __future__ import annotations

import json
import math
import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as st

from harness.core import registry
from harness.report.check import build_reference, check, read_reference, write_reference
from harness.cli import main
from harness.report.compare import compare
from harness.errors import DuplicateNameError, RecordError, UnknownNameError
from harness.report.leaderboard import build_tables, render_csv, render_markdown
from harness.core.method import Method
from harness.core.records import Store, read_record, validate, write_record
from harness.core.cell import RunSpec, expand
from harness.core.runner import run
from toy_plugin import toy_spec
from harness.report.stats import mean_ci, paired_difference, separated_levels


# ---------------------------------------------------------------- registry
def test_unknown_name_suggests_close_match():
    with pytest.raises(UnknownNameError, match="did you mean 'toy/vector'"):
        registry.get_task("toy/vectr")
    with pytest.raises(UnknownNameError, match="toy-good"):
        registry.get_method("toy-god")


def test_duplicate_name_fails_loudly():
    with pytest.raises(DuplicateNameError, match="registered twice"):
        @registry.register_method("toy-good", family="toy", version="1", description="clash")
        class Clash(Method):
            pass


def test_entry_point_plugin_is_discovered(tmp_path, monkeypatch):
    """A tiny installed distribution advertising a method in the harness.methods group."""
    pkg = tmp_path / "site"
    (pkg / "tiny_plugin").mkdir(parents=True)
    (pkg / "tiny_plugin" / "__init__.py").write_text(textwrap.dedent("""
        from harness.core.method import Method
        from harness.core.registry import register_method

        @register_method("tiny-plugin-method", family="toy", version="3", description="from a plugin")
        class TinyPlugin(Method):
            def predict(self, x):
                return x
    """))
    dist = pkg / "tiny_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tiny-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[harness.methods]\ntiny = tiny_plugin\n")
    monkeypatch.syspath_prepend(str(pkg))
    try:
        loaded = registry.load_entry_points()
        assert "tiny" in loaded
        entry = registry.get_method("tiny-plugin-method")
        assert entry.version == "3" and entry.source == "tiny_plugin"
    finally:
        registry.unregister("tiny-plugin-method")
        sys.modules.pop("tiny_plugin", None)


# ---------------------------------------------------------------- records
def _one_record(results_dir: Path) -> tuple[Path, dict]:
    summary = run(toy_spec(results_dir, ["toy-good"], seeds=[0]))
    path = Store(results_dir).paths()[0]
    return path, summary.records[0]


def test_record_round_trip_and_provenance(results_dir):
    path, rec = _one_record(results_dir)
    back = read_record(path)
    assert back == rec
    assert back["status"] == "ok" and back["main_metric"] == "err"
    prov = back["provenance"]
    assert set(prov) >= {"commit", "dirty", "packages", "machine", "timestamp", "deterministic"}
    assert prov["packages"]["torch"] and prov["packages"]["numpy"]
    assert back["timings"]["peak_rss_mb"] > 0 and back["timings"]["wall_s"] >= 0


def test_corrupt_and_foreign_files_name_the_file(results_dir, tmp_path):
    path, rec = _one_record(results_dir)
    path.write_text(path.read_text()[:40])
    with pytest.raises(RecordError, match=str(path).replace(".", r"\.") + ".*corrupt JSON"):
        read_record(path)
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"hello": 1}))
    with pytest.raises(RecordError, match="foreign.json: not a harness result record"):
        read_record(foreign)
    edited = dict(rec, config={"task": {"n": 99}, "method": {}})
    with pytest.raises(RecordError, match="config_hash does not match"):
        validate(edited)
    bad_metric = dict(rec, metrics={"err": "x", "score": 1.0})
    with pytest.raises(RecordError, match="metric 'err'"):
        validate(bad_metric)


def test_write_is_atomic_and_validated(results_dir, tmp_path):
    _, rec = _one_record(results_dir)
    target = tmp_path / "out" / "r.json"
    with pytest.raises(RecordError):
        write_record(target, dict(rec, status="maybe"))
    assert not target.exists()
    write_record(target, rec)
    assert read_record(target) == rec
    assert not list(target.parent.glob(".tmp-*"))
    mask = os.umask(0o022)
    try:
        write_record(target, rec)
    finally:
        os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o644  # like open(): readable by others, not the temp file's 0600


# ---------------------------------------------------------------- runner
def test_failing_methods_become_error_records_and_the_run_continues(results_dir):
    summary = run(toy_spec(results_dir, ["toy-fail", "toy-nan", "toy-shape", "toy-type", "toy-good"], seeds=[0, 1]))
    by_method = {}
    for r in summary.records:
        by_method.setdefault(r["method"], []).append(r)
    assert all(r["status"] == "ok" for r in by_method["toy-good"]) and len(by_method["toy-good"]) == 2
    errors = {m: by_method[m][0]["error"] for m in ("toy-fail", "toy-nan", "toy-shape", "toy-type")}
    assert all(by_method[m][0]["status"] == "error" for m in errors)
    assert "deliberate failure" in errors["toy-fail"]
    assert "not finite" in errors["toy-nan"]
    assert "shape" in errors["toy-shape"]
    assert "numpy array" in errors["toy-type"]
    assert len(summary.failed) == 8 and not summary.ok
    assert len(Store(results_dir).paths()) == 10  # every cell recorded, errors included


def test_rerun_does_no_work_and_gives_identical_metrics(results_dir):
    first = run(toy_spec(results_dir, ["toy-good", "toy-zero"]))
    second = run(toy_spec(results_dir, ["toy-good", "toy-zero"]))
    assert first.ran == 6 and second.ran == 0 and second.skipped == 6
    assert [r["metrics"] for r in first.records] == [r["metrics"] for r in second.records]
    forced = run(toy_spec(results_dir, ["toy-good"], force=True))
    assert forced.ran == 3
    assert [r["metrics"] for r in forced.records] == [r["metrics"] for r in first.records if r["method"] == "toy-good"]


def test_interrupted_run_resumes_without_duplicates_or_losses(results_dir, monkeypatch):
    calls = {"n": 0}
    original = sys.modules["toy_plugin"].Good.predict

    def interrupt_on_third(self, x):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, x)

    monkeypatch.setattr(sys.modules["toy_plugin"].Good, "predict", interrupt_on_third)
    with pytest.raises(KeyboardInterrupt):
        run(toy_spec(results_dir, ["toy-good"], seeds=[0, 1, 2, 3]))
    assert len(Store(results_dir).paths()) == 2
    monkeypatch.setattr(sys.modules["toy_plugin"].Good, "predict", original)
    resumed = run(toy_spec(results_dir, ["toy-good"], seeds=[0, 1, 2, 3]))
    assert resumed.skipped == 2 and resumed.ran == 2
    seeds = sorted(r["seed"] for r in Store(results_dir).load_all())
    assert seeds == [0, 1, 2, 3]


def test_error_cells_are_retried_on_rerun(results_dir):
    run(toy_spec(results_dir, ["toy-fail"], seeds=[0]))
    again = run(toy_spec(results_dir, ["toy-fail"], seeds=[0]))
    assert again.ran == 1 and len(Store(results_dir).paths()) == 1


def test_grid_and_overrides_expand_into_separate_cells(results_dir):
    spec = toy_spec(results_dir, ["toy-good", "toy-zero"], seeds=[0], grid={"scale": [0.0, 0.5]},
                    task_overrides={"n": 8})
    cells = expand(spec)
    assert [(c.method_entry.name, c.method_params) for c in cells] == [
        ("toy-good", {"scale": 0.0}), ("toy-good", {"scale": 0.5}), ("toy-zero", {})]
    assert all(c.config.n == 8 for c in cells)
    summary = run(spec)
    errs = {r["method_params"].get("scale"): r["metrics"]["err"] for r in summary.records if r["method"] == "toy-good"}
    assert errs[0.0] == 0.0 and errs[0.5] > 0
    with pytest.raises(Exception, match="no selected task has the config key"):
        expand(toy_spec(results_dir, ["toy-good"], task_overrides={"nope": 1}))
    with pytest.raises(Exception, match="no selected method has the parameter"):
        expand(toy_spec(results_dir, ["toy-zero"], grid={"k": [1]}))


def test_device_reaches_methods(results_dir):
    seen = {}

    @registry.register_method("toy-device", family="toy", version="1", description="records its device")
    class DeviceProbe(Method):
        def predict(self, x):
            seen["device"] = str(self.device)
            seen["seed"] = self.seed
            return x

    try:
        run(toy_spec(results_dir, ["toy-device"], seeds=[7]))
    finally:
        registry.unregister("toy-device")
    assert seen == {"device": "cpu", "seed": 7}


# ---------------------------------------------------------------- stats
def test_mean_ci_matches_t_interval():
    x = [0.1, 0.4, 0.35, 0.2]
    m, h = mean_ci(x)
    lo, hi = st.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=st.sem(x))
    assert m == pytest.approx(np.mean(x)) and h == pytest.approx((hi - lo) / 2)
    assert math.isnan(mean_ci([1.0])[1])


def test_separated_levels_is_the_largest_set_of_disjoint_intervals():
    # the first saturated-sharp model's shape: 1.0 +- 0, 0.926 +- 0.046, 0.862 +- 0.164 (overlaps both), 0.582 +- 0.12
    assert separated_levels([(1.0, 0.0), (0.926, 0.046), (0.862, 0.164), (0.582, 0.12)]) == [0, 1, 3]
    # the first saturated model's: 0.72 +- 0.089 and 0.582 +- 0.12 overlap, so two levels (either of them with 1.0)
    assert len(separated_levels([(1.0, 0.0), (0.979, 0.023), (0.72, 0.089), (0.582, 0.12)])) == 2
    # touching ends are not disjoint; NaN half-widths (one seed) take no part; best first by mean
    assert separated_levels([(1.0, 0.5), (2.0, 0.5)]) == [0]  # the one with the lower upper end
    assert separated_levels([(0.0, 0.1), (5.0, float("nan")), (1.0, 0.1)]) == [2, 0]
    assert separated_levels([]) == [] and separated_levels([(1.0, float("nan"))]) == []
    # greedy by upper end is optimal where greedy by mean is not: a wide top interval would block two levels
    wide = [(10.0, 9.5), (3.0, 0.1), (1.0, 0.1), (-5.0, 0.1)]
    assert separated_levels(wide) == [1, 2, 3]


def test_paired_difference():
    a, b = [0.9, 0.8, 0.85], [0.7, 0.65, 0.7]
    d = paired_difference(a, b)
    assert d.mean == pytest.approx(np.mean(np.subtract(a, b)))
    assert d.p_value == pytest.approx(st.ttest_rel(a, b).pvalue)
    assert d.ci_low > 0


# ---------------------------------------------------------------- leaderboard, compare, check
def test_leaderboard_ranks_by_direction(results_dir):
    run(toy_spec(results_dir, ["toy-good", "toy-zero"]))
    tables = build_tables(Store(results_dir).load_all())
    assert len(tables) == 1
    t = tables[0]
    assert not t.higher_is_better  # err: lower is better
    assert [r.method for r in t.rows] == ["toy-good", "toy-zero"]
    md = render_markdown(tables)
    assert "toy-zero (baseline)" in md and "err (95% CI)" in md
    assert "toy-good" in render_csv(tables)
    levels = separated_levels([r.main for r in t.rows])
    assert f"CI-separated levels: {len(levels)} " in md


def test_leaderboard_shows_only_the_tasks_chosen_columns(results_dir, monkeypatch):
    run(toy_spec(results_dir, ["toy-good", "toy-zero"]))
    tables = build_tables(Store(results_dir).load_all())
    assert " score " in render_markdown(tables)
    monkeypatch.setattr(sys.modules["toy_plugin"].ToyTask, "leaderboard_metrics", ())
    md = render_markdown(tables)
    assert " score " not in md and "err (95% CI)" in md and "1 more metrics per row" in md
    assert "mean_score" in render_csv(tables)  # the CSV keeps every metric


def test_compare_verdict(results_dir):
    run(toy_spec(results_dir, ["toy-good", "toy-zero"], task_overrides={"n": 512}))
    c = compare(Store(results_dir).load_all(), "toy-good", "toy-zero", "toy/vector")
    assert c.seeds == [0, 1, 2] and c.diff.mean < 0
    assert c.verdict.startswith("toy-good beats toy-zero")


def test_check_flags_edited_reference(results_dir, tmp_path):
    run(toy_spec(results_dir, ["toy-good", "toy-zero"]))
    records = Store(results_dir).load_all()
    ref = build_reference(records)
    assert check(records, ref) == []
    path = write_reference(ref, tmp_path / "reference.json")
    doc = read_reference(path)
    entry = next(e for e in doc["entries"] if e["method"] == "toy-good")
    entry["metrics"]["score"]["value"] += 0.5  # current now far below the reference
    findings = [f for f in check(records, doc) if f.failing]
    assert [(f.task, f.method, f.metric, f.kind) for f in findings] == [("toy/vector", "toy-good", "score", "regression")]
    # a worse value in the lower-is-better direction is a regression too; a better one is not
    entry["metrics"]["score"]["value"] -= 0.5
    entry["metrics"]["err"]["value"] = -1.0
    assert [f.metric for f in check(records, doc) if f.failing] == ["err"]
    entry["metrics"]["err"]["value"] = 10.0
    assert [f.kind for f in check(records, doc)] == ["improvement"]
    # a reference entry with no current results fails
    assert [f.kind for f in check([r for r in records if r["method"] != "toy-good"], ref)] == ["missing"]


# ---------------------------------------------------------------- CLI end to end
def test_cli_unknown_task_exits_2_with_suggestion(capsys, results_dir):
    code = main(["run", "--tasks", "toy/vectr", "--results-dir", str(results_dir), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "did you mean 'toy/vector'" in err


def test_cli_run_check_compare_leaderboard(capsys, results_dir, tmp_path):
    common = ["--results-dir", str(results_dir)]
    assert main(["run", "--tasks", "toy/vector", "--methods", "toy-good", "toy-zero", "--seeds", "0", "1", "2",
                 "--set", "n=512", "--no-progress", "--device", "cpu", *common]) == 0
    out = capsys.readouterr().out
    assert "toy-good" in out and "6 cells: 6 run" in out
    assert (results_dir / "LEADERBOARD.md").exists()
    ref = tmp_path / "ref.json"
    assert main(["reference", "--out", str(ref), *common]) == 0
    assert main(["check", "--reference", str(ref), *common]) == 0
    # --suite keeps only that suite's cells: toy/vector at n=512 is not a default-suite cell (its config differs)
    capsys.readouterr()
    assert main(["reference", "--out", str(tmp_path / "suite.json"), "--suite", "quick", *common]) == 2
    assert "no results" in capsys.readouterr().err and not (tmp_path / "suite.json").exists()
    doc = json.loads(ref.read_text())
    doc["entries"][0]["metrics"]["score"]["value"] = 5.0
    ref.write_text(json.dumps(doc))
    capsys.readouterr()
    assert main(["check", "--reference", str(ref), *common]) == 1
    out = capsys.readouterr().out
    assert "regression" in out and "toy/vector" in out and "score" in out and doc["entries"][0]["method"] in out
    assert main(["compare", "toy-good", "toy-zero", "--task", "toy/vector", *common]) == 0
    out = capsys.readouterr().out
    assert "toy-good beats toy-zero on toy/vector" in out and "difference" in out
    assert main(["leaderboard", "--format", "csv", *common]) == 0
    assert "main_mean" in capsys.readouterr().out
    assert main(["run", "--tasks", "toy/vector", "--methods", "toy-fail", "--seeds", "0", "--no-progress", *common]) == 1
    assert "FAILED toy/vector | toy-fail | seed 0: RuntimeError: deliberate failure" in capsys.readouterr().out


def test_cli_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "toy/vector" in out and "toy-zero" in out


def test_old_style_dict_config_is_a_clear_error():
    from harness.core.registry import add_task
    from harness.core.task import Task
    from harness.errors import HarnessError

    class OldStyle(Task):
        family = "toy"
        default_config = {"n": 3}

    with pytest.raises(HarnessError, match="declare the settings as a frozen dataclass"):
        add_task("toy/old-style", OldStyle, version="1", description="a dict config")


def test_config_override_of_the_wrong_type_names_the_key():
    from harness.core import registry
    from harness.errors import ConfigError

    task = registry.get_task("toy/vector").create()
    with pytest.raises(ConfigError, match="config key 'n' must be an integer"):
        task.resolve_config({"n": "abc"})
    assert task.resolve_config({"noise": 1}).noise == 1  # an int is a valid float
