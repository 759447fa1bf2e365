"""Label Studio tasks out, Label Studio's JSON export back in.

The labeling config (``labeling_config.xml``, rendered with the run's entity
types) has four parts: ``entity`` (``Labels`` on the ``text``), ``box``
(``RectangleLabels`` on the ``image``), a per-region ``visibility`` choice
("not visible") and ``Relations``. GMNER needs every box tied to its entity;
Label Studio stores that tie as a *relation* result (``from_id``/``to_id``
between the two regions' ids), which its JSON export keeps, so a box is linked
by a relation between it and exactly one entity span (either direction).

Text offsets: a task shows ``" ".join(tokens)``, so Label Studio's character
offsets map onto token boundaries exactly; the sample's own ``text`` and
tokens travel in the task's ``refineg`` data and come back unchanged.
Boxes: Label Studio stores ``x``/``y``/``width``/``height`` in percent of the
image; the import multiplies by the original image size that the task carries
(else the result's ``original_width``/``original_height``).

Import keeps every sample it can: an annotation that cannot be read (an unlinked
box, a span off token boundaries, an unknown label...) becomes an
``ImportProblem`` naming the task and region, and its sample is left out.
"""

from __future__ import annotations

import itertools
import json
import string
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

import attrs

from refineg_core.errors import DataError
from refineg_core.labels import LabelSet
from refineg_core.types import SOURCE_GOLD, Box, Entity, ImageRef, Sample, SampleResult

FROM_ENTITY, FROM_BOX, FROM_VISIBILITY = "entity", "box", "visibility"
TO_TEXT, TO_IMAGE = "text", "image"
NOT_VISIBLE = "not visible"
RELATION = "grounds"


def labeling_config(labels: LabelSet | Sequence[str]) -> str:
    """The shipped labeling config XML with the task's entity types filled in."""
    types = list(labels.types if isinstance(labels, LabelSet) else labels)
    template = resources.files("refineg_labeling").joinpath("labeling_config.xml").read_text()
    rows = "\n".join(f'    <Label value="{_xml_attr(t)}"/>' for t in types)
    return string.Template(template).substitute(entity_labels=rows, box_labels=rows)


def _xml_attr(value: str) -> str:
    return (
        value.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")
    )


# ------------------------------------------------------------------------ export
def token_offsets(tokens: Sequence[str]) -> list[tuple[int, int]]:
    """Character [start, end) of each token in ``" ".join(tokens)``."""
    out, pos = [], 0
    for tok in tokens:
        out.append((pos, pos + len(tok)))
        pos += len(tok) + 1
    return out


def image_url(
    image: ImageRef | None, *, local_root: Path | None = None, url_prefix: str | None = None
) -> str:
    """Where Label Studio finds the image.

    ``local_root``: Label Studio's ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT``; the
    image path must lie under it and becomes ``/data/local-files/?d=<relative path>``.
    ``url_prefix``: a web folder holding the images by file name. Neither: "" (the
    task still carries the image id and size; a missing image is said, not invented).
    """
    if image is None:
        return ""
    if local_root is not None and image.path is not None:
        path, root = Path(image.path).resolve(), Path(local_root).resolve()
        if not path.is_relative_to(root):
            raise DataError(
                f"image {path} is not under the local-files root {root}",
                where=f"sample image {image.image_id}",
            )
        return "/data/local-files/?d=" + quote(path.relative_to(root).as_posix())
    if url_prefix:
        name = Path(image.path).name if image.path else f"{image.image_id}.jpg"
        return url_prefix.rstrip("/") + "/" + quote(name)
    return ""


def _regions(
    sample: Sample, entities: Iterable[Entity], prefix: str, *, scores: bool
) -> list[dict]:
    """Label Studio result items for entities: span, boxes, relations, visibility."""
    offsets = token_offsets(sample.tokens)
    shown = " ".join(sample.tokens)
    size = sample.image.size if sample.image else None
    out: list[dict] = []
    for n, e in enumerate(entities):
        rid = f"{prefix}e{n}"
        c0, c1 = offsets[e.start][0], offsets[e.end - 1][1]
        span = {
            "id": rid,
            "from_name": FROM_ENTITY,
            "to_name": TO_TEXT,
            "type": "labels",
            "value": {"start": c0, "end": c1, "text": shown[c0:c1], "labels": [e.type]},
        }
        if scores and e.confidence is not None:
            span["score"] = round(float(e.confidence), 4)
        out.append(span)
        if e.boxes == ():
            out.append(
                {
                    "id": rid,
                    "from_name": FROM_VISIBILITY,
                    "to_name": TO_TEXT,
                    "type": "choices",
                    "value": {
                        "start": c0,
                        "end": c1,
                        "text": shown[c0:c1],
                        "choices": [NOT_VISIBLE],
                    },
                }
            )
        if not e.boxes or size is None:
            continue
        w, h = size
        for m, b in enumerate(e.boxes):
            bid = f"{rid}b{m}"
            out.append(
                {
                    "id": bid,
                    "from_name": FROM_BOX,
                    "to_name": TO_IMAGE,
                    "type": "rectanglelabels",
                    "original_width": w,
                    "original_height": h,
                    "image_rotation": 0,
                    "value": {
                        "x": 100.0 * b.x1 / w,
                        "y": 100.0 * b.y1 / h,
                        "width": 100.0 * (b.x2 - b.x1) / w,
                        "height": 100.0 * (b.y2 - b.y1) / h,
                        "rotation": 0,
                        "rectanglelabels": [e.type],
                    },
                }
            )
            out.append(
                {
                    "from_id": bid,
                    "to_id": rid,
                    "type": "relation",
                    "direction": "right",
                    "labels": [RELATION],
                }
            )
    return out


def sample_score(entities: Sequence[Entity]) -> float | None:
    """A prediction's score: the least confident entity's confidence (1.0 when none)."""
    confs = [e.confidence for e in entities if e.confidence is not None]
    return round(float(min(confs)), 4) if confs else (1.0 if not entities else None)


def to_task(
    item: Sample | SampleResult,
    *,
    predictions: Mapping[str, Sequence[Entity]] | None = None,
    local_root: Path | None = None,
    url_prefix: str | None = None,
) -> dict[str, Any]:
    """One Label Studio task: the post, its image URL, and one prediction per model.

    ``item``: a selected post (a ``SampleResult`` brings the tagger's entities as the
    ``tagger`` prediction). ``predictions``: more named entity sets (e.g. the MLLM's).
    """
    sample = item.sample if isinstance(item, SampleResult) else item
    preds: dict[str, Sequence[Entity]] = {}
    if isinstance(item, SampleResult):
        preds["refineg-tagger"] = item.entities
    preds.update(predictions or {})
    image = sample.image
    data: dict[str, Any] = {
        "text": " ".join(sample.tokens),
        "image": image_url(image, local_root=local_root, url_prefix=url_prefix),
        "refineg": {
            "id": sample.id,
            "tokens": list(sample.tokens),
            "text": sample.text,
            "image_id": image.image_id if image else None,
            "width": image.width if image else None,
            "height": image.height if image else None,
        },
    }
    task: dict[str, Any] = {"data": data}
    task["predictions"] = [
        {
            "model_version": name,
            "score": sample_score(ents),
            "result": _regions(sample, ents, f"{name[:1]}{i}", scores=True),
        }
        for i, (name, ents) in enumerate(preds.items())
    ]
    return task


def write_tasks(tasks: Sequence[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(list(tasks), ensure_ascii=False, indent=1), encoding="utf-8")
    tmp.replace(path)


# ------------------------------------------------------------------------ import
@attrs.frozen
class ImportProblem:
    """An annotation that could not be read; its sample is left out of the import."""

    task: str
    message: str

    def __str__(self) -> str:
        return f"task {self.task}: {self.message}"


@attrs.frozen
class ImportReport:
    samples: tuple[Sample, ...]
    problems: tuple[ImportProblem, ...]
    tasks: int
    skipped: int  # tasks with no usable annotation (none, or all cancelled)
    unknown_regions: int  # entities with neither a box nor "not visible"

    def as_dict(self) -> dict[str, Any]:
        return {
            "tasks": self.tasks,
            "samples": len(self.samples),
            "entities": sum(len(s.entities) for s in self.samples),
            "boxes": sum(len(e.box_list) for s in self.samples for e in s.entities),
            "skipped_unannotated": self.skipped,
            "entities_region_unknown": self.unknown_regions,
            "problems": [str(p) for p in self.problems],
        }


class _Bad(Exception):
    pass


def _task_name(task: Mapping[str, Any], pos: int) -> str:
    data = task.get("data") if isinstance(task, Mapping) else None
    rid = data.get("refineg", {}).get("id") if isinstance(data, Mapping) else None
    tid = task.get("id") if isinstance(task, Mapping) else None
    parts = [f"#{pos}"]
    if tid is not None:
        parts.append(f"id {tid}")
    if rid is not None:
        parts.append(f"post {rid}")
    return " ".join(parts)


def _latest_annotation(task: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The most recently updated annotation that was not cancelled (None: unannotated)."""
    anns = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    if not anns:
        return None
    return max(anns, key=lambda a: (str(a.get("updated_at") or ""), str(a.get("id") or "")))


def _span_tokens(value: Mapping[str, Any], shown: str, offsets, rid: str) -> tuple[int, int]:
    try:
        c0, c1 = int(value["start"]), int(value["end"])
    except (KeyError, TypeError, ValueError):
        raise _Bad(f"region {rid}: span without integer start/end") from None
    while c0 < c1 and c0 < len(shown) and shown[c0].isspace():  # a selection's blank edges
        c0 += 1
    while c1 > c0 and shown[c1 - 1].isspace():
        c1 -= 1
    starts = {s: i for i, (s, _) in enumerate(offsets)}
    ends = {e: i for i, (_, e) in enumerate(offsets)}
    if c0 not in starts or c1 not in ends or starts[c0] > ends[c1]:
        raise _Bad(
            f"region {rid}: span {value.get('start')}..{value.get('end')} "
            f"({shown[int(value.get('start', 0)) : int(value.get('end', 0))]!r}) "
            "does not fall on token boundaries"
        )
    return starts[c0], ends[c1] + 1


def _one_label(value: Mapping[str, Any], key: str, labels: LabelSet, rid: str) -> str:
    got = value.get(key)
    if not isinstance(got, list) or len(got) != 1:
        raise _Bad(f"region {rid}: needs exactly one label, got {got!r}")
    if got[0] not in labels.types:
        raise _Bad(f"region {rid}: unknown label {got[0]!r} (known: {', '.join(labels.types)})")
    return str(got[0])


def _box(item: Mapping[str, Any], size: tuple[int, int] | None, rid: str) -> Box:
    value = item.get("value") or {}
    if size is None:
        ow, oh = item.get("original_width"), item.get("original_height")
        size = (int(ow), int(oh)) if ow and oh else None
    if size is None:
        raise _Bad(f"box {rid}: the image size is unknown, so percent cannot become pixels")
    if float(value.get("rotation") or 0) != 0:
        raise _Bad(f"box {rid}: rotated by {value.get('rotation')} degrees; boxes must be upright")
    try:
        x, y = float(value["x"]), float(value["y"])
        bw, bh = float(value["width"]), float(value["height"])
    except (KeyError, TypeError, ValueError):
        raise _Bad(f"box {rid}: needs numeric x, y, width, height") from None
    w, h = size
    box = Box.clipped(x * w / 100, y * h / 100, (x + bw) * w / 100, (y + bh) * h / 100, size)
    if box is None:
        raise _Bad(f"box {rid}: empty or outside the image ({x}, {y}, {bw}, {bh} percent)")
    return box


def _sample_of(task: Mapping[str, Any], labels: LabelSet) -> Sample | None:
    data = task.get("data")
    meta = data.get("refineg") if isinstance(data, Mapping) else None
    if not isinstance(meta, Mapping) or not meta.get("id") or not meta.get("tokens"):
        raise _Bad("data.refineg (id, tokens) is missing: was this task exported by refineg?")
    tokens = tuple(str(t) for t in meta["tokens"])
    shown = " ".join(tokens)
    if data.get("text") != shown:
        raise _Bad("data.text was changed after export (offsets would not match the tokens)")
    ann = _latest_annotation(task)
    if ann is None:
        return None
    width, height = meta.get("width"), meta.get("height")
    size = (int(width), int(height)) if width and height else None
    offsets = token_offsets(tokens)
    spans: dict[str, tuple[int, int, str]] = {}
    boxes: dict[str, tuple[Box, str]] = {}
    hidden: set[str] = set()
    links: list[tuple[str, str]] = []
    for item in ann.get("result") or []:
        kind, rid = item.get("type"), str(item.get("id"))
        value = item.get("value") or {}
        if kind == "labels" and item.get("from_name") == FROM_ENTITY:
            start, end = _span_tokens(value, shown, offsets, rid)
            spans[rid] = (start, end, _one_label(value, "labels", labels, rid))
        elif kind == "rectanglelabels" and item.get("from_name") == FROM_BOX:
            boxes[rid] = (_box(item, size, rid), _one_label(value, "rectanglelabels", labels, rid))
        elif kind == "choices" and item.get("from_name") == FROM_VISIBILITY:
            if NOT_VISIBLE in (value.get("choices") or []):
                hidden.add(rid)
        elif kind == "relation":
            links.append((str(item.get("from_id")), str(item.get("to_id"))))
        else:
            raise _Bad(
                f"region {rid}: unexpected result {kind!r} from {item.get('from_name')!r} "
                "(is the project using refineg's labeling config?)"
            )
    owner: dict[str, str] = {}
    for a, b in links:
        pair = (a, b) if a in boxes else (b, a)
        box_id, span_id = pair
        if box_id not in boxes or span_id not in spans:
            raise _Bad(f"relation {a} -> {b} does not link a box to an entity span")
        if owner.get(box_id, span_id) != span_id:
            raise _Bad(f"box {box_id} is linked to two entities ({owner[box_id]}, {span_id})")
        owner[box_id] = span_id
    for box_id in boxes:
        if box_id not in owner:
            raise _Bad(f"box {box_id} is not linked to any entity (add a relation to its span)")
    entities, seen = [], set()
    for rid, (start, end, etype) in spans.items():
        if (start, end) in seen:
            raise _Bad(f"region {rid}: tokens {start}..{end} are marked twice")
        seen.add((start, end))
        mine = [(b, t) for bid, (b, t) in boxes.items() if owner[bid] == rid]
        for _, t in mine:
            if t != etype:
                raise _Bad(f"region {rid}: a {t} box is linked to a {etype} entity")
        if mine and rid in hidden:
            raise _Bad(f"region {rid}: marked 'not visible' but has a box")
        region = tuple(b for b, _ in mine) if mine else (() if rid in hidden else None)
        entities.append(
            Entity(start, end, etype, " ".join(tokens[start:end]), boxes=region, source=SOURCE_GOLD)
        )
    for rid in hidden - set(spans):
        raise _Bad(f"region {rid}: 'not visible' on a region that is not an entity span")
    entities.sort(key=lambda e: e.span)
    for a, b in itertools.pairwise(entities):
        if b.start < a.end:
            raise _Bad(f"entities {a.text!r} and {b.text!r} overlap")
    image = None
    if meta.get("image_id") is not None:
        image = ImageRef(
            str(meta["image_id"]), None, size[0] if size else None, size[1] if size else None
        )
    return Sample(str(meta["id"]), tokens, str(meta.get("text") or shown), image, tuple(entities))


def import_export(tasks: Any, labels: LabelSet) -> ImportReport:
    """Read Label Studio's JSON export (a list of tasks) into gold samples."""
    if not isinstance(tasks, list):
        raise DataError("a Label Studio JSON export is a list of tasks")
    samples: list[Sample] = []
    problems: list[ImportProblem] = []
    skipped = unknown = 0
    ids: set[str] = set()
    for pos, task in enumerate(tasks):
        name = _task_name(task, pos)
        try:
            if not isinstance(task, Mapping):
                raise _Bad("not a JSON object")
            sample = _sample_of(task, labels)
        except _Bad as exc:
            problems.append(ImportProblem(name, str(exc)))
            continue
        except DataError as exc:
            problems.append(ImportProblem(name, str(exc)))
            continue
        if sample is None:
            skipped += 1
            continue
        if sample.id in ids:
            problems.append(ImportProblem(name, f"post {sample.id} appears in two tasks"))
            continue
        ids.add(sample.id)
        unknown += sum(e.boxes is None for e in sample.entities)
        samples.append(sample)
    return ImportReport(tuple(samples), tuple(problems), len(tasks), skipped, unknown)


def read_export(path: Path, labels: LabelSet) -> ImportReport:
    try:
        tasks = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read the Label Studio export: {exc}", where=str(path)) from None
    try:
        return import_export(tasks, labels)
    except DataError as exc:
        raise DataError(str(exc), where=str(path)) from None
