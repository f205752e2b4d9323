"""``harness check`` across devices: a CUDA run against a CPU reference, with and without device tolerances.

Synthetic: the toy task's records are made on the CPU, then relabelled as made on CUDA (their provenance)
and their metrics moved by chosen amounts.  ``toy/vector``'s ``score`` (higher is better) and ``err``
(lower is better) both have ``abs_tol`` 0.01.
"""

from __future__ import annotations

import copy
import json

import pytest

from harness.cli import main
from harness.core.records import Store, device_type
from harness.core.runner import run
from harness.errors import HarnessError
from harness.report.check import build_reference, check, read_reference, write_reference
from toy_plugin import toy_spec

CUDA_TOL = {"cuda": {"default": {"abs_tol": 0.05}, "metrics": {"err": {"abs_tol": 0.2}},
                     "tasks": {"toy/vector": {"score": {"abs_tol": 0.1}}}}}


@pytest.fixture
def cpu_records(results_dir):
    run(toy_spec(results_dir, ["toy-good"], seeds=(0,)))
    return Store(results_dir).load_all()


def on_cuda(records, **shift):
    """The records as if made on CUDA, each metric in ``shift`` moved by that amount."""
    out = copy.deepcopy(records)
    for r in out:
        r["provenance"].update(device="cuda", device_type="cuda", device_name="NVIDIA H200")
        for name, delta in shift.items():
            r["metrics"][name] += delta
    return out


def kinds(findings):
    return sorted((f.metric, f.kind) for f in findings)


def test_reference_states_its_device_type_and_old_records_read_as_cpu(cpu_records):
    ref = build_reference(cpu_records)
    assert ref["device_type"] == "cpu"
    assert build_reference(on_cuda(cpu_records))["device_type"] == "cuda"
    old = copy.deepcopy(cpu_records[0])
    old["provenance"].pop("device_type")
    old["provenance"]["device"] = "cuda:1"
    assert device_type(old) == "cuda"
    with pytest.raises(HarnessError, match="several types of device"):
        build_reference(cpu_records + on_cuda(cpu_records))


def test_same_device_is_checked_exactly_as_before(cpu_records):
    ref = build_reference(cpu_records)
    ref["device_tolerance"] = CUDA_TOL  # ignored: the records were made on the reference's device
    assert check(cpu_records, ref) == []
    shifted = copy.deepcopy(cpu_records)
    shifted[0]["metrics"]["score"] -= 0.03
    assert kinds(check(shifted, ref)) == [("score", "regression")]


def test_cuda_run_within_the_device_tolerance_is_a_device_difference(cpu_records):
    ref = build_reference(cpu_records)
    ref["device_tolerance"] = CUDA_TOL
    # score: own 0.01 + the task's entry 0.1; err: own 0.01 + the metric entry 0.2
    findings = check(on_cuda(cpu_records, score=-0.08, err=0.15), ref)
    assert kinds(findings) == [("err", "device"), ("score", "device")]
    assert not any(f.failing for f in findings)
    assert all("device difference (cuda run, cpu reference), within tolerance" in f.detail for f in findings)
    assert {f.metric: round(f.tolerance, 6) for f in findings} == {"score": 0.11, "err": 0.21}
    # a device difference in the better direction is not an "improvement" either
    assert kinds(check(on_cuda(cpu_records, score=+0.05), ref)) == [("score", "device")]
    # within the metric's own tolerance: nothing at all
    assert check(on_cuda(cpu_records, score=-0.005), ref) == []


def test_cuda_run_beyond_the_device_tolerance_is_a_regression(cpu_records):
    ref = build_reference(cpu_records)
    ref["device_tolerance"] = CUDA_TOL
    findings = check(on_cuda(cpu_records, score=-0.2, err=-0.5), ref)
    assert kinds(findings) == [("err", "improvement"), ("score", "regression")]
    reg = next(f for f in findings if f.kind == "regression")
    assert reg.failing and "beyond the cross-device tolerance" in reg.detail
    # the default applies to a metric without its own entry
    ref["device_tolerance"] = {"cuda": {"default": {"abs_tol": 0.05}}}
    assert kinds(check(on_cuda(cpu_records, score=-0.05), ref)) == [("score", "device")]
    assert kinds(check(on_cuda(cpu_records, score=-0.07), ref)) == [("score", "regression")]


def test_cuda_run_without_a_section_is_checked_exactly_and_says_so(cpu_records):
    ref = build_reference(cpu_records)
    findings = check(on_cuda(cpu_records, score=-0.03), ref)
    assert kinds(findings) == [("score", "regression")]
    assert "states no device_tolerance for cuda" in findings[0].detail
    assert check(on_cuda(cpu_records), ref) == []  # identical numbers pass whatever the device


def test_reference_file_validates_and_keeps_the_device_section(cpu_records, results_dir, tmp_path, capsys):
    path = tmp_path / "ref.json"
    doc = build_reference(cpu_records)
    doc["device_tolerance"] = CUDA_TOL
    write_reference(doc, path)
    assert read_reference(path)["device_tolerance"] == CUDA_TOL
    bad = dict(doc, device_tolerance={"cuda": {"default": {"abs_tol": -1}}})
    write_reference(bad, tmp_path / "bad.json")
    with pytest.raises(HarnessError, match="abs_tol"):
        read_reference(tmp_path / "bad.json")
    bad = dict(doc, device_tolerance={"cuda": {"metric": {}}})
    write_reference(bad, tmp_path / "bad.json")
    with pytest.raises(HarnessError, match="may hold only"):
        read_reference(tmp_path / "bad.json")
    # `harness reference` over an existing file keeps its hand-written device section
    assert main(["reference", "--out", str(path), "--results-dir", str(results_dir)]) == 0
    assert "kept the device_tolerance section" in capsys.readouterr().out
    assert json.loads(path.read_text())["device_tolerance"] == CUDA_TOL


def test_check_command_reports_device_differences_without_failing(cpu_records, results_dir, tmp_path, capsys):
    path = tmp_path / "ref.json"
    doc = build_reference(cpu_records)
    doc["device_tolerance"] = CUDA_TOL
    write_reference(doc, path)
    store = Store(results_dir)
    for r in on_cuda(cpu_records, score=-0.08):
        store.write(r)
    assert main(["check", "--reference", str(path), "--results-dir", str(results_dir)]) == 0
    out = capsys.readouterr().out
    assert "1 device difference(s), within the reference's cross-device tolerance" in out
    assert "device difference (cuda run, cpu reference), within tolerance" in out and "check passed" in out
    for r in on_cuda(cpu_records, score=-0.3):
        store.write(r)
    assert main(["check", "--reference", str(path), "--results-dir", str(results_dir)]) == 1
    out = capsys.readouterr().out
    assert "check FAILED" in out and "beyond the cross-device tolerance" in out
