"""The asv suite and the speed gate's kernels stay runnable: every kernel once at its smallest size; asv check."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.kernels import KERNELS

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_kernel_runs_at_its_smallest_size(name):
    kernel = KERNELS[name]
    assert kernel.gate_param in kernel.params and kernel.description
    fn = kernel.setup(kernel.params[0])
    assert fn() is not None


def test_asv_benchmarks_have_pinned_versions_and_cover_every_kernel():
    from benchmarks import bench_kernels, track_quick_suite

    classes = [v for v in vars(bench_kernels).values() if isinstance(v, type) and hasattr(v, "params")]
    names = {m for c in classes for m in vars(c) if m.startswith(("time_", "peakmem_"))}
    assert names == {f"{kind}_{k}" for k in KERNELS for kind in ("time", "peakmem")}
    assert all(isinstance(c.version, str) and c.version for c in classes)
    for family in track_quick_suite.FAMILIES:
        cls = getattr(track_quick_suite, f"Track{family.title()}")
        assert cls.params and all("|" in p for p in cls.params) and cls.version


@pytest.mark.skipif(shutil.which("asv") is None and not (Path(sys.executable).parent / "asv").exists(),
                    reason="asv is not installed (pip install -e '.[dev]' installs it)")
def test_asv_check_passes():
    asv = shutil.which("asv") or str(Path(sys.executable).parent / "asv")
    proc = subprocess.run([asv, "check", "--python=same"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "No problems found" in proc.stdout
