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
