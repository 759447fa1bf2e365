"""Load a dataset through its format plugin (named, or the one installed format that
recognises the file); the ``boxes`` policy and ``limit`` are applied here."""

from __future__ import annotations

import os
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

from refineg_core.errors import DataError, PluginError
from refineg_core.formats.base import Dataset, DatasetFormat
from refineg_core.types import Entity, Sample
from refineg_core.validity import check_sample

#: Data source keys that are handed to the format as options when set.
SOURCE_OPTION_KEYS = ("images_dir",)
#: Data source keys of old configs, now format options (handed over with a warning).
DEPRECATED_SOURCE_KEYS = ("xml_dir", "entities")


def source_keys(source: Any) -> dict[str, Any]:
    """The option keys a config ``DataSource`` sets outside its ``options`` table."""
    keys = (*SOURCE_OPTION_KEYS, *DEPRECATED_SOURCE_KEYS)
    return {k: v for k in keys if (v := getattr(source, k, None)) is not None}


def recognised_format(path: Path, *, config_key: str = "data") -> str:
    """The one installed format that recognises ``path``; none or several is an error,
    so a file is never read by a format that only guessed."""
    from refineg_core import registry  # the registry imports this package's base

    group = registry.slot_group("format")
    matches: list[str] = []
    broken: list[str] = []
    for name in registry.available_names(group):
        try:
            cls = registry.load_class("format", name, config_key=config_key)
        except PluginError as exc:
            broken.append(f"{name} ({exc})")
            continue
        if cls.recognises(path):
            matches.append(name)
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise DataError(
            f"the formats {', '.join(matches)} all recognise this file; "
            f'name one with format = "NAME" at {config_key}.format',
            where=str(path),
        )
    known = registry.available_names(group)
    raise DataError(
        "no installed format recognises this file; name its format with "
        f'format = "NAME" at {config_key}.format (installed: {", ".join(known) or "none"})'
        + (f"; formats that failed to load: {'; '.join(broken)}" if broken else ""),
        where=str(path),
    )


def format_plugin(
    name: str,
    source_options: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
    *,
    config_key: str = "data",
) -> DatasetFormat:
    """The named format with validated options: the source's own keys
    (``source_options``) merged into its ``options`` table."""
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
        if key in merged:
            raise PluginError(
                f"{key!r} is given twice (here and in options); keep options.{key}",
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
    """``False``: no box annotations (every region None); ``True``: an unknown region
    is an error; ``None``: as the format read it."""
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
    images_dir: Path | str | None = None,
    limit: int | None = None,
    boxes: bool | None = None,
    options: Mapping[str, Any] | None = None,
    config_key: str = "data",
) -> Dataset:
    """Read ``path`` with the named format plugin, or the one that recognises it;
    errors name ``config_key`` (``data.train``)."""
    source = {"images_dir": images_dir} if images_dir is not None else {}
    return _load(Path(path), format, source, options, limit, boxes, config_key)


def load_source(source: Any, *, config_key: str = "data") -> Dataset:
    """Load a config ``DataSource`` (path, format, its option keys, boxes, limit)."""
    return _load(
        Path(source.path),
        source.format,
        source_keys(source),
        getattr(source, "options", None),
        source.limit,
        getattr(source, "boxes", None),
        config_key,
    )


def _load(
    path: Path,
    format: str | None,
    source_options: Mapping[str, Any],
    options: Mapping[str, Any] | None,
    limit: int | None,
    boxes: bool | None,
    config_key: str,
) -> Dataset:
    plugin = _plugin_for(path, format, source_options, options, config_key)
    ds = plugin.read(path, limit=limit) if plugin.reads_limit else plugin.read(path)
    if not plugin.checks_samples:  # what is read can be written (validity)
        for s in ds.samples:
            check_sample(s, where=f"{path} [sample {s.id[:80]!r}]")
    if not ds.samples:
        ds = Dataset((), (*ds.warnings, f"{path}: the file holds no samples"), ds.source)
    ds = apply_boxes_policy(ds, boxes)
    if limit is not None:
        ds = Dataset(ds.samples[:limit], ds.warnings, ds.source)
    return ds


def iter_source(source: Any, warnings: list[str], *, config_key: str = "data") -> Iterator[Sample]:
    """``load_source`` one sample at a time (what streaming stages read), problems
    appended to ``warnings`` as they are met."""
    path = Path(source.path)
    options = getattr(source, "options", None)
    plugin = _plugin_for(path, source.format, source_keys(source), options, config_key)
    boxes = getattr(source, "boxes", None)
    n = dropped = 0
    for sample in plugin.iter_read(path, warnings, limit=source.limit):
        n += 1
        if not plugin.checks_samples:
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


def _plugin_for(
    path: Path,
    format: str | None,
    source_options: Mapping[str, Any],
    options: Mapping[str, Any] | None,
    config_key: str,
) -> DatasetFormat:
    if not path.exists():
        raise DataError("file not found", where=str(path))
    name = format or recognised_format(path, config_key=config_key)
    return format_plugin(name, source_options, options, config_key=config_key)


def check_data_sources(data: Any) -> None:
    """Validate the format name and options of every source of ``[data]`` (reads nothing)."""
    for name in type(data).model_fields:
        value = getattr(data, name)
        sources = value if isinstance(value, list) else [value]
        for i, source in enumerate(sources):
            if source is not None and getattr(source, "format", None) is not None:
                key = f"data.{name}" + (f"[{i}]" if isinstance(value, list) else "")
                options = getattr(source, "options", None)
                format_plugin(source.format, source_keys(source), options, config_key=key)


def _is_path(annotation: Any) -> bool:
    """Whether an options field holds a path (``Path``, ``Path | None``...)."""
    return annotation is Path or any(_is_path(a) for a in typing.get_args(annotation))


def option_paths(source: Any, base: Path | None, *, config_key: str) -> list[tuple[str, Path]]:
    """``(key, path)`` of each path option (the format says which) of a source's
    ``options``, made absolute against ``base`` in the table itself."""
    options = getattr(source, "options", None)
    if not options:
        return []
    from refineg_core import registry  # the registry imports this package's base

    name = source.format
    if name is None:
        if not Path(source.path).is_file():
            return []  # the path check names the missing file
        name = recognised_format(Path(source.path), config_key=config_key)
    fields = registry.load_class("format", name, config_key=config_key).Options.model_fields
    found = []
    for key, value in options.items():
        field = fields.get(key)
        if field is None or not isinstance(value, str) or not _is_path(field.annotation):
            continue
        path = Path(os.path.expanduser(os.path.expandvars(value)))
        if base is not None:
            path = Path(os.path.normpath(base / path))
            options[key] = str(path)
        found.append((key, path))
    return found
