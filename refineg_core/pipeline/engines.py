"""Engines: who processes a stage's chunks.

The orchestrator owns the stage files, fingerprints and resume; an engine only
turns an iterator of chunks into an iterator of per-chunk results, **in input
order**. ``local`` does it in this process with the run's own ``Worker``; ``ray``
(``refineg_core.pipeline.ray_engine``) fans chunks out to Ray Data actor pools
that each build a ``Worker`` from the same config. Both call the same per-chunk
code (``Worker.tag`` and ``Worker.run_mllm_chunk``), which is why their outputs
are equal. Engines depend on the worker only, never on the ``Pipeline``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from refineg_core.pipeline.call_health import StageHealth
from refineg_core.pipeline.ray_engine import RayEngine
from refineg_core.pipeline.runner import StageSummary
from refineg_core.pipeline.worker import MllmChunk, Worker
from refineg_core.types import Sample, SampleResult

__all__ = ["Engine", "LocalEngine", "MllmChunk", "build_engine"]


class Engine(Protocol):
    def tag(self, chunks: Iterator[list[Sample]]) -> Iterator[list[SampleResult]]:
        """Tagger + gate (each sample alone) over every chunk, in order."""

    def mllm(
        self, stage: str, chunks: Iterator[MllmChunk]
    ) -> Iterator[tuple[list[SampleResult], StageSummary]]:
        """Refine or ground every chunk, in order, with each chunk's summary."""

    def usage(self, stage: str) -> dict[str, Any]:
        """Backend usage spent outside this process's meter during ``stage``."""

    def report(self, stage: str) -> dict[str, Any]:
        """What the engine did for ``stage`` (for the run summary)."""

    def close(self) -> None:
        """Release what the engine started."""


class LocalEngine:
    """Chunks processed one after another in this process (the default)."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def tag(self, chunks: Iterator[list[Sample]]) -> Iterator[list[SampleResult]]:
        for chunk in chunks:
            yield self.worker.tag(chunk, each=True)

    def mllm(
        self, stage: str, chunks: Iterator[MllmChunk]
    ) -> Iterator[tuple[list[SampleResult], StageSummary]]:
        health = StageHealth()  # one reachability check and one breaker per stage run
        part = self.worker.run_dir / f"{stage}.part.jsonl"
        for items, earlier in chunks:
            yield self.worker.run_mllm_chunk(stage, items, earlier, part, health)

    def usage(self, stage: str) -> dict[str, Any]:
        return {}

    def report(self, stage: str) -> dict[str, Any]:
        return {"kind": "local"}

    def close(self) -> None:
        pass


def build_engine(worker: Worker) -> Engine:
    """The engine the config names, processing chunks with ``worker`` (local) or
    with workers built from the same config (ray)."""
    if worker.config.engine.kind == "ray":
        return RayEngine(worker)
    return LocalEngine(worker)
