"""refineg's native JSONL (shape in README): one sample or result per line, the same
for every stage, so any stage's output can be evaluated or fed to the next. Read as
input data, an image ``path`` must lie inside ``images_dir`` (default: the file's
folder)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import attrs
import pydantic

from refineg_core.errors import DataError
from refineg_core.formats.base import Dataset, text_lines
from refineg_core.formats.ids import SeenIds
from refineg_core.formats.images import IMAGE_FAILURE, check_image, resolve_image
from refineg_core.formats.paths import inside
from refineg_core.formats.records import EntityRecord, SampleRecord
from refineg_core.labels import tokenize
from refineg_core.runstore import atomic_write
from refineg_core.types import Box, Entity, Failure, GateVerdict, ImageRef, Sample, SampleResult
from refineg_core.validity import check_sample

T = TypeVar("T")


def _two_decimals(box: Box) -> list[float]:
    """Coordinates rounded to 0.01 px, unless that would empty the box."""
    coords = [round(v, 2) for v in box.as_list()]
    return coords if coords[0] < coords[2] and coords[1] < coords[3] else box.as_list()


def entity_to_dict(e: Entity) -> dict[str, Any]:
    d: dict[str, Any] = {
        "start": e.start,
        "end": e.end,
        "type": e.type,
        "text": e.text,
        "boxes": None if e.boxes is None else [_two_decimals(b) for b in e.boxes],
        "source": e.source,
    }
    for key in ("confidence", "uncertainty", "grounded_by"):
        value = getattr(e, key)
        if value is not None:
            d[key] = round(value, 6) if isinstance(value, float) else value
    return d


def entity_from_dict(d: Mapping[str, Any]) -> Entity:
    """An Entity from a checked record (``EntityRecord`` or its plain-dict form)."""
    rec = d if isinstance(d, EntityRecord) else EntityRecord.model_validate(d)
    try:
        boxes = None if rec.boxes is None else tuple(Box(*map(float, b)) for b in rec.boxes)
    except OverflowError:  # an integer of 400 digits: not a pixel
        raise DataError("box coordinate too large to be a pixel position") from None
    return Entity(
        start=rec.start,
        end=rec.end,
        type=rec.type,
        text=rec.text,
        boxes=boxes,
        confidence=rec.confidence,
        uncertainty=rec.uncertainty,
        source=rec.source,
        grounded_by=rec.grounded_by,
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


def _image_from(rec: SampleRecord, images_dir: Path | None, root: Path | None, warnings):
    """The record's image; with ``root`` set, a path outside it is refused (a failure)."""
    img = rec.image
    if img is None:
        if images_dir is None:
            return None, None
        return resolve_image(images_dir, str(rec.id), None, warnings)
    image_id = str(img.id if img.id is not None else rec.id)
    size = (img.width, img.height) if img.width and img.height else None
    if root is None:  # a run's own output: paths were checked when the data was read
        path = Path(img.path) if img.path else None
        return ImageRef(image_id, path, img.width, img.height), None
    if not img.path:
        return resolve_image(images_dir, image_id, size, warnings)
    path = Path(img.path) if Path(img.path).is_absolute() else root / img.path
    if not inside(root, path):
        failure = (
            f"image path {img.path!r} lies outside {root}; refused, the sample continues "
            "without it (set images_dir to the folder holding the images)"
        )
        warnings.append(failure)
        return ImageRef(image_id, None, *(size or (None, None))), failure
    real, reason = check_image(path) if path.is_file() else (None, "missing")
    if real is None:
        failure = f"{path}: image {reason}; the sample continues without it"
        warnings.append(failure)
        return ImageRef(image_id, None, *(size or (None, None))), failure
    return ImageRef(image_id, path, *real), None


def _sample(
    rec: SampleRecord,
    images_dir: Path | None = None,
    root: Path | None = None,
    warnings: list[str] | None = None,
) -> Sample:
    tokens = tuple(rec.tokens) if rec.tokens else tuple(tokenize(rec.text or ""))
    entities = tuple(entity_from_dict(e) for e in rec.entities)
    for i, e in enumerate(entities):
        if e.end > len(tokens):
            raise DataError(
                f"entities[{i}] span [{e.start}, {e.end}) runs past the {len(tokens)} tokens"
            )
    warnings = warnings if warnings is not None else []
    image, failure = _image_from(rec, images_dir, root, warnings)
    if root is not None and image is not None and image.size:  # input data: as Twitter
        entities = tuple(_inside_image(e, image.size, str(rec.id), warnings) for e in entities)
    meta = dict(rec.meta or {})
    if failure:
        meta[IMAGE_FAILURE] = failure
    return Sample(
        id=str(rec.id),
        tokens=tokens,
        text=rec.text or " ".join(tokens),
        image=image,
        entities=entities,
        meta=meta,
    )


def _inside_image(e: Entity, size: tuple[int, int], sid: str, warnings: list[str]) -> Entity:
    """``e`` with its boxes clipped to the image (a pixel of slack) or dropped, each
    change warned (a gold box outside would lower every IoU against it)."""
    if not e.boxes:
        return e
    w, h = size
    kept: list[Box] = []
    for box in e.boxes:
        if box.x1 >= 0 and box.y1 >= 0 and box.x2 <= w + 1 and box.y2 <= h + 1:
            kept.append(box)
            continue
        clipped = Box.clipped(*box.as_list(), size)
        warnings.append(
            f"sample {sid!r}: box of {e.text!r} {box.as_list()} lies outside the {w}x{h} "
            "image; " + ("clipped" if clipped else "dropped")
        )
        if clipped is not None:
            kept.append(clipped)
    return e if kept == list(e.boxes) else attrs.evolve(e, boxes=tuple(kept))


def sample_from_dict(d: Mapping[str, Any]) -> Sample:
    """A Sample from one native record; malformed records raise DataError."""
    return _sample(_validated(d))


def result_from_dict(d: Mapping[str, Any]) -> SampleResult:
    rec = _validated(d)
    sample = _sample(rec)
    failures = tuple(Failure(f.stage, f.kind, f.message) for f in rec.failures)
    gate = GateVerdict.from_dict(d["gate"]) if d.get("gate") is not None else None
    return SampleResult(sample, sample.entities, failures, gate=gate)


def _validated(d: Mapping[str, Any]) -> SampleRecord:
    try:
        return SampleRecord.model_validate(d)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        got = json.dumps(err.get("input"), ensure_ascii=False, default=str)[:60]
        raise DataError(f"{loc or 'record'}: {err['msg']}, got {got}{more}") from None


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Each record of a JSONL file with its line number, streamed; errors name the line."""
    for lineno, line in text_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"invalid JSON: {exc.msg}", where=f"{path}:{lineno}") from None
        except RecursionError:
            raise DataError("JSON nested too deeply", where=f"{path}:{lineno}") from None
        if not isinstance(record, dict) or "id" not in record:
            raise DataError("each line must be an object with an 'id'", where=f"{path}:{lineno}")
        yield lineno, record


def _records(path: Path, build: Callable[[dict[str, Any]], T]) -> Iterator[T]:
    """Each line built with ``build``; an error names the file and line; ids are unique."""
    seen = SeenIds()
    for lineno, record in iter_jsonl(path):
        sid = str(record["id"])
        first = seen.add(sid, lineno)
        if first is not None:
            raise DataError(
                f"sample id {sid!r} already used on line {first}", where=f"{path}:{lineno}"
            )
        try:
            yield build(record)
        except DataError as exc:
            raise DataError(f"bad sample record: {exc}", where=f"{path}:{lineno}") from None


def iter_jsonl_samples(
    path: Path | str, warnings: list[str], *, images_dir: Path | str | None = None
) -> Iterator[Sample]:
    """Native JSONL as input data, one sample at a time (a record without an image
    path has it looked up by id in ``images_dir``)."""
    path = Path(path)
    img_root = Path(images_dir) if images_dir else None
    root = img_root or path.parent
    return _records(path, lambda r: check_sample(_sample(_validated(r), img_root, root, warnings)))


def read_jsonl(
    path: Path | str, *, images_dir: Path | str | None = None, limit: int | None = None
) -> Dataset:
    """Read native JSONL as input data (see ``iter_jsonl_samples``)."""
    warnings: list[str] = []
    records = iter_jsonl_samples(path, warnings, images_dir=images_dir)
    samples = tuple(itertools.islice(records, limit))
    return Dataset(samples, tuple(warnings), str(path))


def iter_results(path: Path | str) -> Iterator[SampleResult]:
    """A stage's results one at a time, in file order (streaming stages read this)."""
    return _records(Path(path), result_from_dict)


def read_results(path: Path | str) -> list[SampleResult]:
    """A stage's results (or any native file) with their recorded failures."""
    return list(iter_results(path))


def write_jsonl(items: Iterable[Sample | SampleResult], path: Path | str) -> None:
    """Write the whole file atomically: a reader never sees half of it."""
    with atomic_write(path) as fh:
        for item in items:
            fh.write(json.dumps(sample_to_dict(item), ensure_ascii=False) + "\n")
