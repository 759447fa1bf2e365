"""A plugin author needs one module: CONTRIBUTING's examples and the example
package import the project only through ``refineg.plugin``.

An AST walk over every import (module level and inside functions) of each
Python block of CONTRIBUTING.md and each module of ``examples/refineg-gazetteer``;
any import of ``refineg_core`` (or of a ``refineg`` module other than
``refineg.plugin``) is reported with its file and line. Prose may name core
modules (where a table lives, what a maintainer reads); code an author copies
may not.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "refineg-gazetteer" / "src"
PUBLIC = "refineg.plugin"


def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every import in ``tree``; ``from x import y`` gives x and x.y."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def _private(module: str) -> bool:
    """Is ``module`` a way into the project other than the public module?"""
    root = module.split(".")[0]
    if root == "refineg_core":
        return True
    return root == "refineg" and module != "refineg" and not module.startswith(PUBLIC)


def _contributing_blocks() -> list[tuple[int, str]]:
    """(first line, code) of every ```python block of CONTRIBUTING.md."""
    text = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    return [
        (text[: m.start(1)].count("\n") + 1, m.group(1))
        for m in re.finditer(r"^```(?:python|py)\n(.*?)^```", text, re.S | re.M)
    ]


def _offenders(source: str, where: str, first_line: int = 1) -> tuple[list[str], set[str]]:
    imports = _imports(ast.parse(source))
    bad = [f"{where}:{first_line + line - 1}: imports {m}" for line, m in imports if _private(m)]
    return bad, {m for _, m in imports}


def test_contributings_examples_import_only_the_public_module():
    blocks = _contributing_blocks()
    bad: list[str] = []
    public = 0
    for line, code in blocks:
        found, modules = _offenders(code, "CONTRIBUTING.md", line)
        bad += found
        public += PUBLIC in modules
    assert not bad, "\n".join(bad)
    # Not vacuous: the plugin examples are there and use the public module.
    assert len(blocks) >= 7 and public >= 7, (len(blocks), public)


def test_the_example_package_imports_only_the_public_module():
    files = sorted(EXAMPLE.rglob("*.py"))
    assert files, f"no example package at {EXAMPLE}"
    bad: list[str] = []
    users = 0
    for path in files:
        found, modules = _offenders(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
        bad += found
        users += PUBLIC in modules
    assert not bad, "\n".join(bad)
    assert users >= 5, users  # one per plugin module of the example


@pytest.mark.parametrize(
    ("source", "flagged"),
    [
        ("from refineg_core.types import Sample\n", True),
        ("def f():\n    import refineg_core.errors\n", True),  # inside a function too
        ("from refineg import plugin\n", False),
        ("from refineg.plugin import Tagger\n", False),
        ("import numpy as np\n", False),
    ],
)
def test_the_walk_sees_what_it_must(source, flagged):
    bad, _ = _offenders(source, "x.py")
    assert bool(bad) == flagged, bad
