"""An MLLM stage as a run sees it: chunks, engines, events once, the verdict.

``run_mllm`` reuses the stage's output or runs it chunk by chunk through the
engine (each chunk: ``worker.run_chunk``), fires its events once (never the
engine's workers), records what it spent and judges it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from refineg_core import preflight
from refineg_core.errors import ConfigError, RefinegError, StageUnavailable
from refineg_core.formats.native import iter_results
from refineg_core.hooks import get_hooks
from refineg_core.pipeline.chunked import PreviousResults, StageOutput, append_results, chunks
from refineg_core.pipeline.retry import needs_retry
from refineg_core.pipeline.runner import StageSummary
from refineg_core.pipeline.spent import add, delta
from refineg_core.pipeline.stagerun import StageRun
from refineg_core.pipeline.verdict import judge
from refineg_core.runstore import set_aside
from refineg_core.types import SampleResult


def check_backends(pipeline: StageRun, stages: Sequence[str]) -> None:
    """Load the stage plugins and check their backends (``preflight``), once per run."""
    todo = [s for s in stages if s not in pipeline._preflighted]
    for stage in todo:
        pipeline.worker.stage_class(stage)  # a misspelt stage plugin: exit 2 before any work
    preflight.check_backends(pipeline, pipeline.log, todo)
    pipeline._preflighted.update(todo)


def stage_input(pipeline: StageRun, stage: str) -> StageOutput:
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


def run_mllm(pipeline: StageRun, stage: str, results: Iterable[SampleResult] | None) -> StageOutput:
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
