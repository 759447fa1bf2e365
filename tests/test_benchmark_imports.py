"""Benchmarks use the installed package, never the repository's ``tests`` or a hand-made path."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.glob("*.py"))


def _imports(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_no_sys_path_edits_and_no_tests_imports(script: Path):
    tree = ast.parse(script.read_text(encoding="utf-8"))
    assert "tests" not in _imports(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "path":
            assert not (isinstance(node.value, ast.Name) and node.value.id == "sys"), (
                f"{script.name} edits sys.path"
            )


def test_a_benchmark_starts_outside_the_repository(tmp_path: Path):
    # from another folder nothing of the checkout is on sys.path but the script's own
    run = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_mllm_stages.py"), "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "usage: bench_mllm_stages.py" in run.stdout
