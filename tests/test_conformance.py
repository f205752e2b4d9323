"""Every built-in method passes check_method (the contract a plugin author tests against), and the
checker catches broken methods."""

from __future__ import annotations

import numpy as np
import pytest

from harness.core import registry
from harness.errors import InvalidOutputError
from harness.protocols.clustering import ClusteringMethod
from harness.protocols.conformance import check_method

registry.load_builtin()

BUILTIN = [m for m in registry.methods() if m.source == "builtin" and m.in_default_suite]


@pytest.mark.parametrize("entry", BUILTIN, ids=[m.name for m in BUILTIN])
def test_builtin_method_conforms(entry):
    report = check_method(entry.family, entry.cls, entry.cls.selftest_params)  # the fast settings
    assert report.checks == ["metadata", "parameters", "protocol", "determinism"]
    assert np.isfinite(report.output).all()


def test_every_family_has_a_conformance_fixture():
    assert {m.family for m in BUILTIN} == {"circuits", "clustering", "icl", "icl-probe", "reconstruction"}


class _Unseeded(ClusteringMethod):
    name, version, description = "unseeded", "1", "labels from an unseeded generator"

    def fit_predict(self, X, n_clusters):
        return np.random.default_rng().integers(0, n_clusters, len(X))


class _OutOfRange(ClusteringMethod):
    name, version, description = "out-of-range", "1", "labels outside [0, n_clusters)"

    def fit_predict(self, X, n_clusters):
        return np.full(len(X), n_clusters)


class _RenamesParam(ClusteringMethod):
    name, version, description = "renames", "1", "stores its parameter under another name"

    def __init__(self, k: int = 3):
        self.n = k

    def fit_predict(self, X, n_clusters):
        return np.zeros(len(X), dtype=int)


@pytest.mark.parametrize("cls, message", [
    (_Unseeded, "different outputs"),
    (_OutOfRange, "must lie in"),
    (_RenamesParam, "get_params"),
])
def test_check_method_catches_broken_methods(cls, message):
    with pytest.raises(InvalidOutputError, match=message):
        check_method("clustering", cls)


def test_check_method_rejects_the_wrong_family():
    with pytest.raises(InvalidOutputError, match="declares family 'clustering'"):
        check_method("reconstruction", _OutOfRange)
