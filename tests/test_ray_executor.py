"""``harness run --executor ray``: a local Ray cluster bound to the loopback interface only, records equal
to a serial run's, a worker killed mid-run retried without duplicates, and a clear error without Ray."""

from __future__ import annotations

import builtins
import importlib.util
import os
from pathlib import Path

import pytest

from harness.core import registry
from harness.core.cell import RunSpec
from harness.core.records import Store
from harness.core.runner import run
from harness.errors import HarnessError

if importlib.util.find_spec("ray") is None:
    pytest.skip("the ray extra is not installed (pip install -e '.[ray]')", allow_module_level=True)
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before ray's first import (see ray_executor)
import ray  # noqa: E402


def listening_addresses() -> set[str]:
    """Local addresses of every listening TCP socket on the machine (/proc/net/tcp and tcp6)."""
    out = set()
    for name, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            out.add(fields[1])
    return out


def is_loopback(hex_addr: str) -> bool:
    ip, _ = hex_addr.split(":")
    if len(ip) == 8:  # IPv4, little-endian bytes: 127.x.x.x ends in 7F
        return ip.endswith("7F")
    mapped_v4 = ip[:24] == "0000000000000000FFFF0000"
    return (mapped_v4 and ip[-2:] == "7F") or ip == "00000000000000000000000001000000"  # ::ffff:127.* or ::1


@pytest.fixture(scope="module")
def local_cluster():
    from harness.core import ray_executor

    if ray.is_initialized():
        ray.shutdown()
    before = listening_addresses()
    ray_executor.start(None, num_cpus=2)
    yield listening_addresses() - before
    ray.shutdown()


def test_local_cluster_listens_on_loopback_only(local_cluster):
    assert local_cluster, "the local cluster opened no listening socket (the check would be vacuous)"
    assert all(is_loopback(a) for a in local_cluster), sorted(local_cluster)


def spec(tmp_path: Path, name: str, **kw) -> RunSpec:
    base = dict(tasks=["clustering/wine", "circuits/ioi"], methods=["kmeans-raw", "gmm", "eap", "act-patch-mean"],
                seeds=[0, 1], task_overrides={"n_fit": 8, "n_eval": 16}, results_dir=tmp_path / name,
                cache_dir=tmp_path / "cache", progress=False, threads_per_cell=1)
    return RunSpec(**{**base, **kw})


def test_ray_records_equal_a_serial_run(local_cluster, tmp_path):
    registry.load_all()
    on_ray = run(spec(tmp_path, "ray", executor="ray"))
    serial = run(spec(tmp_path, "serial"))
    assert on_ray.ok and serial.ok and on_ray.ran == serial.ran == 8
    assert {r["cell_key"]: r["metrics"] for r in on_ray.records} == {r["cell_key"]: r["metrics"] for r in serial.records}
    assert {r["provenance"]["execution"]["executor"] for r in on_ray.records} == {"ray"}


def test_a_killed_ray_worker_is_retried_without_duplicates(local_cluster, tmp_path):
    registry.load_plugin_module("parallel_plugin")
    registry.load_all()
    marker = tmp_path / "died-once"
    s = RunSpec(tasks=["toy/vector"], methods=["test-exit", "toy-good"], seeds=[0],
                grid={"exit_once": [str(marker)]}, results_dir=tmp_path / "res", cache_dir=tmp_path / "cache",
                progress=False, executor="ray", threads_per_cell=1, plugins=("parallel_plugin",))
    summary = run(s)
    assert marker.exists()  # a worker did die
    assert summary.ok and summary.ran == 2
    stored = Store(tmp_path / "res").load_all(statuses=("ok", "error"))
    assert len(stored) == 2 and len({r["cell_key"] for r in stored}) == 2


def test_without_ray_the_error_names_the_install_command(monkeypatch):
    from harness.core import ray_executor

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(HarnessError, match=r"pip install .*\[ray\]"):
        ray_executor.import_ray(local=True)
