"""An MLLM stage as a run sees it: chunks, engines, events once, the verdict.

``run_mllm`` reuses the stage's output or runs it chunk by chunk through the
engine, fires its events once (never the engine's workers), records what it
spent and judges it; ``run_chunk`` (what both engines call) runs one chunk
with the stage plugin ``[stage] plugin`` names. The pipeline and the worker
are taken by what they offer (``StageHost``, ``ChunkHost``): no import circle.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from refineg_core import preflight, registry
from refineg_core.errors import ConfigError, PluginError, RefinegError, StageUnavailable
from refineg_core.formats.native import iter_results
from refineg_core.hooks import get_hooks
from refineg_core.labels import LabelSet
from refineg_core.pipeline.call_health import StageHealth
from refineg_core.pipeline.chunked import (
    PreviousResults,
    StageOutput,
    append_results,
    chunks,
    written_ids,
)
from refineg_core.pipeline.mllm_stage import run_mllm_stage
from refineg_core.pipeline.retry import needs_retry
from refineg_core.pipeline.runner import StageSummary
from refineg_core.pipeline.spent import add, delta
from refineg_core.pipeline.stage_contract import MLLMStage, StageSetup
from refineg_core.pipeline.verdict import judge
from refineg_core.runstore import set_aside
from refineg_core.types import SampleResult


class ChunkHost(Protocol):
    """What a chunk needs from the worker."""

    config: Any
    labels: LabelSet
    debug: bool
    context: Any

    def backend(self, key: str = "backend") -> Any: ...
    def dataset(self, key: str) -> Any: ...
    def stage_mode(self, stage: str) -> bool | str: ...
    def _indexed_selector(self) -> Any: ...
    def stage_class(self, stage: str) -> type[MLLMStage]: ...


class StageHost(Protocol):
    """What the stage driver needs from the run (the ``Pipeline``)."""

    config: Any
    run_dir: Path
    store: Any
    planner: Any
    log: Callable[[str], None]
    _preflighted: set[str]

    @property
    def chunk_size(self) -> int: ...
    def backend(self, key: str = "backend") -> Any: ...
    def stage_mode(self, stage: str) -> bool | str: ...
    def fingerprint(self, stage: str) -> Any: ...
    def prepare_run_dir(self) -> Path: ...
    def engine(self) -> Any: ...
    def write_summary(self) -> None: ...
    def reuse(self, stage: str, out: Path, *scratch: Path) -> bool: ...
    def record(self, stage: str, data: dict[str, Any], started: float) -> dict[str, Any]: ...
    def finish_stage(self, stage: str, out: Path, pending: int = 0) -> None: ...


def stage_settings(config: Any, stage: str) -> Any:
    """An MLLM stage's settings with the config's prompt wording filled in."""
    return getattr(config, stage).model_copy(update={"wording": config.prompts})


def stage_class(config: Any, stage: str) -> type[MLLMStage]:
    """The ``MLLMStage`` ``[stage] plugin`` names, running under the stage's name."""
    name = getattr(config, stage).plugin
    cls = registry.load_class("stage", name, config_key=stage)
    missing = [a for a in ("kept_on_failure", "unreached") if not hasattr(cls, a)]
    problem = None
    if not issubclass(cls, MLLMStage):
        problem = "is not an MLLMStage"
    elif getattr(cls, "name", None) != stage:
        problem = f"is named {getattr(cls, 'name', None)!r}; the {stage} stage's must be {stage!r}"
    elif missing:  # the frame ends failure messages with them: found out now, not mid-run
        problem = f"does not declare {', '.join(missing)}"
    if problem:
        raise PluginError(f"stage plugin {name!r} {problem}", where=f"{stage}.plugin")
    return cls


def build_stage(
    worker: ChunkHost, stage: str, items: Sequence[SampleResult], health: StageHealth
) -> MLLMStage:
    backend = worker.backend()

    def pool_size() -> int:
        pool = worker.dataset("pool")
        return len(pool.samples) if pool else 0

    setup = StageSetup(
        backend,
        worker.labels,
        stage_settings(worker.config, stage),
        enabled=worker.stage_mode(stage) is not False,
        reachable=lambda: health.unavailable(backend) is None,
        selector=worker.context.selector,
        indexed_selector=worker._indexed_selector,
        pool_size=pool_size,
    )
    return worker.stage_class(stage).build(setup, items)


def run_chunk(
    worker: ChunkHost,
    stage: str,
    items: Sequence[SampleResult],
    earlier: Sequence[SampleResult],
    part: Path | None,
    health: StageHealth,
) -> tuple[list[SampleResult], StageSummary]:
    """One chunk: ``earlier`` results of a stopped run are kept unless they need a
    retry; the rest are processed, each written to ``part`` as it finishes."""
    if part is not None:  # None: in memory (the Python API), nothing is written
        have = set(written_ids(part))  # a stopped run's results of this chunk stay
        append_results(part, [r for r in earlier if r.id not in have])
    enabled = getattr(worker.config, stage).enabled  # the wording does not matter here
    done = run_mllm_stage(
        build_stage(worker, stage, items, health),
        items,
        part,
        enabled=enabled,
        debug=worker.debug,
        health=health,
    )
    if part is not None:
        part.unlink(missing_ok=True)  # the chunk is whole: its caller commits it to the stage file
    return done


def check_backends(pipeline: StageHost, stages: Sequence[str]) -> None:
    """Load the stage plugins and check their backends (``preflight``), once per run."""
    todo = [s for s in stages if s not in pipeline._preflighted]
    for stage in todo:
        stage_class(pipeline.config, stage)  # a misspelt stage plugin: exit 2 before any work
    preflight.check_backends(pipeline, pipeline.log, todo)
    pipeline._preflighted.update(todo)


def stage_input(pipeline: StageHost, stage: str) -> StageOutput:
    """The upstream stage's finished file, or an error naming the command to run."""
    upstream = pipeline.planner.upstream(stage)
    path = pipeline.run_dir / f"{upstream}.jsonl"
    if not path.exists() or pipeline.store.read(upstream) is None:
        raise RefinegError(
            f"nothing to work on in {pipeline.run_dir}: run `refineg {upstream}` first"
        )
    return StageOutput(upstream, path)


def _input_size(source: Iterable[SampleResult]) -> int:
    """How many results a stage's input holds (a file's lines, not parsed)."""
    if isinstance(source, StageOutput) and source.items is None and source.path is not None:
        with source.path.open("rb") as fh:
            return sum(1 for line in fh if line.strip())
    return sum(1 for _ in source)


def run_mllm(
    pipeline: StageHost, stage: str, results: Iterable[SampleResult] | None
) -> StageOutput:
    """Refine or ground over a run: reuse, or run it chunk by chunk (resuming),
    record what it spent; its events fire once here, whatever the engine."""
    started = time.perf_counter()
    check_backends(pipeline, (stage,))  # `refineg refine` alone is checked too
    source = results if results is not None else stage_input(pipeline, stage)
    run_dir = pipeline.run_dir
    out = run_dir / f"{stage}.jsonl"
    earlier_file = run_dir / f"{stage}.prev.jsonl"
    part = run_dir / f"{stage}.part.jsonl"
    pipeline.prepare_run_dir()
    backend = pipeline.backend()
    mode = pipeline.stage_mode(stage)
    if backend is None:
        if mode is True:
            raise ConfigError(f"stages.{stage} = true needs a [backend]", where="backend")
        pipeline.log(f"{stage}: no backend configured; results pass through")
        pipeline.record(stage, {"skipped": "no backend configured"}, started)
        if isinstance(source, StageOutput):
            return source
        return StageOutput(stage, items=tuple(source))
    if pipeline.reuse(stage, out, earlier_file, part):
        count = sum(1 for _ in iter_results(out))
        pipeline.record(stage, {"reused": True, "samples": count}, started)
        return StageOutput(stage, out)
    if not isinstance(source, StageOutput):
        source = StageOutput(stage, items=tuple(source))  # counted, then streamed
    hooks = get_hooks()
    hooks.stage_started(stage, _input_size(source))
    if out.exists():  # a partial earlier run: its results seed the chunks they belong to
        set_aside(out, earlier_file)
    out.touch()  # an empty input is an empty (finished) stage file, not a missing one
    pipeline.store.write(pipeline.fingerprint(stage), complete=False)
    before, report_before = backend.meter.snapshot(), backend.report()
    earlier = PreviousResults(earlier_file)
    summary = StageSummary(stage)
    pending = 0
    engine = pipeline.engine()
    work = (
        (chunk, earlier.take([r.id for r in chunk]))
        for chunk in chunks(source, pipeline.chunk_size)
    )
    for new, chunk_summary in engine.mllm(stage, work):
        append_results(out, new)
        pending += sum(needs_retry(r, stage) for r in new)
        summary.merge(chunk_summary)
        if judge(stage, summary, mode is True).hopeless:
            break  # a required stage whose backend is down: unfinished, a rerun resumes
    else:
        earlier_file.unlink(missing_ok=True)
        part.unlink(missing_ok=True)
        pipeline.finish_stage(stage, out, pending)
    # this stage's share of counters the whole run shares (both stages, every actor)
    spent = (backend.meter.snapshot() - before).as_dict()
    spent.update(delta(backend.report(), report_before))
    spent = add(spent, engine.usage(stage))
    data = {**summary.as_dict(), "backend": spent, "engine": engine.report(stage)}
    verdict = judge(stage, summary, mode is True)  # the one place a stage fails
    if verdict.note():
        data["verdict"] = verdict.note()
        if not verdict.failed:
            pipeline.log(f"{stage}: {verdict.note()}")
    data = pipeline.record(stage, data, started)
    hooks.stage_finished(stage, data)
    if verdict.failed:
        pipeline.write_summary()
        raise StageUnavailable(verdict.note() or "failed", where=stage)
    return StageOutput(stage, out)
