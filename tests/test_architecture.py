"""The layout rules of ARCHITECTURE.md, checked: who may import whom, and the size limits.

Reads the source with ``ast`` only (nothing is imported), so it is fast and deterministic.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "harness"

#: layer -> the other layers of ``harness`` it may import (ARCHITECTURE.md, "Layers and imports")
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "metrics": {"errors"},
    "core": {"errors"},
    "models": {"core", "errors", "metrics"},
    "data": {"core", "errors", "metrics", "models", "protocols"},
    "nn": {"errors"},
    "protocols": {"core", "errors", "metrics", "models"},
    "sae": {"core", "errors", "metrics", "protocols"},
    "embedded": {"core", "data", "errors", "metrics", "models", "protocols"},
    "tasks": {"core", "data", "embedded", "errors", "metrics", "models", "protocols", "report"},
    "methods": {"core", "errors", "metrics", "models", "nn", "protocols", "sae"},
    "baselines": {"core", "errors", "methods", "metrics", "models", "nn", "protocols", "sae"},
    "report": {"core", "errors", "metrics"},
    "tracking": {"core", "errors"},
    "cli": {"core", "embedded", "errors", "report", "tracking", "protocols"},
    "__main__": {"cli"},
    "__init__": set(),
}
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
MAX_TOP_LEVEL_MODULES = 12


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _layer(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _imported_layers(path: Path) -> set[str]:
    layers = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names if node.module == "harness"]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "harness" and len(parts) > 1:
                layers.add(parts[1])
    return layers


def test_every_layer_is_known():
    assert {_layer(p) for p in _modules()} <= set(ALLOWED)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_follow_the_layers(path):
    layer = _layer(path)
    bad = _imported_layers(path) - ALLOWED[layer] - {layer}
    assert not bad, f"{path.relative_to(ROOT)} ({layer}) imports {sorted(bad)}; see ARCHITECTURE.md"


def test_metrics_are_leaves():
    for path in (PACKAGE / "metrics").rglob("*.py"):
        assert _imported_layers(path) <= {"metrics", "errors"}, path


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_size_limits(path):
    text = path.read_text()
    assert text.count("\n") <= MAX_MODULE_LINES, f"{path.relative_to(ROOT)} has over {MAX_MODULE_LINES} lines"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_FUNCTION_LINES, f"{path.relative_to(ROOT)}:{node.lineno} {node.name} has {length} lines"


def test_harness_top_level_stays_small():
    top = [p for p in PACKAGE.glob("*.py")]
    assert len(top) <= MAX_TOP_LEVEL_MODULES, sorted(p.name for p in top)


def test_nothing_outside_models_calls_private_model_members():
    """``model._x(...)`` / ``self.model._x`` outside harness/models: use the public hooked-model API."""
    offenders = []
    for path in _modules():
        if _layer(path) == "models":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and isinstance(node.value, (ast.Name, ast.Attribute))
                    and (getattr(node.value, "id", None) or getattr(node.value, "attr", "")) in ("model", "hooked")):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} .{node.attr}")
    assert not offenders, offenders
