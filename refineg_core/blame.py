"""Which plugin an unexpected exception came from, so the error line says whom to
ask: the innermost traceback frame in a plugin's module names it, its distribution
and the place (nothing is imported to find out)."""

from __future__ import annotations

import os
import traceback
from collections.abc import Iterator
from importlib import metadata

import attrs

from refineg_core.hooks import PROJECT as HOOK_GROUP
from refineg_core.kinds import KINDS

#: The distribution of refineg itself: a crash in its own plugins is its own bug.
CORE_DISTRIBUTION = "refineg"
#: Entry-point group -> the kind a user sees in ``refineg plugins`` and configs.
_KINDS = {**{k.group: k.name.replace("_", " ") for k in KINDS}, HOOK_GROUP: "hook"}


@attrs.frozen
class Blame:
    """The plugin whose code raised, and where."""

    kind: str
    name: str
    distribution: str
    version: str
    filename: str
    line: int
    function: str

    @property
    def third_party(self) -> bool:
        """Shipped by another distribution than refineg (not refineg's own bug)."""
        return self.distribution.lower() != CORE_DISTRIBUTION

    def describe(self) -> str:
        where = f"{os.path.basename(self.filename)}:{self.line} in {self.function}"
        return (
            f"{self.kind} plugin {self.name!r} from {self.distribution} {self.version} "
            f"failed at {where}"
        )


def _plugin_modules() -> Iterator[tuple[str, str, str, str, str]]:
    """(module, kind, name, distribution, version) of every plugin entry point."""
    from refineg_core.registry import _IN_MEMORY

    for group, kind in _KINDS.items():
        for ep in metadata.entry_points(group=group):
            dist = ep.dist
            name = dist.metadata["Name"] if dist else "an unknown distribution"
            version = dist.version if dist else "?"
            yield ep.module, kind, ep.name, name, version
    for (group, name), cls in _IN_MEMORY.items():
        yield cls.__module__, _KINDS.get(group, group), name, "<registered in memory>", "-"


def _shared_parts(a: str, b: str) -> int:
    """How many leading dotted parts two module names share."""
    n = 0
    for x, y in zip(a.split("."), b.split("."), strict=False):
        if x != y:
            break
        n += 1
    return n


def _owner(module: str, plugins: list[tuple[str, str, str, str, str]]):
    """The plugin whose module (or package) holds ``module``: the closest match."""
    best, best_len = None, 0
    for plugin_module, *rest in plugins:
        package = plugin_module.split(".")[0]
        if module == plugin_module:
            return rest
        if module == package or module.startswith(package + "."):
            common = _shared_parts(module, plugin_module)
            if common > best_len:
                best, best_len = rest, common
    return best


#: The plugin table per (sys.path, in-memory plugins): reading every entry point
#: costs milliseconds, and a stage whose plugin crashes on every sample asks often.
_tables: dict[tuple, list[tuple[str, str, str, str, str]]] = {}


def _plugin_table() -> list[tuple[str, str, str, str, str]]:
    import sys

    from refineg_core.registry import _IN_MEMORY

    key = (tuple(sys.path), tuple(sorted((g, n, id(c)) for (g, n), c in _IN_MEMORY.items())))
    table = _tables.get(key)
    if table is None:
        _tables.clear()
        table = _tables[key] = list(_plugin_modules())
    return table


def blame(exc: BaseException) -> Blame | None:
    """The plugin whose code is innermost on ``exc``'s traceback, or None (the core,
    or code no plugin owns)."""
    plugins = _plugin_table()
    tb = exc.__traceback__
    frames = list(traceback.walk_tb(tb))
    for frame, line in reversed(frames):
        module = frame.f_globals.get("__name__", "")
        if not isinstance(module, str) or module.startswith("refineg_core"):
            continue
        owner = _owner(module, plugins)
        if owner is not None:
            kind, name, distribution, version = owner
            code = frame.f_code
            return Blame(kind, name, distribution, version, code.co_filename, line, code.co_name)
    return None
