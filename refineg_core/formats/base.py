"""What every format shares: the Dataset type, the format plugin contract (a plugin
kind, so a package adds a format without touching the core), decoding."""

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
    """``box`` in whole pixels for integer formats: rounded, or floor/ceil when rounding
    would leave it empty (and so dropped when read back)."""
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
    """The first line (at most ``size`` bytes, no BOM) or "": what ``recognises`` reads."""
    try:
        with Path(path).open("rb") as fh:
            head = fh.read(size)
    except OSError:
        return ""
    return head.decode("utf-8-sig", errors="replace").split("\n", 1)[0].removesuffix("\r")


def text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """The UTF-8 lines of ``path`` numbered from 1, streamed; bad bytes name the line.
    Lines end at ``\\n`` or ``\\r\\n`` only (U+2028 inside a JSON string is text)."""
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
    """Reads a dataset file into samples; optionally writes samples back. ``read`` puts
    recoverable problems in ``Dataset.warnings`` and raises a located ``DataError``
    for the rest; ``boxes`` is None where the file cannot say a region."""

    Options: ClassVar[type[PluginOptions]] = PluginOptions
    #: Where a run writes results in this format (in the run directory); None: read only.
    output_file: ClassVar[str | None] = None
    #: False when overlapping spans cannot be held (the run keeps the longer one).
    holds_overlaps: ClassVar[bool] = True
    #: False when ``write`` iterates its input more than once.
    writes_in_one_pass: ClassVar[bool] = True

    @classmethod
    def recognises(cls, path: Path) -> bool:
        """Whether ``path`` is surely of this format, from its name and first line."""
        return False

    #: True when ``read`` stops after ``limit`` samples (else the core cuts the list).
    reads_limit: ClassVar[bool] = False

    @abc.abstractmethod
    def read(self, path: Path, limit: int | None = None) -> Dataset:
        """The samples of ``path``; nothing past ``limit`` is parsed or warned about."""

    def iter_read(
        self, path: Path, warnings: list[str], limit: int | None = None
    ) -> Iterator[Sample]:
        """The samples one at a time (so memory does not grow with the corpus), problems
        appended to ``warnings``; the default reads the whole file."""
        ds = self.read(path, limit=limit) if self.reads_limit else self.read(path)
        warnings.extend(ds.warnings)
        yield from ds.samples[:limit] if limit is not None else ds.samples

    #: Whether ``read`` already refuses every sample ``validity`` finds unwritable.
    checks_samples: ClassVar[bool] = False

    @classmethod
    def unwritable(cls, sample: Sample) -> str | None:
        """Why ``write`` could not round-trip ``sample``, or None; readers refuse such a
        sample before any work, so a write never fails at the end of a run."""
        return None

    def write(self, samples: Iterable[Sample], path: Path) -> None:
        """Write ``samples`` to ``path`` (and only inside ``path``'s folder)."""
        raise DataError(f"the {type(self).__name__} format cannot write files", where=str(path))
