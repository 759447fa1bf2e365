"""Stage files written chunk by chunk, in input order, so a corpus streams.

A stage reads its input a chunk at a time and appends the chunk's results, so
memory holds one chunk and the disk always a prefix of the answer: a stopped
stage resumes after it (checking the ids), and a rerun that redoes some
results walks the old file, set aside, in lockstep with the input.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import attrs

from refineg_core.errors import RefinegError
from refineg_core.formats.native import iter_jsonl, iter_results, result_from_dict
from refineg_core.pipeline.runner import ResultWriter
from refineg_core.types import SampleResult

T = TypeVar("T")


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of ``size`` (the last may be shorter)."""
    it = iter(items)
    while chunk := list(itertools.islice(it, max(1, size))):
        yield chunk


@attrs.frozen
class StageOutput:
    """A stage's JSONL in input order (or the in-memory results it passed through);
    iterate it to stream them."""

    stage: str
    path: Path | None = None
    items: tuple[SampleResult, ...] | None = None

    def __iter__(self) -> Iterator[SampleResult]:
        if self.items is not None:
            return iter(self.items)
        if self.path is None or not self.path.exists():
            raise RefinegError(f"the {self.stage} stage has no output to read")
        return iter_results(self.path)

    def load(self) -> list[SampleResult]:
        return list(self)


def written_ids(path: Path | None) -> list[str]:
    """Ids of the whole records in a stage file (none for ``None``: in memory)."""
    if path is None or not Path(path).exists():
        return []
    ResultWriter(path).close()  # repairs a torn tail
    return [str(record["id"]) for _, record in iter_jsonl(path)]


def skip_written(items: Iterable[T], done: Sequence[str], id_of, where: Path) -> Iterator[T]:
    """``items`` after the ``done`` prefix; another prefix is an error."""
    it = iter(items)
    for expected in done:
        item = next(it, None)
        if item is None or id_of(item) != expected:
            got = "the end of the input" if item is None else repr(id_of(item))
            raise RefinegError(
                f"{where} does not continue this input (expected {expected!r}, got {got}); "
                "delete it to start the stage again"
            )
    return it


class PreviousResults:
    """An earlier stage file walked in lockstep with the input: ``take(ids)`` gives
    the chunk's results next in the file (one out of order is processed again)."""

    def __init__(self, path: Path) -> None:
        path = Path(path)
        records = iter_jsonl(path) if path.exists() else iter(())
        self._records = ((str(r["id"]), r) for _, r in records)
        self._next: tuple[str, dict] | None = next(self._records, None)

    def take(self, ids: Sequence[str]) -> list[SampleResult]:
        wanted = set(ids)
        found: list[SampleResult] = []
        while self._next is not None and self._next[0] in wanted:
            found.append(result_from_dict(self._next[1]))
            self._next = next(self._records, None)
        return found


def append_results(path: Path | None, results: Iterable[SampleResult]) -> None:
    """Append a finished chunk's results to a stage file (``None``: in memory)."""
    if path is None:
        return
    writer = ResultWriter(path)
    try:
        for result in results:
            writer.write(result)
    finally:
        writer.close()
