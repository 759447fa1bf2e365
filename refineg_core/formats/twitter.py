"""Twitter-GMNER: CoNLL with ``IMGID:`` lines plus Pascal-VOC XML boxes per image.

An XML ``<object>``'s name is the entity's surface string (tokens joined by
spaces); an entity with no object is not groundable. Bad boxes are dropped with
a warning, never with their entity.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import attrs

from refineg_core.errors import DataError
from refineg_core.formats.base import Dataset
from refineg_core.formats.conll import conll_lines, parse_conll, sentence_to_sample
from refineg_core.formats.images import resolve_image
from refineg_core.types import Box, Sample


@attrs.frozen
class VocBoxes:
    size: tuple[int, int] | None
    boxes: dict[str, list[Box]]


def read_voc_xml(path: Path, warnings: list[str]) -> VocBoxes:
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        warnings.append(f"{path}: XML does not parse ({exc}); its boxes are ignored")
        return VocBoxes(None, {})
    size = None
    w, h = root.findtext("size/width"), root.findtext("size/height")
    if w and h:
        try:
            size = (int(float(w)), int(float(h)))
        except ValueError:
            warnings.append(f"{path}: unreadable <size> {w!r}x{h!r}")
    boxes: dict[str, list[Box]] = {}
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        coords = [obj.findtext(f"bndbox/{k}") for k in ("xmin", "ymin", "xmax", "ymax")]
        try:
            x1, y1, x2, y2 = (float(c) for c in coords)  # type: ignore[arg-type]
            box = Box(x1, y1, x2, y2)
        except (TypeError, ValueError, DataError) as exc:
            warnings.append(f"{path}: box of {name!r} dropped: {exc}")
            continue
        if size and (x1 < 0 or y1 < 0 or x2 > size[0] + 1 or y2 > size[1] + 1):
            clipped = Box.clipped(x1, y1, x2, y2, size)
            warnings.append(
                f"{path}: box of {name!r} {box.as_list()} lies outside the "
                f"{size[0]}x{size[1]} image; " + ("clipped" if clipped else "dropped")
            )
            if clipped is None:
                continue
            box = clipped
        boxes.setdefault(name, []).append(box)
    return VocBoxes(size, boxes)


def read_twitter_gmner(
    path: Path | str,
    *,
    xml_dir: Path | str | None = None,
    images_dir: Path | str | None = None,
) -> Dataset:
    """Read a Twitter-GMNER split; ``xml_dir`` defaults to ``<split dir>/xml``."""
    path = Path(path)
    xml_root = Path(xml_dir) if xml_dir else path.parent / "xml"
    img_root = Path(images_dir) if images_dir else None
    has_xml_dir = xml_root.is_dir()
    warnings: list[str] = []
    seen: Counter[str] = Counter()
    samples: list[Sample] = []
    for sent in parse_conll(path):
        where = f"{path}:{sent.line}"
        if sent.image_id is None:
            raise DataError("sentence without an IMGID: line", where=where)
        seen[sent.image_id] += 1
        sid = (
            sent.image_id if seen[sent.image_id] == 1 else f"{sent.image_id}#{seen[sent.image_id]}"
        )
        xml_path = xml_root / f"{sent.image_id}.xml"
        voc = read_voc_xml(xml_path, warnings) if xml_path.is_file() else VocBoxes(None, {})
        image = resolve_image(img_root, sent.image_id, voc.size, warnings)
        sample = sentence_to_sample(sent, sid, image, warnings, where)
        names = {e.text for e in sample.entities}
        for name in sorted(set(voc.boxes) - names):
            warnings.append(f"{xml_path}: object {name!r} matches no entity of the tweet")
        if has_xml_dir:
            # The dataset ships XML only for tweets with a groundable entity: with
            # the folder present, an entity without an object is "not groundable".
            sample = attrs.evolve(
                sample,
                entities=tuple(
                    attrs.evolve(e, boxes=tuple(voc.boxes.get(e.text, ()))) for e in sample.entities
                ),
            )
        samples.append(sample)
    return Dataset(tuple(samples), tuple(warnings), str(path))


def _voc_xml(sample: Sample) -> str:
    root = ET.Element("annotation")
    ET.SubElement(
        root, "filename"
    ).text = f"{sample.image.image_id if sample.image else sample.id}.jpg"
    if sample.image and sample.image.size:
        size = ET.SubElement(root, "size")
        ET.SubElement(size, "width").text = str(sample.image.width)
        ET.SubElement(size, "height").text = str(sample.image.height)
        ET.SubElement(size, "depth").text = "3"
    for ent in sample.entities:
        for box in ent.box_list:
            obj = ET.SubElement(root, "object")
            ET.SubElement(obj, "name").text = ent.text
            ET.SubElement(obj, "type").text = ent.type
            bnd = ET.SubElement(obj, "bndbox")
            for k, v in zip(("xmin", "ymin", "xmax", "ymax"), box.as_list(), strict=True):
                ET.SubElement(bnd, k).text = str(round(v))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode")


def write_twitter_gmner(samples: Iterable[Sample], path: Path | str) -> None:
    """Write the CoNLL file and an ``xml/`` folder beside it, as the dataset ships."""
    path = Path(path)
    samples = list(samples)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(conll_lines(samples, image_ids=True)), encoding="utf-8")
    xml_dir = path.parent / "xml"
    xml_dir.mkdir(exist_ok=True)
    for s in samples:
        if any(e.boxes for e in s.entities):
            image_id = s.image.image_id if s.image else s.id
            (xml_dir / f"{image_id}.xml").write_text(_voc_xml(s), encoding="utf-8")
