"""Clustering family: cluster a data set's rows; score against its true classes."""

from harness.tasks.clustering import variants  # noqa: F401  (registers the tasks)
