"""Speed gate (harness.tracking.speed): the decision rule, and end to end on two toy trees with a planted slowdown."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from harness.cli import main
from harness.errors import ConfigError
from harness.tracking.speed import compare_speed, judge, render_report

KERNELS_FILE = '''
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Kernel:
    setup: Callable[[Any], Callable[[], Any]]
    gate_param: Any = None


def _work(param):
    import toymod
    return toymod.work


def _broken(param):
    import toymod
    return toymod.broken


KERNELS = {"work": Kernel(_work), "broken": Kernel(_broken)}
'''


def _tree(root: Path, sleep_s: float, broken: bool = False) -> Path:
    root.mkdir()
    body = "raise RuntimeError('kernel broken')" if broken else "return None"
    (root / "toymod.py").write_text(textwrap.dedent(f"""
        import time
        def work():
            time.sleep({sleep_s})
        def broken():
            {body}
    """))
    return root


@pytest.fixture
def kernels_file(tmp_path) -> Path:
    path = tmp_path / "kernels.py"
    path.write_text(KERNELS_FILE)
    return path


def test_judge_needs_both_the_factor_and_significance():
    rng = np.random.default_rng(0)
    base = list(1.0 + 0.01 * rng.random(9))
    assert judge(base, [1.5 * b for b in base], 1.2, 0.01)[3] == "slower"
    assert judge(base, [0.5 * b for b in base], 1.2, 0.01)[3] == "faster"
    ratio, p_slower, _, verdict = judge(base, [1.1 * b for b in base], 1.2, 0.01)
    assert verdict == "same" and ratio == pytest.approx(1.1) and p_slower < 0.01  # significant but small
    # one huge outlier makes a big ratio of medians impossible and a significant test impossible
    ratio, p_slower, _, verdict = judge([1, 1, 1, 1, 1], [1, 1, 1, 1, 100], 1.2, 0.01)
    assert verdict == "same" and ratio == 1.0 and p_slower > 0.01
    with pytest.raises(ValueError, match="two samples"):
        judge([1.0], [1.0], 1.2, 0.01)


def test_gate_flags_a_planted_sleep_and_passes_an_unchanged_tree(tmp_path, kernels_file):
    base = _tree(tmp_path / "base", 0.002)
    same = _tree(tmp_path / "same", 0.002)
    slow = _tree(tmp_path / "slow", 0.004)
    kw = dict(kernels=["work"], kernels_file=kernels_file, rounds=5, repeat=2, sample_s=0.01, progress=False)
    report = compare_speed(str(base), str(slow), **kw)
    [c] = report.comparisons
    assert c.verdict == "slower" and 1.5 < c.ratio < 2.5 and not report.ok
    assert c.confirmation["verdict"] == "slower"  # flagged twice
    assert "FAIL: work" in render_report(report)
    report = compare_speed(str(base), str(same), **kw)
    assert report.ok and report.comparisons[0].verdict == "same"


def test_gate_errors_on_head_fail_and_on_base_skip(tmp_path, kernels_file):
    good = _tree(tmp_path / "good", 0.001)
    bad = _tree(tmp_path / "bad", 0.001, broken=True)
    kw = dict(kernels=["broken"], kernels_file=kernels_file, rounds=3, repeat=1, sample_s=0.001, progress=False)
    report = compare_speed(str(good), str(bad), **kw)
    assert not report.ok and "kernel broken" in report.errors["broken"]
    report = compare_speed(str(bad), str(good), **kw)
    assert report.ok and "broken" in report.skipped
    with pytest.raises(ConfigError, match="unknown kernel"):
        compare_speed(str(good), str(good), kernels=["nope"], kernels_file=kernels_file, progress=False)


def test_cli_speed_exit_codes(tmp_path, kernels_file, capsys):
    base = _tree(tmp_path / "base", 0.002)
    slow = _tree(tmp_path / "slow", 0.005)
    args = ["speed", "--kernels", "work", "--kernels-file", str(kernels_file), "--rounds", "5", "--repeat", "2",
            "--sample-seconds", "0.01", "--json", str(tmp_path / "speed.json")]
    assert main([*args, "--base", str(base), "--head", str(slow)]) == 1
    assert "SLOWER" in capsys.readouterr().out and (tmp_path / "speed.json").exists()
    assert main([*args, "--base", str(base), "--head", str(base)]) == 0
    assert main(["speed", "--base", "no-such-revision-xyz", "--repo", str(tmp_path)]) == 2


def test_head_defaults_to_the_root_of_the_work_tree_from_a_subdirectory(tmp_path, kernels_file, monkeypatch):
    import subprocess

    repo = _tree(tmp_path / "repo", 0.001)
    (repo / "sub").mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    base = _tree(tmp_path / "base", 0.001)
    report = compare_speed(str(base), None, kernels=["work"], kernels_file=kernels_file, rounds=3, repeat=1,
                           sample_s=0.001, progress=False, repo=repo / "sub")
    assert report.head == f"working tree {repo.resolve()}" and report.ok
    assert report.comparisons and report.comparisons[0].verdict == "same"


def test_a_bias_of_one_long_lived_worker_is_not_confirmed(tmp_path, kernels_file):
    """The first head process is slow for its whole life, later ones are not: fresh-process rounds clear it."""
    base = _tree(tmp_path / "base", 0.002)
    head = tmp_path / "head"
    head.mkdir()
    (head / "toymod.py").write_text(textwrap.dedent(f"""
        import os, time
        _marker = {str(tmp_path / 'first-process-seen')!r}
        _slow = not os.path.exists(_marker)
        open(_marker, "w").close()
        def work():
            time.sleep(0.005 if _slow else 0.002)
    """))
    report = compare_speed(str(base), str(head), kernels=["work"], kernels_file=kernels_file, rounds=5, repeat=2,
                           sample_s=0.01, progress=False)
    [c] = report.comparisons
    assert c.ratio > 1.5 and c.confirmation["verdict"] == "same" and c.verdict == "same" and report.ok
    assert 0.7 < c.confirmation["ratio"] < 1.4


def test_identical_harness_sources_never_fail_the_gate(tmp_path, kernels_file):
    from harness.tracking.speed import source_digest

    base = _tree(tmp_path / "base", 0.002)
    slow = _tree(tmp_path / "slow", 0.005)  # the slowdown lives outside harness/, which both trees share
    for tree in (base, slow):
        (tree / "harness").mkdir()
        (tree / "harness" / "__init__.py").write_text("VERSION = 1\n")
    assert source_digest(base) == source_digest(slow) and source_digest(tmp_path) is None
    report = compare_speed(str(base), str(slow), kernels=["work"], kernels_file=kernels_file, rounds=5, repeat=2,
                           sample_s=0.01, progress=False)
    assert report.identical_code and report.comparisons[0].verdict == "slower" and report.ok
    assert "identical harness sources" in render_report(report) and "OK:" in render_report(report)
    (slow / "harness" / "__init__.py").write_text("VERSION = 2\n")
    assert source_digest(base) != source_digest(slow)
