"""Stage files written chunk by chunk, in input order, so a corpus streams.

Every stage output (``predict.jsonl``, ``refine.jsonl``, ``ground.jsonl``)
holds one result per input sample **in input order**. A stage reads its input
a chunk at a time, processes the chunk and appends the chunk's results, so
memory holds one chunk whatever the corpus size, and what is on disk is
always a prefix of the answer:

- an interrupted stage resumes after the results already written (same
  fingerprint), checking that their ids are the input's prefix;
- a rerun that must redo some results (failed calls) moves the old file
  aside and walks it in lockstep with the input: each chunk starts from its
  old results and redoes only what needs it.
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
    """What a stage produced: its JSONL in input order (or, for a stage that passed
    an in-memory input through, those results). Iterate it to stream the results."""

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
        """Every result in memory (small inputs, tests, the Python API)."""
        return list(self)


def written_ids(path: Path | None) -> list[str]:
    """Ids of the whole records in a stage file (a torn last line is cut off first);
    none without a file (``None``: results kept in memory only)."""
    if path is None or not Path(path).exists():
        return []
    ResultWriter(path).close()  # repairs a torn tail
    return [str(record["id"]) for _, record in iter_jsonl(path)]


def skip_written(items: Iterable[T], done: Sequence[str], id_of, where: Path) -> Iterator[T]:
    """``items`` after the ``done`` prefix; a different prefix is an error (the file
    was not made from this input)."""
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
    """An earlier stage file walked in lockstep with the input (both in input order).

    ``take(ids)`` hands back the earlier results of the chunk's ids that come
    next in the file. A record out of order is not taken: its sample is simply
    processed again (answers come from the response cache).
    """

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
    """Append a finished chunk's results to a stage file (flushed line by line);
    ``None`` writes nothing (results kept in memory only)."""
    if path is None:
        return
    writer = ResultWriter(path)
    try:
        for result in results:
            writer.write(result)
    finally:
        writer.close()
