"""CCKS 2025 GMNER JSON: ``texts {id: {"text"}}`` and ``entities {id: [{name, label, bnd}]}``.

The text comes untokenized and entities come as names, so each name is aligned
to a token span on word boundaries; a name that cannot be found is kept in
``meta["unaligned"]`` (name-based evaluation still counts it) with a warning.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from refineg_core.errors import DataError
from refineg_core.formats.base import Dataset, read_text_file
from refineg_core.formats.images import resolve_image
from refineg_core.labels import find_token_spans, tokenize
from refineg_core.types import Box, Entity, Sample


def _load_json(path: Path) -> Any:
    try:
        return json.loads(read_text_file(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON: {exc.msg}", where=f"{path}:{exc.lineno}") from None


def _box(bnd: Any, where: str, warnings: list[str], size) -> tuple[Box, ...]:
    if not bnd:
        return ()
    try:
        box = Box(*(float(bnd[k]) for k in ("xmin", "ymin", "xmax", "ymax")))
    except (KeyError, TypeError, ValueError, DataError) as exc:
        warnings.append(f"{where}: box dropped: {exc}")
        return ()
    if size:
        clipped = Box.clipped(*box.as_list(), size)
        if clipped != box:
            warnings.append(f"{where}: box {box.as_list()} outside the image; clipped")
        return (clipped,) if clipped else ()
    return (box,)


def read_ccks(
    texts: Path | str, entities: Path | str | None = None, *, images_dir: Path | str | None = None
) -> Dataset:
    texts, img_root = Path(texts), Path(images_dir) if images_dir else None
    text_map = _load_json(texts)
    if not isinstance(text_map, dict):
        raise DataError('expected an object {id: {"text": ...}}', where=str(texts))
    ent_map = _load_json(Path(entities)) if entities else {}
    warnings: list[str] = []
    samples = []
    for sid, rec in text_map.items():
        text = rec.get("text", "") if isinstance(rec, dict) else str(rec)
        where = f"{texts}[{sid}]"
        if not text.strip():
            warnings.append(f"{where}: empty text; kept as an empty sample")
        tokens = tuple(tokenize(text))
        image = resolve_image(img_root, str(sid), None, warnings) if img_root else None
        size = image.size if image else None
        ents: dict[tuple[int, int, str], Entity] = {}
        unaligned = []
        for i, item in enumerate(ent_map.get(sid, []) or []):
            name, label = str(item.get("name", "")), str(item.get("label", ""))
            ewhere = f"{entities}[{sid}][{i}]"
            boxes = _box(item.get("bnd"), ewhere, warnings, size)
            spans = find_token_spans(tokens, name)
            if not spans:
                warnings.append(f"{ewhere}: entity {name!r} not found in its text; kept by name")
                unaligned.append(
                    {"name": name, "label": label, "boxes": [b.as_list() for b in boxes]}
                )
                continue
            key = (*spans[0], label)
            prev = ents.get(key)
            ents[key] = Entity(
                spans[0][0],
                spans[0][1],
                label,
                name,
                boxes=(prev.boxes if prev else ()) + boxes,
            )
        samples.append(
            Sample(
                str(sid),
                tokens,
                text,
                image,
                tuple(sorted(ents.values(), key=lambda e: e.span)),
                meta={"unaligned": unaligned} if unaligned else {},
            )
        )
    return Dataset(tuple(samples), tuple(warnings), str(texts))


def write_ccks(samples: Iterable[Sample], path: Path | str) -> None:
    """Submission JSON: one entry per (entity, box); ``bnd: null`` when not groundable."""
    out: dict[str, list[dict[str, Any]]] = {}
    for s in samples:
        rows = out.setdefault(s.id, [])
        for e in s.entities:
            for box in e.boxes or (None,):
                rows.append(
                    {
                        "name": e.text,
                        "label": e.type,
                        "bnd": None
                        if box is None
                        else dict(
                            zip(
                                ("xmin", "ymin", "xmax", "ymax"),
                                map(round, box.as_list()),
                                strict=True,
                            )
                        ),
                    }
                )
    Path(path).write_text(json.dumps(out, ensure_ascii=False, indent=1), encoding="utf-8")
