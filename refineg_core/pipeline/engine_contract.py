"""The ``engine`` plugin kind's contract (``refineg.engines``; ``[engine] kind``).

An engine decides *where* a stage's chunks are processed (``local``: this
process; ``ray``: a plugin); the ``Pipeline`` keeps the stage files,
fingerprints and resume. It is built as ``cls(worker, options)`` and must yield
results **in input order**: the driver commits chunk after chunk to one file.
This module never imports the worker (the kinds table imports it: a circle).
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from typing import Any, ClassVar

from refineg_core.interfaces import PluginOptions
from refineg_core.pipeline.summary import StageSummary
from refineg_core.types import Sample, SampleResult

#: One chunk of an MLLM stage: the items to process, and the same ids' results
#: an earlier, interrupted run of the stage already wrote (resume).
MllmChunk = tuple[list[SampleResult], list[SampleResult]]


class Engine(abc.ABC):
    """Turns an iterator of chunks into an iterator of per-chunk results, in order."""

    #: The engine's own options (``[engine] options``); none by default.
    Options: ClassVar[type[PluginOptions]] = PluginOptions

    def __init__(self, worker: Any, options: PluginOptions | None = None) -> None:
        self.worker = worker  # the run's Worker (typed loosely: it reaches the registry)
        self.options = options if options is not None else self.Options()

    @abc.abstractmethod
    def tag(self, chunks: Iterator[list[Sample]]) -> Iterator[list[SampleResult]]:
        """Tagger + gate (each sample alone) over every chunk, in order."""

    @abc.abstractmethod
    def mllm(
        self, stage: str, chunks: Iterator[MllmChunk]
    ) -> Iterator[tuple[list[SampleResult], StageSummary]]:
        """Refine or ground every chunk, in order, with each chunk's summary."""

    def usage(self, stage: str) -> dict[str, Any]:
        """Backend usage spent outside this process's meter during ``stage``."""
        return {}

    def report(self, stage: str) -> dict[str, Any]:
        """What the engine did for ``stage`` (the run summary's ``engine``)."""
        return {"kind": type(self).__name__}

    def close(self) -> None:
        """Release what the engine started (idempotent)."""
        return None
