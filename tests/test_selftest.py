"""harness selftest: every task x method once on tiny settings; one line per pair; failures named, never fatal."""

from __future__ import annotations

import torch

from harness.cli import main
from harness.core.selftest import selftest


def test_selftest_reports_each_pair_and_names_failures(tmp_path):
    results = {r.method: r for r in selftest("cpu", tasks=["toy/vector"], cache_dir=tmp_path)}
    assert results["toy-good"].ok and results["toy-zero"].ok
    assert not results["toy-fail"].ok and "RuntimeError" in results["toy-fail"].reason
    assert not results["toy-shape"].ok and "shape" in results["toy-shape"].reason
    assert all("\n" not in r.reason for r in results.values())
    assert "FAILED" in results["toy-fail"].line() and results["toy-good"].line().endswith("ok")


def test_selftest_real_families_on_cpu(tmp_path):
    """A circuits and a clustering task with every method of their families, on the tiny settings."""
    results = selftest("cpu", tasks=["circuits/ioi", "clustering/wine"], cache_dir=tmp_path)
    assert len(results) == 14 + 5  # circuits: 8 baselines (eap-signed too), 3 edge baselines, discrete-sae, atp-star, subnetwork-probing; clustering: 5
    assert [r.line() for r in results if not r.ok] == []


def test_selftest_command_exit_status(tmp_path, capsys):
    assert main(["selftest", "--device", "cpu", "--tasks", "toy/vector", "--methods", "toy-good",
                 "--cache-dir", str(tmp_path)]) == 0
    assert "1 of 1 task x method pairs ok" in capsys.readouterr().out
    assert main(["selftest", "--device", "cpu", "--tasks", "toy/vector", "--methods", "toy-good", "toy-fail",
                 "--cache-dir", str(tmp_path)]) == 1


def test_selftest_cuda_when_present(tmp_path):
    import pytest

    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available on this machine: the selftest on --device cuda runs where it is")
    results = selftest("cuda", cache_dir=tmp_path)
    assert [r.line() for r in results if not r.ok] == []
