"""What an engine is: the contract of the ``engine`` plugin kind (``refineg.engines``).

An engine decides *where* a stage's chunks are processed; the ``Pipeline``
keeps the stage files, fingerprints and resume. ``[engine] kind = "NAME"``
picks one by its entry point; the core registers ``local``
(``refineg_core.pipeline.engines``) exactly as the ``refineg_ray`` plugin
registers ``ray``. The core builds an engine as ``cls(worker, options)``: the
run's ``Worker``, and the engine's own ``Options`` (a ``PluginOptions`` model)
validated from ``[engine] options = {...}`` like any plugin's options, so the
core's ``[engine]`` table holds only what every engine shares (``kind``,
``chunk_size``). The local engine calls the worker; a distributed one rebuilds
workers from ``worker.config`` elsewhere. Both must yield results **in input
order**, since the driver commits chunk after chunk to one stage file.

This module imports only value types and the options base, never the worker:
the table of plugin kinds imports it, and the worker (which reaches the
registry) would close a circle.
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
    """Turns an iterator of chunks into an iterator of per-chunk results, in order.

    ``tag`` and ``mllm`` are the two things an engine must do; ``usage``,
    ``report`` and ``close`` have defaults for an engine that spends nothing
    outside this process and starts nothing.
    """

    #: The engine's own options (``[engine] options``); none by default.
    Options: ClassVar[type[PluginOptions]] = PluginOptions

    def __init__(self, worker: Any, options: PluginOptions | None = None) -> None:
        #: The run's ``refineg_core.pipeline.worker.Worker`` (typed loosely: the
        #: worker reaches the registry, which reads this module).
        self.worker = worker
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
        """Release what the engine started (idempotent); nothing by default."""
        return None
