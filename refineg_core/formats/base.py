"""What every format shares: the Dataset type, the format plugin contract, decoding.

A dataset format is a plugin kind like the five components (kind ``format`` in
``refineg_core.kinds``): a class registered under its entry-point group,
selected by the ``format`` key of a data source, with its own pydantic
``Options``. A third-party package adds a format without touching the core.
"""

from __future__ import annotations

import abc
import math
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import ClassVar

import attrs

from refineg_core.errors import DataError
from refineg_core.interfaces import Plugin, PluginOptions
from refineg_core.types import Box, Sample


@attrs.frozen
class Dataset:
    """Samples plus every recoverable problem met while reading them."""

    samples: tuple[Sample, ...]
    warnings: tuple[str, ...] = ()
    source: str = ""

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self):
        return iter(self.samples)

    def by_id(self) -> dict[str, Sample]:
        return {s.id: s for s in self.samples}

    def summary(self) -> str:
        types = Counter(e.type for s in self.samples for e in s.entities)
        n_ent = sum(types.values())
        boxed = sum(1 for s in self.samples for e in s.entities if e.boxes)
        return (
            f"{len(self.samples)} samples, {n_ent} entities ({dict(sorted(types.items()))}), "
            f"{boxed} with boxes, {len(self.warnings)} warnings"
        )


def whole_pixels(box: Box) -> list[int]:
    """``box`` in whole pixels for formats that store integers (CCKS, VOC XML):
    rounded, or floor/ceil when rounding would leave it empty (a 0.4-pixel box
    read back as ``x1 == x2`` would be dropped as invalid)."""
    coords = [round(v) for v in box.as_list()]
    if coords[0] < coords[2] and coords[1] < coords[3]:
        return coords
    return [math.floor(box.x1), math.floor(box.y1), math.ceil(box.x2), math.ceil(box.y2)]


def read_text_file(path: Path) -> str:
    """Read UTF-8 text, turning missing files and bad bytes into located errors."""
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", where=str(path))
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(
            f"not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "convert the file to UTF-8",
            where=f"{path}:{line}",
        ) from None


def first_line(path: Path, size: int = 4096) -> str:
    """The first line of ``path`` (at most ``size`` bytes of it, BOM removed), or
    "" when it cannot be read: what ``recognises`` looks at."""
    try:
        with Path(path).open("rb") as fh:
            head = fh.read(size)
    except OSError:
        return ""
    return head.decode("utf-8-sig", errors="replace").split("\n", 1)[0].removesuffix("\r")


def text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """The UTF-8 lines of ``path``, numbered from 1, read one at a time (a corpus
    larger than memory streams); bad bytes are an error naming the line.

    Lines end at ``\\n`` or ``\\r\\n`` only: U+2028, U+0085 or a form feed inside
    a token or a JSON string is text, as every writer writes it (``str.splitlines``
    would split there and misread the rest of the line).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", where=str(path))
    lineno = 0
    with path.open("rb") as fh:
        for raw in fh:
            lineno += 1
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"not valid UTF-8 (byte 0x{raw[exc.start]:02x}); convert the file to UTF-8",
                    where=f"{path}:{lineno}",
                ) from None
            yield lineno, text.removesuffix("\n").removesuffix("\r")


class DatasetFormat(Plugin):
    """Reads a dataset file into samples; optionally writes samples back.

    Options come from the data source: its ``images_dir`` key (accepted only by
    formats whose ``Options`` declare it) plus its ``options`` table, validated
    by ``Options`` (unknown keys are errors; a relative ``Path`` option is
    resolved against the config file's folder). ``read`` returns every
    recoverable problem in ``Dataset.warnings`` and raises ``DataError`` (with
    file and line) for the rest. An entity's
    ``boxes`` must be None when the file cannot say its region, ``()`` when the
    file says it has none.
    """

    Options: ClassVar[type[PluginOptions]] = PluginOptions
    #: Where a run writes its results in this format, relative to the run
    #: directory (``[outputs] formats`` names the format); None: the format is
    #: read only and cannot be an output format.
    output_file: ClassVar[str | None] = None
    #: False when a file of this format cannot hold overlapping spans (CoNLL
    #: tags): the run then keeps the longer span of an overlap and counts the rest.
    holds_overlaps: ClassVar[bool] = True
    #: False when ``write`` reads a re-iterable input more than once (the run then
    #: observes the results on another pass).
    writes_in_one_pass: ClassVar[bool] = True

    @classmethod
    def recognises(cls, path: Path) -> bool:
        """Whether ``path`` is surely a file of this format (a data source without
        ``format`` is read by the one format that recognises it). Look at the name
        and at most the first line; the default recognises nothing."""
        return False

    #: True when ``read`` takes ``limit`` and stops after that many samples (a
    #: trial run of a huge file then reads only its head); otherwise the core
    #: calls ``read(path)`` and keeps the first ``limit`` samples itself.
    reads_limit: ClassVar[bool] = False

    @abc.abstractmethod
    def read(self, path: Path, limit: int | None = None) -> Dataset:
        """The samples of ``path``; with ``limit``, only the first ``limit`` of them,
        and nothing past them is parsed or warned about (a 30-post trial run of a
        100k-post file reads 30 posts)."""

    def iter_read(
        self, path: Path, warnings: list[str], limit: int | None = None
    ) -> Iterator[Sample]:
        """The samples of ``path`` one at a time, appending problems to ``warnings``.

        Streaming stages read their input this way so memory does not grow with
        the corpus. The default reads the whole file with ``read``; a format
        whose files can outgrow memory overrides it (the native JSONL does).
        """
        ds = self.read(path, limit=limit) if self.reads_limit else self.read(path)
        warnings.extend(ds.warnings)
        yield from ds.samples[:limit] if limit is not None else ds.samples

    #: Whether ``read`` already refuses, at file and line, every sample that
    #: ``refineg_core.validity`` finds unwritable (the loader checks the others).
    checks_samples: ClassVar[bool] = False

    @classmethod
    def unwritable(cls, sample: Sample) -> str | None:
        """Why ``write`` could not write ``sample`` so that ``read`` gives it back,
        or None. The default (a format that can hold any text, like JSONL) is None.

        A run writes every result in its output formats; the readers refuse a
        sample an output format names here, at its file and line, before any
        work (``refineg_core.validity``), so a write never fails at the end.
        """
        return None

    def write(self, samples: Iterable[Sample], path: Path) -> None:
        """Write ``samples`` to ``path`` (and only inside ``path``'s folder)."""
        raise DataError(f"the {type(self).__name__} format cannot write files", where=str(path))
