"""The project's import graph has no circles, and the core imports no plugin.

An AST walk over every ``.py`` of ``refineg_core``, ``refineg`` and the plugin
packages collects every import: module level, inside functions and under
``if TYPE_CHECKING`` (a typing-only import is still a dependency of the design).
A circle means two modules cannot be understood, tested or moved apart; the core
importing a plugin means the core is not usable without it.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = ("refineg_core", "refineg")
PLUGINS = tuple(
    sorted(p.name for p in (ROOT / "plugins").iterdir() if (p / "__init__.py").is_file())
)
EXAMPLES = tuple(
    sorted(p.name for p in (ROOT / "examples").glob("*/src/*") if (p / "__init__.py").is_file())
)


def _files() -> Iterator[tuple[str, Path]]:
    """(dotted module name, file) for every module of the project."""
    bases = [ROOT / name for name in CORE] + [ROOT / "plugins" / name for name in PLUGINS]
    bases += [next((ROOT / "examples").glob(f"*/src/{name}")) for name in EXAMPLES]
    for base in bases:
        for path in sorted(base.rglob("*.py")):
            parts = list(path.relative_to(base.parent).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            yield ".".join(parts), path


MODULES: dict[str, Path] = dict(_files())


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    package = module.split(".")
    if path.name != "__init__.py":
        package.pop()
    package = package[: len(package) - node.level + 1]
    return ".".join(package + ([node.module] if node.module else []))


def _project_module(name: str) -> str | None:
    """The project module an import of ``name`` executes last (longest known prefix)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in MODULES:
            return candidate
        parts.pop()
    return None


def imports_of(module: str, path: Path) -> tuple[set[str], set[str]]:
    """(project modules, top-level external packages) that ``module`` imports anywhere."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    project: set[str] = set()
    external: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, path, node)
            # ``from pkg import sub`` imports the submodule ``pkg.sub`` when there is one
            names = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names
            ]
        for name in names:
            target = _project_module(name)
            if target is not None:
                if target != module:
                    project.add(target)
            elif name:
                external.add(name.split(".")[0])
    return project, external


GRAPH: dict[str, set[str]] = {}
EXTERNAL: dict[str, set[str]] = {}
for _name, _path in MODULES.items():
    GRAPH[_name], EXTERNAL[_name] = imports_of(_name, _path)


def cycles(graph: dict[str, set[str]]) -> list[tuple[list[str], list[str]]]:
    """(one concrete circle, all its members) per strongly connected component of
    more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [(_circle(graph, set(c)), c) for c in components]


def _circle(graph: dict[str, set[str]], members: set[str]) -> list[str]:
    """A shortest path from the component's first module back to itself."""
    start = min(members)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    return [*paths[v], start]
                if w not in paths:
                    paths[w] = [*paths[v], w]
                    nxt.append(w)
        frontier = nxt
    return sorted(members)  # pragma: no cover - a component always has a circle


def test_the_walk_sees_the_whole_project() -> None:
    """A walk that found nothing would pass vacuously."""
    assert "refineg_core.pipeline.orchestrator" in MODULES
    assert "refineg_openai.backend" in MODULES
    assert len(MODULES) > 100
    # imports inside functions are seen: the CLI imports its commands lazily
    assert any(m.startswith("refineg_core.") for m in GRAPH["refineg_core.cli"])


def test_cycle_finder_finds_a_planted_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [(["a", "b", "c", "a"], ["a", "b", "c"])]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles() -> None:
    found = cycles(GRAPH)
    assert not found, "import circles (one per tangle; each tangle listed whole):\n" + "\n".join(
        f"{' -> '.join(c)}   [tangle: {', '.join(members)}]" for c, members in found
    )


@pytest.mark.parametrize("plugin", PLUGINS + EXAMPLES)
def test_core_imports_no_plugin(plugin: str) -> None:
    offenders = sorted(
        m
        for m, targets in GRAPH.items()
        if m.split(".")[0] in CORE and any(t.split(".")[0] == plugin for t in targets)
    )
    assert not offenders, f"the core imports the plugin package {plugin}: {offenders}"


def core_external_imports() -> set[str]:
    """Top-level third-party (and standard) packages the core imports anywhere."""
    return {pkg for m, ext in EXTERNAL.items() if m.split(".")[0] in CORE for pkg in ext}
