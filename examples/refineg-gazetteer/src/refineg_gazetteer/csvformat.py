"""A simple CSV dataset format: one sample per row, entities as ``type:name`` pairs.

    id,text,entities
    s1,Obama visits Paris today,PER:Obama; LOC:Paris
    s2,Nothing to see here,

Text is tokenized by refineg's tokenizer; each name is tagged wherever it
occurs (longer names first). CSV has no boxes, so every region is unknown
(``boxes`` None). Registered as ``refineg.formats`` entry point ``csv``; the
core knows nothing about it.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from pathlib import Path

from pydantic import Field

from refineg.plugin import (
    DataError,
    Dataset,
    DatasetFormat,
    Entity,
    PluginOptions,
    Sample,
    read_text_file,
    tag_names,
    tags_to_spans,
    tokenize,
)

COLUMNS = ("id", "text", "entities")


class CsvFormat(DatasetFormat):
    """``id,text,entities`` rows; ``entities`` like ``PER:Obama; LOC:Paris``."""

    class Options(PluginOptions):
        delimiter: str = Field(",", min_length=1, max_length=1)
        entity_separator: str = Field(";", min_length=1)
        type_separator: str = Field(":", min_length=1)

    def _pairs(self, cell: str, where: str) -> list[tuple[str, str]]:
        pairs = []
        for part in cell.split(self.options.entity_separator):
            if not part.strip():
                continue
            etype, sep, name = part.partition(self.options.type_separator)
            if not sep or not etype.strip() or not name.strip():
                raise DataError(
                    f"entity {part.strip()!r} is not 'type{self.options.type_separator}name'",
                    where=where,
                )
            pairs.append((name.strip(), etype.strip()))
        return pairs

    def read(self, path: Path) -> Dataset:
        path = Path(path)
        rows = csv.reader(io.StringIO(read_text_file(path)), delimiter=self.options.delimiter)
        header = next(rows, None)
        if header is None or tuple(h.strip() for h in header) != COLUMNS:
            raise DataError(f"the header must be {','.join(COLUMNS)}", where=f"{path}:1")
        samples, seen = [], set()
        for row in rows:
            where = f"{path}:{rows.line_num}"
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(COLUMNS):
                raise DataError(f"expected {len(COLUMNS)} columns, found {len(row)}", where=where)
            sid, text, cell = (c.strip() for c in row)
            if not sid or sid in seen:
                raise DataError(f"sample id {sid!r} is empty or repeated", where=where)
            seen.add(sid)
            tokens = tuple(tokenize(text))
            pairs = self._pairs(cell, where)
            tags, missing = tag_names(tokens, pairs)
            if missing:
                raise DataError(f"entity {missing[0][0]!r} is not in the text", where=where)
            entities = tuple(
                Entity(s, e, t, " ".join(tokens[s:e])) for s, e, t in tags_to_spans(tags).spans
            )
            samples.append(Sample(sid, tokens, text, entities=entities))
        return Dataset(tuple(samples), (), str(path))

    def write(self, samples: Iterable[Sample], path: Path) -> None:
        out = io.StringIO()
        writer = csv.writer(out, delimiter=self.options.delimiter, lineterminator="\n")
        writer.writerow(COLUMNS)
        sep = f"{self.options.entity_separator} "
        for s in samples:
            cell = sep.join(f"{e.type}{self.options.type_separator}{e.text}" for e in s.entities)
            writer.writerow((s.id, s.text, cell))
        Path(path).write_text(out.getvalue(), encoding="utf-8")
