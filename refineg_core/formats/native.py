"""refineg's native JSONL: one sample (or result) per line. Documented in README.

    {"id": "797970", "tokens": ["Pak", "is", ...], "text": "Pak is ...",
     "image": {"id": "797970", "path": "imgs/797970.jpg", "width": 500, "height": 706},
     "entities": [{"start": 0, "end": 1, "type": "LOC", "text": "Pak",
                   "boxes": [[132, 22, 500, 706]], "uncertainty": 0.12,
                   "source": "tagger", "grounded_by": "mllm"}],
     "failures": [{"stage": "ground", "kind": "timeout", "message": "..."}],
     "meta": {...}}

``image``, ``failures`` and ``meta`` are optional; ``boxes: []`` means "not
groundable". Results of every stage use the same shape, so any stage's output
can be evaluated or fed to the next stage.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from refineg_core.errors import DataError
from refineg_core.formats.base import Dataset, read_text_file
from refineg_core.labels import tokenize
from refineg_core.types import Box, Entity, Failure, GateVerdict, ImageRef, Sample, SampleResult


def entity_to_dict(e: Entity) -> dict[str, Any]:
    d: dict[str, Any] = {
        "start": e.start,
        "end": e.end,
        "type": e.type,
        "text": e.text,
        "boxes": None
        if e.boxes is None
        else [[round(v, 2) for v in b.as_list()] for b in e.boxes],
        "source": e.source,
    }
    for key in ("confidence", "uncertainty", "grounded_by"):
        value = getattr(e, key)
        if value is not None:
            d[key] = round(value, 6) if isinstance(value, float) else value
    return d


def entity_from_dict(d: dict[str, Any]) -> Entity:
    return Entity(
        start=int(d["start"]),
        end=int(d["end"]),
        type=str(d["type"]),
        text=str(d.get("text", "")),
        boxes=None
        if d.get("boxes") is None
        else tuple(Box(*map(float, b)) for b in d["boxes"]),
        confidence=d.get("confidence"),
        uncertainty=d.get("uncertainty"),
        source=d.get("source", "gold"),
        grounded_by=d.get("grounded_by"),
    )


def sample_to_dict(
    sample: Sample | SampleResult, *, include_failures: bool = True
) -> dict[str, Any]:
    """A Sample, or a SampleResult (whose entities and failures replace the sample's)."""
    result = sample if isinstance(sample, SampleResult) else None
    s = result.sample if result else sample
    entities = result.entities if result else s.entities
    d: dict[str, Any] = {"id": s.id, "tokens": list(s.tokens), "text": s.text}
    if s.image is not None:
        d["image"] = {
            "id": s.image.image_id,
            "path": str(s.image.path) if s.image.path else None,
            "width": s.image.width,
            "height": s.image.height,
        }
    d["entities"] = [entity_to_dict(e) for e in entities]
    if result and include_failures:
        d["failures"] = [f.as_dict() for f in result.failures]
    if result and result.gate is not None:
        d["gate"] = result.gate.as_dict()
    meta = {**s.meta, **(result.meta if result else {})}
    if meta:
        d["meta"] = meta
    return d


def sample_from_dict(d: dict[str, Any]) -> Sample:
    tokens = d.get("tokens") or tokenize(d.get("text", ""))
    img = d.get("image")
    image = None
    if img:
        image = ImageRef(
            str(img.get("id", d["id"])),
            Path(img["path"]) if img.get("path") else None,
            img.get("width"),
            img.get("height"),
        )
    return Sample(
        id=str(d["id"]),
        tokens=tuple(tokens),
        text=d.get("text") or " ".join(tokens),
        image=image,
        entities=tuple(entity_from_dict(e) for e in d.get("entities", ())),
        meta=d.get("meta") or {},
    )


def result_from_dict(d: dict[str, Any]) -> SampleResult:
    sample = sample_from_dict(d)
    failures = tuple(Failure(f["stage"], f["kind"], f["message"]) for f in d.get("failures", ()))
    gate = GateVerdict.from_dict(d["gate"]) if d.get("gate") is not None else None
    return SampleResult(sample, sample.entities, failures, gate=gate)


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    for lineno, line in enumerate(read_text_file(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"invalid JSON: {exc.msg}", where=f"{path}:{lineno}") from None
        if not isinstance(record, dict) or "id" not in record:
            raise DataError("each line must be an object with an 'id'", where=f"{path}:{lineno}")
        yield lineno, record


def read_jsonl(path: Path | str) -> Dataset:
    path = Path(path)
    samples = []
    for lineno, record in iter_jsonl(path):
        try:
            samples.append(sample_from_dict(record))
        except (KeyError, TypeError, ValueError, DataError) as exc:
            raise DataError(f"bad sample record: {exc}", where=f"{path}:{lineno}") from None
    return Dataset(tuple(samples), (), str(path))


def read_results(path: Path | str) -> list[SampleResult]:
    path = Path(path)
    return [result_from_dict(r) for _, r in iter_jsonl(path)]


def write_jsonl(items: Iterable[Sample | SampleResult], path: Path | str) -> None:
    """Write the whole file atomically: a reader never sees half of it."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for item in items:
            fh.write(json.dumps(sample_to_dict(item), ensure_ascii=False) + "\n")
    tmp.replace(path)
