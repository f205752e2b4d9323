"""A plugin for tests/test_trust.py: toy-family methods that misbehave the ways a method can end a run
(``sys.exit``, a ``BaseException``, ``os._exit``, sleeping, allocating). Importable by name from worker
processes, which rebuild the run's cells; it imports ``toy_plugin`` for the toy task."""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from harness.core.method import Method
from harness.core.registry import register_method

import toy_plugin  # noqa: F401  (registers the toy family in worker processes too)


class _Custom(BaseException):
    """A BaseException that is neither an Exception nor an interrupt."""


@register_method("trust-misbehave", family="toy", version="1",
                 description="test plugin: exits, raises a BaseException, kills its process, sleeps or allocates")
class Misbehave(Method):
    def __init__(self, how: str = "exit", seconds: float = 0.0, gb: float = 0.0) -> None:
        self.how, self.seconds, self.gb = how, seconds, gb

    def predict(self, x):
        if self.how == "exit":
            sys.exit(3)
        if self.how == "base":
            raise _Custom("not an Exception")
        if self.how == "os_exit":
            os._exit(7)
        if self.how == "sleep":
            time.sleep(self.seconds)
        if self.how == "alloc":
            block = np.ones(int(self.gb * 2**30) // 8)  # touched: really allocated
            return x + 0 * block[: x.size].reshape(x.shape)
        return x
