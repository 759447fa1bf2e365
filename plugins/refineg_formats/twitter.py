"""Twitter-GMNER: CoNLL with ``IMGID:`` lines plus Pascal-VOC XML boxes per image.

An XML ``<object>``'s name is the entity's surface string (tokens joined by
spaces). The dataset ships XML only for tweets with a groundable entity, so
with the ``xml/`` folder present an entity without an object is "not
groundable" (boxes ``()``). Without the folder, or when a tweet's XML cannot
be read, the regions are unknown (boxes ``None``): evaluation then refuses to
score GMNER/EEG instead of counting every entity as ungroundable. Bad boxes
are dropped with a warning, never with their entity.
"""

from __future__ import annotations

import itertools
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import attrs

from refineg_core.errors import DataError
from refineg_core.formats.base import Dataset, DatasetFormat, first_line, whole_pixels
from refineg_core.formats.ids import SeenIds
from refineg_core.formats.images import IMAGE_FAILURE, resolve_image
from refineg_core.formats.paths import child_path, plain_name_problem
from refineg_core.interfaces import PluginOptions
from refineg_core.runstore import atomic_write
from refineg_core.types import Box, Sample
from refineg_core.validity import check_sample
from refineg_formats.conll_read import iter_conll, sentence_to_sample
from refineg_formats.conll_write import conll_lines, conll_problem

#: A VOC file of one tweet is a few hundred bytes; anything far larger is refused.
MAX_XML_BYTES = 1 << 20
#: Characters XML 1.0 cannot hold (a NUL or form feed inside a token).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def voc_name(text: str) -> str:
    """The ``<name>`` of an entity in a VOC file: its text without the characters XML
    cannot hold, stripped (as the reader strips names). Writer and reader match
    entities to objects through it, so an odd token keeps its boxes."""
    return _NOT_XML.sub("", text).strip()


#: An id that is surely a plain file name (anything else is looked at closely).
_PLAIN_ID = re.compile(r"[^\x00-\x20\x7f/\\~.][^\x00-\x1f\x7f/\\]*")


def image_id_problem(image_id: str) -> str | None:
    """Why ``image_id`` cannot be an ``IMGID:`` line naming ``xml/<id>.xml``, or None."""
    if _PLAIN_ID.fullmatch(image_id) and not (image_id[0].isspace() or image_id[-1].isspace()):
        return None
    if image_id != image_id.strip():
        return f"image id {image_id[:80]!r} has whitespace at its ends"
    problem = plain_name_problem(image_id)
    if problem is not None:
        return f"image id {image_id[:80]!r} {problem}"
    return None


def twitter_problem(sample: Sample) -> str | None:
    """Why the Twitter-GMNER writer could not write ``sample``, or None: a token or
    type CoNLL cannot hold, or an image id that cannot name a file in ``xml/``."""
    problem = conll_problem(sample)
    if problem is not None:
        return problem
    if not sample.tokens:  # left out by the writer: no IMGID line, no file
        return None
    return image_id_problem(sample.image.image_id if sample.image else sample.id)


@attrs.frozen
class VocBoxes:
    size: tuple[int, int] | None
    boxes: dict[str, list[Box]]


def _parse_xml(path: Path) -> ET.Element:
    """Parse a VOC file, refusing DTDs and entities (XML bombs) and oversized files."""
    data = path.read_bytes()
    if len(data) > MAX_XML_BYTES:
        raise DataError(f"{len(data)} bytes, more than the {MAX_XML_BYTES} a VOC file needs")
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise DataError("declares a DTD or entities, which VOC files never need; refused")
    try:
        return ET.fromstring(data)
    except ET.ParseError as exc:
        raise DataError(f"XML does not parse ({exc})") from None


def _size(root: ET.Element, path: Path, warnings: list[str]) -> tuple[int, int] | None:
    w, h = root.findtext("size/width"), root.findtext("size/height")
    if not (w and h):
        return None
    try:
        size = (int(float(w)), int(float(h)))
    except (ValueError, OverflowError):
        warnings.append(f"{path}: unreadable <size> {w!r}x{h!r}; ignored")
        return None
    if size[0] <= 0 or size[1] <= 0:
        warnings.append(f"{path}: <size> {size[0]}x{size[1]} is empty or negative; ignored")
        return None
    return size


def read_voc_xml(path: Path, warnings: list[str]) -> VocBoxes:
    """Boxes per object name; raises DataError when the file cannot be used at all."""
    try:
        root = _parse_xml(path)
    except DataError as exc:
        raise DataError(str(exc), where=str(path)) from None
    size = _size(root, path, warnings)
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


def _xml_dir(path: Path, xml_dir: Path | str | None, warnings: list[str]) -> Path | None:
    """The folder of the VOC files, or None (with a warning) when it is not there."""
    if xml_dir is not None:
        root = Path(xml_dir)
        if not root.is_dir():
            raise DataError("xml_dir does not exist or is not a folder", where=str(root))
        return root
    root = path.parent / "xml"
    if root.is_dir():
        return root
    warnings.append(
        f"{path}: no xml/ folder beside the file, so the gold regions are unknown; "
        "name the folder of the VOC files (options = {xml_dir = ...} / --gold-option "
        "xml_dir=DIR), or say the data has "
        "no boxes (boxes = false / --no-boxes)"
    )
    return None


def _tweet_boxes(
    xml_root: Path | None, image_id: str, warnings: list[str]
) -> tuple[VocBoxes | None, str | None]:
    """``(boxes, None)``; ``(None, reason)`` when this tweet's regions are unknown."""
    if xml_root is None:
        return None, "no xml folder"
    try:
        xml_path = child_path(xml_root, image_id, ".xml")
    except DataError as exc:
        return None, str(exc)
    if not xml_path.is_file():
        if xml_path.exists() or xml_path.is_symlink():  # a folder, a broken link...
            return None, f"{xml_path} is not a readable file"
        return VocBoxes(None, {}), None
    try:
        return read_voc_xml(xml_path, warnings), None
    except DataError as exc:
        return None, str(exc)


def read_twitter_gmner(
    path: Path | str,
    *,
    xml_dir: Path | str | None = None,
    images_dir: Path | str | None = None,
    limit: int | None = None,
) -> Dataset:
    """Read a Twitter-GMNER split; ``xml_dir`` defaults to ``<split dir>/xml``."""
    warnings: list[str] = []
    tweets = iter_twitter_gmner(path, warnings, xml_dir=xml_dir, images_dir=images_dir)
    samples = tuple(itertools.islice(tweets, limit))
    return Dataset(samples, tuple(warnings), str(path))


def iter_twitter_gmner(
    path: Path | str,
    warnings: list[str],
    *,
    xml_dir: Path | str | None = None,
    images_dir: Path | str | None = None,
) -> Iterator[Sample]:
    """``read_twitter_gmner`` one tweet at a time (the corpus stages stream it)."""
    path = Path(path)
    img_root = Path(images_dir) if images_dir else None
    xml_root = _xml_dir(path, xml_dir, warnings)
    seen: Counter[str] = Counter()
    for sent in iter_conll(path):
        where = f"{path}:{sent.line}"
        if sent.image_id is None:
            raise DataError("sentence without an IMGID: line", where=where)
        if not sent.image_id:
            raise DataError("IMGID: line without an id", where=where)
        if problem := image_id_problem(sent.image_id):
            raise DataError(
                f"{problem}; it must name its image and xml/<id>.xml inside their folders",
                where=where,
            )
        seen[sent.image_id] += 1
        n = seen[sent.image_id]
        sid = sent.image_id if n == 1 else f"{sent.image_id}#{n}"
        if n == 2:
            warnings.append(f"{where}: IMGID:{sent.image_id} repeats; this tweet is {sid!r}")
        voc, unknown = _tweet_boxes(xml_root, sent.image_id, warnings)
        if unknown and xml_root is not None:
            warnings.append(f"{where}: regions of this tweet unknown: {unknown}")
        image, failure = resolve_image(img_root, sent.image_id, voc.size if voc else None, warnings)
        sample = sentence_to_sample(sent, sid, image, warnings, where)
        if voc is not None:
            names = {voc_name(e.text) for e in sample.entities}
            for name in sorted(set(voc.boxes) - names):
                warnings.append(
                    f"{where}: XML object {name!r} of IMGID:{sent.image_id} matches no entity"
                )
            sample = attrs.evolve(
                sample,
                entities=tuple(
                    attrs.evolve(e, boxes=tuple(voc.boxes.get(voc_name(e.text), ())))
                    for e in sample.entities
                ),
            )
        if failure:
            sample = attrs.evolve(sample, meta={**sample.meta, IMAGE_FAILURE: failure})
        yield check_sample(sample, where=where)


def _voc_xml(sample: Sample, earlier: VocBoxes | None = None) -> str:
    """The VOC file of ``sample``; ``earlier``: the objects an earlier tweet of the same
    image id wrote (both tweets read this one file back, so it holds both)."""
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = voc_name(
        f"{sample.image.image_id if sample.image else sample.id}.jpg"
    )
    size_wh = sample.image.size if sample.image and sample.image.size else None
    size_wh = size_wh or (earlier.size if earlier else None)
    if size_wh:
        size = ET.SubElement(root, "size")
        ET.SubElement(size, "width").text = str(size_wh[0])
        ET.SubElement(size, "height").text = str(size_wh[1])
        ET.SubElement(size, "depth").text = "3"
    objects = [
        (n, None, b) for n, boxes in (earlier.boxes if earlier else {}).items() for b in boxes
    ]
    for ent in sample.entities:
        name = voc_name(sample.span_text(ent.start, ent.end))
        objects += ((name, ent.type, box) for box in ent.box_list)
    written: set[tuple[str, Box]] = set()
    for name, etype, box in objects:
        # entities of one name share its objects when read: each (name, box) once,
        # or every read-write cycle would double them
        if (name, box) in written:
            continue
        written.add((name, box))
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = name
        if etype is not None:
            ET.SubElement(obj, "type").text = voc_name(etype)
        bnd = ET.SubElement(obj, "bndbox")
        for k, v in zip(("xmin", "ymin", "xmax", "ymax"), whole_pixels(box), strict=True):
            ET.SubElement(bnd, k).text = str(v)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode")


def write_twitter_gmner(samples: Iterable[Sample], path: Path | str) -> None:
    """Write the CoNLL file and an ``xml/`` folder beside it, as the dataset ships.

    Every sample is checked (``twitter_problem``: tokens, types, image ids that
    must be plain file names) before anything is written, so a hostile id
    (``/tmp/x``, ``../x``) writes nothing; the readers refuse such samples first.
    A sample without tokens is left out (CoNLL has no empty sentence).
    A re-iterable input (a list, a stage's output) is read twice instead of held
    in memory: once to check the ids, once to write.
    """
    path = Path(path)
    if iter(samples) is samples:  # a one-shot iterator: it has to be kept
        samples = list(samples)
    xml_dir = path.parent / "xml"
    for s in samples:
        problem = twitter_problem(s)
        if problem is not None:
            raise DataError(f"sample {s.id!r}: {problem}", where=str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    xml_dir.mkdir(exist_ok=True)
    with atomic_write(path) as fh:
        first = True
        xml_seen = SeenIds()
        for s in samples:
            for line in conll_lines([s], image_ids=True):
                fh.write(line if first else "\n" + line)
                first = False
            _write_xml(xml_dir, s, path, xml_seen)


def _write_xml(xml_dir: Path, s: Sample, path: Path, seen: SeenIds) -> None:
    """``xml/<image id>.xml`` of one written tweet: what this write says, nothing older.

    A tweet with boxes writes the file (merged with an earlier tweet of the same
    image id: both read it back); one without removes a file an earlier write left
    there, which the reader would otherwise take for this tweet's boxes.
    """
    if not s.tokens:
        return
    xml_path = _xml_path(xml_dir, s, path)
    image_id = s.image.image_id if s.image else s.id
    again = seen.add(image_id, 1) is not None
    if any(e.boxes for e in s.entities):
        earlier = read_voc_xml(xml_path, []) if again and xml_path.is_file() else None
        xml_path.write_text(_voc_xml(s, earlier), encoding="utf-8")
    elif not again and (xml_path.is_file() or xml_path.is_symlink()):
        xml_path.unlink()


def _xml_path(xml_dir: Path, s: Sample, path: Path) -> Path:
    image_id = s.image.image_id if s.image else s.id
    try:
        return child_path(xml_dir, image_id, ".xml")
    except DataError as exc:
        raise DataError(f"sample {s.id!r}: {exc}", where=str(path)) from None


class TwitterGmnerFormat(DatasetFormat):
    """Twitter-GMNER: CoNLL with ``IMGID:`` lines, VOC XML boxes in ``xml_dir``."""

    checks_samples = True
    output_file = "twitter/predictions.txt"  # with twitter/xml/ beside it
    holds_overlaps = False  # CoNLL tags
    writes_in_one_pass = False  # checks every image id first, then writes

    class Options(PluginOptions):
        xml_dir: Path | None = None  # default: <folder of the file>/xml
        images_dir: Path | None = None

    @classmethod
    def recognises(cls, path: Path) -> bool:
        return first_line(path).startswith("IMGID:")

    reads_limit = True  # read() stops after ``limit`` samples

    @classmethod
    def unwritable(cls, sample: Sample) -> str | None:
        return twitter_problem(sample)

    def read(self, path: Path, limit: int | None = None) -> Dataset:
        o = self.options
        return read_twitter_gmner(path, xml_dir=o.xml_dir, images_dir=o.images_dir, limit=limit)

    def iter_read(
        self, path: Path, warnings: list[str], limit: int | None = None
    ) -> Iterator[Sample]:
        o = self.options
        tweets = iter_twitter_gmner(path, warnings, xml_dir=o.xml_dir, images_dir=o.images_dir)
        return itertools.islice(tweets, limit)

    def write(self, samples: Iterable[Sample], path: Path) -> None:
        write_twitter_gmner(samples, path)
