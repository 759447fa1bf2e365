"""The ``local`` engine (chunks one after another with the run's own ``Worker``;
registered like any engine) and ``build_engine``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from refineg_core import registry
from refineg_core.pipeline.call_health import StageHealth
from refineg_core.pipeline.engine_contract import Engine, MllmChunk
from refineg_core.pipeline.summary import StageSummary
from refineg_core.pipeline.worker import Worker
from refineg_core.types import Sample, SampleResult

__all__ = ["Engine", "LocalEngine", "MllmChunk", "build_engine"]


class LocalEngine(Engine):
    """Chunks processed one after another in this process (the default)."""

    worker: Worker

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

    def report(self, stage: str) -> dict[str, Any]:
        return {"kind": "local"}


def build_engine(worker: Worker) -> Engine:
    """The engine ``engine.kind`` names, with its ``[engine] options`` validated."""
    settings = worker.config.engine
    cls = registry.load_class("engine", settings.kind, config_key="engine")
    options = registry.validate_options(
        "engine", settings.kind, cls, settings.options, config_key="engine"
    )
    return cls(worker, options)  # type: ignore[call-arg]  # engines: (worker, options)
