"""The apps are layered: no import cycles between them, no reaching into another app's
private names, and a function-level import of another app only where Django's app loading
needs it (AppConfig.ready)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

PROJECT = ROOT / "platform" / "embedhub"


def _modules():
    for path in sorted(PROJECT.rglob("*.py")):
        if "migrations" not in path.parts:
            yield path, ast.parse(path.read_text(), filename=str(path))


def _app(path: Path) -> str:
    parts = path.relative_to(PROJECT).parts
    return parts[0] if len(parts) > 1 else "<project>"


def _imports(tree: ast.AST):
    """(imported module, names, whether the import is inside a function)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom) and inner.module:
                    yield inner.module, [a.name for a in inner.names], True, inner.lineno
    for node in tree.body if isinstance(tree, ast.Module) else []:
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node.module, [a.name for a in node.names], False, node.lineno


def _graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path, tree in _modules():
        for module, _, _, _ in _imports(tree):
            parts = module.split(".")
            if parts[0] == "embedhub" and len(parts) > 1 and parts[1] != _app(path):
                edges.setdefault(_app(path), set()).add(parts[1])
    return edges


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return trail + [node, nxt]
            if nxt not in state and (found := visit(nxt, trail + [node])):
                return found
        state[node] = "done"
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node, [])):
            return found
    return None


def test_no_import_cycles_between_apps():
    cycle = _cycle(_graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_layers_point_downwards():
    edges = _graph()
    assert "continual" not in edges.get("registry", set()) | edges.get("vectors", set())
    assert not ({"vectors", "evaluation", "continual", "audits"} & edges.get("corpora", set()))
    assert edges.get("jobs", set()) <= {"core", "celery"}


def test_no_app_imports_another_apps_private_names():
    found = []
    for path, tree in _modules():
        for module, names, _, line in _imports(tree):
            parts = module.split(".")
            other_app = parts[0] == "embedhub" and len(parts) > 1 and parts[1] != _app(path)
            private = [n for n in names if n.startswith("_")]
            if other_app and private:
                found.append(f"{path.relative_to(ROOT)}:{line} {module} {private}")
    assert not found, found


def test_function_level_imports_of_apps_only_in_app_loading():
    found = []
    for path, tree in _modules():
        for module, _, inner, line in _imports(tree):
            if inner and module.startswith("embedhub.") and path.name != "apps.py":
                found.append(f"{path.relative_to(ROOT)}:{line} {module}")
    assert not found, found


def test_ruff_format_owns_the_layout():
    marker = "# fmt: " + "skip"
    offenders = [
        str(path.relative_to(ROOT))
        for top in ("platform", "workers", "dashboard", "tests", "benchmarks", "scripts")
        for path in (ROOT / top).rglob("*.py")
        if marker in path.read_text()
    ]
    assert not offenders, offenders
