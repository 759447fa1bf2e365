"""Load a dataset through its format plugin; the pipeline and CLI read every file here.

A format is a plugin (``refineg.formats`` entry points) named by a data
source's ``format`` key; only that one is imported. Without a name the format
is guessed among the built-ins from the file name and first line. What every
format shares is applied here: the ``boxes`` policy and ``limit``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

from refineg_core.errors import DataError, PluginError
from refineg_core.formats.base import Dataset, DatasetFormat
from refineg_core.types import Entity, Sample
from refineg_core.validity import check_sample

#: The formats that ship with refineg (others come from installed packages).
BUILTIN_FORMATS = ("twitter-gmner", "conll", "ccks", "jsonl")
#: Data source keys that are handed to the format as options when set.
SOURCE_OPTION_KEYS = ("xml_dir", "images_dir", "entities")


def guess_format(path: Path) -> str:
    if path.suffix == ".jsonl":
        return "jsonl"
    if path.suffix == ".json":
        return "ccks"
    head = ""
    if path.is_file():
        with path.open("rb") as fh:
            head = fh.read(200).decode("utf-8-sig", errors="replace")
    return "twitter-gmner" if head.startswith("IMGID:") else "conll"


def format_plugin(
    name: str,
    source_options: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
    *,
    config_key: str = "data",
) -> DatasetFormat:
    """The named format with validated options (only that plugin is imported).

    ``source_options`` are the data source's own keys (``xml_dir``...): a key
    the format does not take is an error at ``<config_key>.<key>``;
    ``options`` is the source's ``options`` table.
    """
    from refineg_core import registry  # the registry imports this package's base

    cls = registry.load_class("format", name, config_key=config_key)
    fields = cls.Options.model_fields
    merged = dict(options or {})
    for key, value in (source_options or {}).items():
        if value is None:
            continue
        if key not in fields:
            raise PluginError(
                f"format {name!r} does not take {key!r}"
                + (f"; its options: {', '.join(sorted(fields))}" if fields else ""),
                where=f"{config_key}.{key}",
            )
        merged[key] = value
    opts = registry.validate_options("format", name, cls, merged, config_key=config_key)
    plugin = cls(opts, None)
    assert isinstance(plugin, DatasetFormat)
    return plugin


def _unknown_regions_error(n: int, ent: Entity, sid: str, source: str) -> DataError:
    return DataError(
        f"boxes = true, but the regions of {n} entities are unknown "
        f"(e.g. {ent.text!r} of sample {sid!r}); check xml_dir or the file",
        where=source,
    )


def _boxes_dropped(dropped: int, source: str) -> str:
    return f"{source}: boxes = false: {dropped} annotated boxes ignored"


def _without_boxes(sample: Sample) -> tuple[Sample, int]:
    dropped = sum(len(e.boxes or ()) for e in sample.entities)
    ents = tuple(attrs.evolve(e, boxes=()) for e in sample.entities)
    return attrs.evolve(sample, entities=ents), dropped


def apply_boxes_policy(ds: Dataset, boxes: bool | None) -> Dataset:
    """``boxes=False``: the data has no box annotations, every gold region is None.

    ``boxes=True``: every entity must carry its region; an unknown one is an
    error. ``None``: what the format read (unknown regions stay unknown).
    """
    if boxes is None:
        return ds
    unknown = [(s.id, e) for s in ds.samples for e in s.entities if e.boxes is None]
    if boxes:
        if unknown:
            sid, ent = unknown[0]
            raise _unknown_regions_error(len(unknown), ent, sid, ds.source)
        return ds
    pairs = [_without_boxes(s) for s in ds.samples]
    dropped = sum(n for _, n in pairs)
    warnings = ds.warnings
    if dropped:
        warnings += (_boxes_dropped(dropped, ds.source),)
    return Dataset(tuple(s for s, _ in pairs), warnings, ds.source)


def load_dataset(
    path: Path | str,
    format: str | None = None,
    *,
    xml_dir: Path | str | None = None,
    images_dir: Path | str | None = None,
    entities: Path | str | None = None,
    limit: int | None = None,
    boxes: bool | None = None,
    options: Mapping[str, Any] | None = None,
    config_key: str = "data",
) -> Dataset:
    """Read ``path`` with the named (or guessed) format plugin.

    ``config_key`` is the config table of the data source (``data.train``),
    so errors name the key to fix.
    """
    path = Path(path)
    if not path.exists():
        raise DataError("file not found", where=str(path))
    name = format or guess_format(path)
    source_options = {"xml_dir": xml_dir, "images_dir": images_dir, "entities": entities}
    plugin = format_plugin(name, source_options, options, config_key=config_key)
    ds = plugin.read(path, limit=limit) if plugin.reads_limit else plugin.read(path)
    if not plugin.checks_samples:  # what is read can be written (refineg_core.validity)
        for s in ds.samples:
            check_sample(s, where=f"{path} [sample {s.id[:80]!r}]")
    if not ds.samples:
        ds = Dataset((), (*ds.warnings, f"{path}: the file holds no samples"), ds.source)
    ds = apply_boxes_policy(ds, boxes)
    if limit is not None:
        ds = Dataset(ds.samples[:limit], ds.warnings, ds.source)
    return ds


def load_source(source: Any, *, config_key: str = "data") -> Dataset:
    """Load a config ``DataSource`` (path, format, its option keys, boxes, limit)."""
    return load_dataset(
        source.path,
        source.format,
        **{k: getattr(source, k, None) for k in SOURCE_OPTION_KEYS},
        limit=source.limit,
        boxes=getattr(source, "boxes", None),
        options=getattr(source, "options", None),
        config_key=config_key,
    )


def iter_source(source: Any, warnings: list[str], *, config_key: str = "data") -> Iterator[Sample]:
    """A config ``DataSource`` one sample at a time (what streaming stages read).

    The same samples as ``load_source`` in the same order; problems are
    appended to ``warnings`` as they are met. With ``boxes = true`` an unknown
    region is an error when it is reached (the stage's fingerprint pass reads
    the whole source first, so a run fails before any work).
    """
    path = Path(source.path)
    if not path.exists():
        raise DataError("file not found", where=str(path))
    name = source.format or guess_format(path)
    source_options = {k: getattr(source, k, None) for k in SOURCE_OPTION_KEYS}
    plugin = format_plugin(
        name, source_options, getattr(source, "options", None), config_key=config_key
    )
    boxes = getattr(source, "boxes", None)
    n = dropped = 0
    for sample in plugin.iter_read(path, warnings, limit=source.limit):
        n += 1
        if not plugin.checks_samples:  # what is read can be written (refineg_core.validity)
            check_sample(sample, where=f"{path} [sample {sample.id[:80]!r}]")
        if boxes is False:
            sample, lost = _without_boxes(sample)
            dropped += lost
        elif boxes:
            unknown = [e for e in sample.entities if e.boxes is None]
            if unknown:
                raise _unknown_regions_error(len(unknown), unknown[0], sample.id, str(path))
        yield sample
    if not n:
        warnings.append(f"{path}: the file holds no samples")
    if dropped:
        warnings.append(_boxes_dropped(dropped, str(path)))


def check_source(source: Any, *, config_key: str) -> None:
    """Validate a data source's format name and options at config load (reads nothing)."""
    if source.format is None:
        return
    format_plugin(
        source.format,
        {k: getattr(source, k, None) for k in SOURCE_OPTION_KEYS},
        getattr(source, "options", None),
        config_key=config_key,
    )


def check_data_sources(data: Any) -> None:
    """Validate every data source of a config's ``[data]`` table (for ``load_config``)."""
    for name in type(data).model_fields:
        value = getattr(data, name)
        sources = value if isinstance(value, list) else [value]
        for i, source in enumerate(sources):
            if source is not None and hasattr(source, "format"):
                key = f"data.{name}" + (f"[{i}]" if isinstance(value, list) else "")
                check_source(source, config_key=key)
