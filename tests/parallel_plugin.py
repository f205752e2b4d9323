"""A plugin for tests/test_parallel.py and tests/test_ray_executor.py: a toy-family method that kills its own
process (``os._exit``), always or once. In the toy family, so that registering it in the test process leaves
the real families' method lists (which other tests count) unchanged. Importable by name (``parallel_plugin``)
from worker processes, which rebuild the run's cells; it imports ``toy_plugin`` for the toy task."""

from __future__ import annotations

import os

from harness.core.method import Method
from harness.core.registry import register_method

import toy_plugin  # noqa: F401  (registers the toy family in worker processes too)


@register_method("test-exit", family="toy", version="1",
                 description="test plugin: os._exit(exit_code) always, or once (when the file exit_once names is absent)")
class ExitingMethod(Method):
    def __init__(self, exit_code: int = 0, exit_once: str = "") -> None:
        self.exit_code, self.exit_once = exit_code, exit_once

    def predict(self, x):
        if self.exit_once and not os.path.exists(self.exit_once):
            open(self.exit_once, "w").close()
            os._exit(9)  # the worker dies once; a retry finds the marker and succeeds
        if self.exit_code:
            os._exit(self.exit_code)  # what no try/except can catch in-process
        return x


def exit_unless_in(pid: int) -> str:
    """For map_on_workers tests: kills any process but ``pid`` (a worker); returns "here" in ``pid``."""
    if os.getpid() != pid:
        os._exit(5)
    return "here"


def fail_in_workers(pid: int) -> str:
    """Raises in any process but ``pid``; returns "here" in ``pid``."""
    if os.getpid() != pid:
        raise ValueError("only the driver may run this")
    return "here"
