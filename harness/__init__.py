"""Benchmark and evaluation harness for interpretability and representation-learning methods.

Public entry points: :mod:`harness.core.registry` (register tasks and methods),
:mod:`harness.core.runner` (run cells), :mod:`harness.core.records` (result records),
and the ``harness`` command line (:mod:`harness.cli`).
"""

__version__ = "0.1.0"
