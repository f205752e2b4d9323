"""Benchmark and evaluation harness for interpretability and representation-learning methods.

Public entry points: :mod:`harness.registry` (register tasks and methods),
:mod:`harness.runner` (run cells), :mod:`harness.records` (result records),
and the ``harness`` command line (:mod:`harness.cli`).
"""

__version__ = "0.1.0"
