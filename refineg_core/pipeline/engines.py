"""Engines: who processes a stage's chunks.

The orchestrator owns the stage files, fingerprints and resume; an engine only
turns an iterator of chunks into an iterator of per-chunk results, **in input
order**. ``local`` does it in this process with the run's own plugins; ``ray``
(``refineg_core.pipeline.ray_engine``) fans chunks out to Ray Data actor pools
that each build the same plugins from the same config. Both call the same
per-chunk code (``Pipeline.tag`` and ``Pipeline.run_mllm_chunk``), which is
why their outputs are equal.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

from refineg_core.pipeline.runner import StageSummary
from refineg_core.pipeline.stagekit import StageHealth
from refineg_core.types import Sample, SampleResult

if TYPE_CHECKING:
    from refineg_core.pipeline.orchestrator import Pipeline

#: (the chunk's input results, earlier results of the same samples to keep)
MllmChunk = tuple[list[SampleResult], list[SampleResult]]


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

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    def tag(self, chunks: Iterator[list[Sample]]) -> Iterator[list[SampleResult]]:
        for chunk in chunks:
            yield self.pipeline.tag(chunk, each=True)

    def mllm(
        self, stage: str, chunks: Iterator[MllmChunk]
    ) -> Iterator[tuple[list[SampleResult], StageSummary]]:
        health = StageHealth()  # one reachability check and one breaker per stage run
        part = self.pipeline.run_dir / f"{stage}.part.jsonl"
        for items, earlier in chunks:
            yield self.pipeline.run_mllm_chunk(stage, items, earlier, part, health)

    def usage(self, stage: str) -> dict[str, Any]:
        return {}

    def report(self, stage: str) -> dict[str, Any]:
        return {"kind": "local"}

    def close(self) -> None:
        pass


def build_engine(pipeline: Pipeline) -> Engine:
    if pipeline.config.engine.kind == "ray":
        from refineg_core.pipeline.ray_engine import RayEngine

        return RayEngine(pipeline)
    return LocalEngine(pipeline)
