"""What every reader shares: decoding files with a clear error, and the Dataset type."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import attrs

from refineg_core.errors import DataError
from refineg_core.types import Sample


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
