"""CCKS 2025 GMNER JSON: ``texts {id: {"text"}}`` and ``entities {id: [{name, label, bnd}]}``.

The text comes untokenized and entities come as names, so each name is aligned
to a token span on word boundaries; a name that cannot be found is kept in
``meta["unaligned"]`` (name-based evaluation still counts it) with a warning.
``bnd: null`` means "not groundable"; an item without a ``bnd`` key leaves the
region unknown. A record of the wrong shape is an error naming the file, the
line of its id and the id.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from refineg_core.errors import DataError
from refineg_core.formats.base import Dataset, DatasetFormat, read_text_file, whole_pixels
from refineg_core.formats.ids import SeenIds
from refineg_core.formats.images import IMAGE_FAILURE, resolve_image
from refineg_core.interfaces import PluginOptions
from refineg_core.labels import find_token_spans, tokenize
from refineg_core.runstore import atomic_write
from refineg_core.types import Box, Entity, Sample
from refineg_core.validity import check_sample

_BND_KEYS = ("xmin", "ymin", "xmax", "ymax")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DataError(f"key {key!r} occurs twice in one object")
        out[key] = value
    return out


def _load_json(path: Path) -> tuple[Any, str]:
    text = read_text_file(path)
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys), text
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON: {exc.msg}", where=f"{path}:{exc.lineno}") from None
    except DataError as exc:
        raise DataError(str(exc), where=str(path)) from None
    except RecursionError:
        raise DataError("JSON nested too deeply", where=str(path)) from None


def _where(path: Path, text: str, key: str) -> str:
    """``file:line [id]``: the line where ``"key":`` first occurs (JSON keeps no lines)."""
    needle = json.dumps(key, ensure_ascii=False)
    at = text.find(needle + ":")
    if at < 0:
        at = text.find(needle)
    line = f":{text.count(chr(10), 0, at) + 1}" if at >= 0 else ""
    return f"{path}{line} [{key}]"


def _box(bnd: Any, where: str, warnings: list[str], size) -> tuple[Box, ...]:
    if not bnd:
        return ()
    try:
        values = [bnd[k] for k in _BND_KEYS]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise DataError(f"coordinates must be numbers, got {values}")
        box = Box(*(float(v) for v in values))
    except (KeyError, TypeError, OverflowError, DataError) as exc:
        warnings.append(f"{where}: box dropped: {exc}")
        return ()
    if size:
        clipped = Box.clipped(*box.as_list(), size)
        if clipped != box:
            warnings.append(f"{where}: box {box.as_list()} outside the image; clipped")
        return (clipped,) if clipped else ()
    return (box,)


def _text_of(rec: Any, where: str) -> str:
    if isinstance(rec, str):
        return rec
    if isinstance(rec, dict) and isinstance(rec.get("text", ""), str):
        return rec.get("text", "")
    raise DataError(
        f'expected {{"text": "..."}} or a string, got {json.dumps(rec)[:60]}', where=where
    )


def _items(raw: Any, where: str) -> list[dict[str, Any]]:
    """The entity items of one id, checked for shape."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise DataError(
            f"expected a list of {{name, label, bnd}} items, got {json.dumps(raw)[:60]}",
            where=where,
        )
    for i, item in enumerate(raw):
        ok = (
            isinstance(item, dict)
            and isinstance(item.get("name"), str)
            and item["name"].strip()
            and isinstance(item.get("label"), str)
            and item["label"].strip()
            and (item.get("bnd") is None or isinstance(item.get("bnd"), dict))
        )
        if not ok:
            raise DataError(
                f"item {i} must be {{name: text, label: text, bnd: null or {{xmin..ymax}}}}, "
                f"got {json.dumps(item, ensure_ascii=False)[:80]}",
                where=where,
            )
    return raw


def read_ccks(
    texts: Path | str, entities: Path | str | None = None, *, images_dir: Path | str | None = None
) -> Dataset:
    texts, img_root = Path(texts), Path(images_dir) if images_dir else None
    text_map, raw_texts = _load_json(texts)
    if not isinstance(text_map, dict):
        raise DataError('expected an object {id: {"text": ...}}', where=str(texts))
    ent_path = Path(entities) if entities else None
    ent_map, raw_ents = _load_json(ent_path) if ent_path else ({}, "")
    if not isinstance(ent_map, dict):
        raise DataError("expected an object {id: [{name, label, bnd}]}", where=str(ent_path))
    warnings: list[str] = []
    for sid in sorted(ent_map.keys() - text_map.keys()):
        where = _where(ent_path, raw_ents, sid)  # type: ignore[arg-type]
        warnings.append(f"{where}: this id has no text; its entities are ignored")
    samples = []
    for sid, rec in text_map.items():
        where = _where(texts, raw_texts, sid)
        text = _text_of(rec, where)
        if not text.strip():
            warnings.append(f"{where}: empty text; kept as an empty sample")
        items = _items(ent_map.get(sid), _where(ent_path, raw_ents, sid)) if ent_path else []
        tokens = tuple(tokenize(text))
        image, failure = (
            resolve_image(img_root, str(sid), None, warnings) if img_root else (None, None)
        )
        size = image.size if image else None
        ents: dict[tuple[int, int, str], Entity] = {}
        unaligned = []
        for i, item in enumerate(items):
            name, label = item["name"], item["label"]
            ewhere = f"{ent_path}[{sid}][{i}]"
            boxes = _box(item.get("bnd"), ewhere, warnings, size) if "bnd" in item else None
            spans = find_token_spans(tokens, name)
            if not spans:
                warnings.append(f"{ewhere}: entity {name!r} not found in its text; kept by name")
                unaligned.append(
                    {"name": name, "label": label, "boxes": [b.as_list() for b in boxes or ()]}
                )
                continue
            key = (*spans[0], label)
            prev = ents.get(key)
            merged = boxes if prev is None or prev.boxes is None else prev.boxes + (boxes or ())
            ents[key] = Entity(spans[0][0], spans[0][1], label, name, boxes=merged)
        meta: dict[str, Any] = {"unaligned": unaligned} if unaligned else {}
        if failure:
            meta[IMAGE_FAILURE] = failure
        sample = Sample(
            str(sid), tokens, text, image, tuple(sorted(ents.values(), key=lambda e: e.span)), meta
        )
        samples.append(check_sample(sample, where=where))
    return Dataset(tuple(samples), tuple(warnings), str(texts))


def write_ccks(samples: Iterable[Sample], path: Path | str) -> None:
    """Submission JSON: one entry per (entity, box); ``bnd: null`` when not groundable.

    Written one sample at a time (a corpus's output never sits in memory whole).
    """
    path = Path(path)
    seen = SeenIds()
    written = 0
    with atomic_write(path) as fh:
        fh.write("{")
        for s in samples:
            if seen.add(s.id, written + 1) is not None:
                raise DataError(f"sample id {s.id!r} occurs twice", where=str(path))
            rows = [
                {
                    "name": e.text,
                    "label": e.type,
                    "bnd": None
                    if box is None
                    else dict(zip(_BND_KEYS, whole_pixels(box), strict=True)),
                }
                for e in s.entities
                for box in e.boxes or (None,)
            ]
            body = json.dumps(rows, ensure_ascii=False, indent=1).replace("\n", "\n ")
            fh.write(("," if written else "") + f"\n {json.dumps(s.id, ensure_ascii=False)}: ")
            fh.write(body)
            written += 1
        fh.write("\n}" if written else "}")


class CcksFormat(DatasetFormat):
    """CCKS 2025 GMNER JSON: the texts file, with the entities JSON beside it. JSON
    holds any text, so it can write every sample (``unwritable`` is None)."""

    checks_samples = True
    output_file = "final.ccks.json"

    class Options(PluginOptions):
        entities: Path | None = None  # the entities JSON of the texts (none: unlabelled)
        images_dir: Path | None = None

    @classmethod
    def recognises(cls, path: Path) -> bool:
        return Path(path).suffix == ".json"

    reads_limit = True  # read() stops after ``limit`` samples

    def read(self, path: Path, limit: int | None = None) -> Dataset:
        ds = read_ccks(path, self.options.entities, images_dir=self.options.images_dir)
        return ds if limit is None else Dataset(ds.samples[:limit], ds.warnings, ds.source)

    def write(self, samples: Iterable[Sample], path: Path) -> None:
        write_ccks(samples, path)
