"""Which format plugins a run writes its results in besides ``final.jsonl``: each
declares its ``output_file``; checked at config load, before any paid call."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from refineg_core.errors import ConfigError, PluginError
from refineg_core.formats.base import DatasetFormat

#: The native format of every stage's output, always written (``final.jsonl``).
NATIVE = "jsonl"
NATIVE_FILE = "final.jsonl"


def output_formats(
    names: Iterable[str], *, config_key: str = "outputs.formats"
) -> dict[str, type[DatasetFormat]]:
    """Each named format's class, in order and once each, checked: installed, able
    to be an output (``output_file``), and no two writing the same file."""
    from refineg_core import registry  # the registry imports this package's base

    found: dict[str, type[DatasetFormat]] = {}
    files = {NATIVE_FILE: NATIVE}
    for i, name in enumerate(names):
        where = f"{config_key}[{i}]"
        if name == NATIVE or name in found:
            continue  # always written / named twice: written once
        try:
            cls = registry.load_class("format", name, config_key=config_key)
        except PluginError as exc:  # located at this list item, not at a `format` key
            message = str(exc).removeprefix(f"{exc.where}: ") if exc.where else str(exc)
            raise ConfigError(message, where=where) from None
        assert issubclass(cls, DatasetFormat)
        target = cls.output_file
        if target is None:
            raise ConfigError(
                f"format {name!r} reads files but declares no output_file, so a run "
                "cannot write its results in it",
                where=where,
            )
        if target in files:
            raise ConfigError(
                f"format {name!r} writes {target}, as {files[target]!r} does",
                where=where,
            )
        files[target] = name
        found[name] = cls
    return found


def stale_outputs(out_dir: Path, written: Iterable[str]) -> list[Path]:
    """Files an earlier run wrote in an output format this run does not name (left
    there, they would pass for this run's results)."""
    from refineg_core import registry  # the registry imports this package's base

    keep = {NATIVE, *written}
    stale = []
    for name in registry.available_names(registry.slot_group("format")):
        if name in keep:
            continue
        try:
            target = registry.load_class("format", name).output_file  # type: ignore[attr-defined]
        except PluginError:
            continue  # not importable now: it wrote nothing this run could be taken for
        if target is not None and (Path(out_dir) / target).is_file():
            stale.append(Path(out_dir) / target)
    return stale
