"""The layering the design card asks for, read from the source (function-level imports included).

* ``logbert_core`` imports neither ``streamer`` nor ``training``; ``training`` never imports ``streamer``;
* ``streamer`` never imports ``training`` (the demo reads its labels with ``logbert_core.labels``, as the trainer does);
* no import cycle between the project's modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("logbert_core", "streamer", "training", "benchmarks")


def module_imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).glob("*.py")):
            name = f"{pkg}.{path.stem}" if path.stem != "__init__" else pkg
            found: set[str] = set()
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    found.update(a.name for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    found.add(node.module)
                    found.update(f"{node.module}.{a.name}" for a in node.names)
            graph[name] = {m for m in found if m.split(".")[0] in PACKAGES}
    modules = set(graph)
    return {k: {m for m in v if m in modules and m != k} for k, v in graph.items()}


def test_layers_import_only_downwards():
    graph = module_imports()
    bad = sorted((a, b) for a, deps in graph.items() for b in deps
                 if (a.startswith("logbert_core") and not b.startswith("logbert_core"))
                 or (a.startswith("training") and b.startswith("streamer"))
                 or (a.startswith("streamer") and b.startswith("training")))
    assert bad == []


def test_no_import_cycles():
    graph = module_imports()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(path[path.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert cycles == []


def test_streamer_modules_read_in_one_sitting():
    """Issue #17: no module of the live detector is over 400 lines."""
    long = {p.name: n for p in sorted((REPO / "streamer").glob("*.py"))
            if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}


def test_no_class_has_more_than_15_methods():
    """Issue #17: a class with more methods has more than one owner. Methods a class inherits from the project's own
    classes count too (a class put together from mixins is one class to its callers)."""
    classes: dict[str, tuple[list[str], set[str]]] = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ClassDef):
                    own = {f.name for f in node.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))}
                    bases = [b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases]
                    classes[f"{path.stem}.{node.name}"] = (bases, own)
    by_name = {name.split(".")[1]: v for name, v in classes.items()}

    def methods(bases: list[str], own: set[str], seen: frozenset[str] = frozenset()) -> set[str]:
        out = set(own)
        for b in bases:
            if b in by_name and b not in seen:
                out |= methods(*by_name[b], seen | {b})
        return out

    big = {name: len(m) for name, (bases, own) in classes.items() if len(m := methods(bases, own)) > 15}
    assert big == {}
