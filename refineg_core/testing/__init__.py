"""Helpers for plugin authors' tests (and refineg's own tests and benchmarks).

``register_plugin`` makes a class selectable by name without installing
anything; ``fake_distribution`` goes further and installs a real (temporary)
distribution with entry points on ``sys.path``, so the test exercises exactly
the discovery path a user's installed package takes.
``refineg_stages.testing`` builds stage inputs (painted images,
tagger-like predictions, scripted backends). The fake OpenAI-compatible server
belongs to the plugin it tests: ``refineg_openai.testing``.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import attrs
import stevedore

from refineg_core.registry import registered as register_plugin

__all__ = [
    "CliResult",
    "fake_distribution",
    "register_plugin",
    "run_cli",
]


@contextlib.contextmanager
def fake_distribution(
    root: Path,
    name: str,
    version: str,
    entry_points: Mapping[str, Mapping[str, str]],
    modules: Mapping[str, str] | None = None,
) -> Iterator[Path]:
    """Install a throwaway distribution under ``root`` for the ``with`` block.

    ``entry_points`` is ``{group: {name: "module:attr"}}``; ``modules`` maps
    module names to source code written beside the dist-info, so the entry
    points can point at code that exists only in the test.
    """
    root.mkdir(parents=True, exist_ok=True)
    dist_info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    dist_info.mkdir(exist_ok=True)
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8"
    )
    lines = []
    for group, eps in entry_points.items():
        lines.append(f"[{group}]")
        lines += [f"{ep_name} = {target}" for ep_name, target in eps.items()]
        lines.append("")
    (dist_info / "entry_points.txt").write_text("\n".join(lines), encoding="utf-8")
    for module, source in (modules or {}).items():
        (root / f"{module}.py").write_text(source, encoding="utf-8")
    sys.path.insert(0, str(root))
    _forget_entry_points()
    try:
        yield dist_info
    finally:
        sys.path.remove(str(root))
        for module in modules or {}:
            sys.modules.pop(module, None)
        _forget_entry_points()


def _forget_entry_points() -> None:
    """Make importlib and stevedore (which caches per namespace) rescan sys.path."""
    importlib.invalidate_caches()
    stevedore.ExtensionManager.ENTRY_POINT_CACHE.clear()


@attrs.frozen
class CliResult:
    code: int
    stdout: str
    stderr: str


def run_cli(args: Sequence[str]) -> CliResult:
    """Run ``refineg ARGS`` in-process and capture its output."""
    from refineg_core.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse's --help and usage errors
            code = exc.code if isinstance(exc.code, int) else 2
    return CliResult(code, out.getvalue(), err.getvalue())
