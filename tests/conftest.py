"""Shared fixtures: built-ins registered once, the toy family, and per-test results directories."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # so tests can import toy_plugin

from harness.core import registry  # noqa: E402

registry.load_builtin()
import toy_plugin  # noqa: E402,F401  (registers the toy family)
import fake_device  # noqa: E402

# The fake second device (tests/test_device.py) is registered before any test runs: torch's autograd engine
# sizes its per-device queues at the first backward pass of the process, and a backward on a device it did
# not count then fails an internal assert.  When registration fails, the device tests skip with the reason.
fake_device.available()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small tensors: one torch thread is fastest and immune to oversubscription on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    return tmp_path / "results"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch the user's cache from tests (models built in tests go to a session temp dir)."""
    cache = os.environ.get("HARNESS_TEST_CACHE") or str(tmp_path_factory.getbasetemp() / "cache")
    monkeypatch.setenv("HARNESS_CACHE", cache)
