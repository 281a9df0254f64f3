"""The package's layers, read from its source (ast): client/ imports neither server/ nor
strategies/, protocol/ imports nothing of fedloom's above it, and no module imports
itself through others (an import cycle)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP = {".venv", "tests", "benchmarks", "build", ".git"}
#: Allowed imports across a layer rule, and why (none: the run-config schema moved from
#: server/ to its own package, fedloom.config, which both sides import).
ALLOWED: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(("fedloom", *parts))


def modules() -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    found = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT).parts
        if rel[0] in SKIP or any(p.startswith(".") for p in rel):
            continue
        found[module_name(path)] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``name`` imports anywhere in its file (top level or in a function)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            targets.update(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names)
    return {t for t in targets if t in known and t != name}


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports_of(name, path, known) for name, path in found.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def violations(edges: dict[str, set[str]], source: str, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{m} -> {t}"
        for m, targets in edges.items() if m == source or m.startswith(source + ".")
        for t in targets
        if any(t == f or t.startswith(f + ".") for f in forbidden) and (m, t) not in ALLOWED
    )


def test_the_graph_sees_the_package():
    edges = graph()
    assert "fedloom.client.app" in edges and "fedloom.protocol.keys" in edges["fedloom.client.app"]
    # A function-level import counts too (that is how the old cycles were hidden).
    assert "fedloom.tasks.batches" in edges["fedloom.tasks.batchnorm"]


def test_client_imports_neither_server_nor_strategies():
    assert violations(graph(), "fedloom.client", ("fedloom.server", "fedloom.strategies")) == []


def test_protocol_is_below_client_server_and_strategies():
    above = ("fedloom.client", "fedloom.server", "fedloom.strategies", "fedloom.tasks", "fedloom.privacy")
    assert violations(graph(), "fedloom.protocol", above) == []


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_the_checks_catch_what_they_look_for():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(edges) == [["a", "b", "c"]]
    bad = {"fedloom.client.x": {"fedloom.strategies.y", "fedloom.server.config"}}
    assert violations(bad, "fedloom.client", ("fedloom.server", "fedloom.strategies")) == [
        "fedloom.client.x -> fedloom.server.config", "fedloom.client.x -> fedloom.strategies.y",
    ]
