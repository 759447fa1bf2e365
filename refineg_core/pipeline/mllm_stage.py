"""The one frame that runs every MLLM stage (``MLLMStage``: refine, ground, a variant).

It owns, identically for every stage: asking the backend through the response
cache (only usable answers are cached), the call breaker, failures, counters,
skipping a disabled or unreachable stage with retry markers, and running a
chunk's samples concurrently and resumably. Stage events are the driver's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from refineg_core import secrets
from refineg_core.chat import ChatResponse
from refineg_core.mllm_cache import complete_checked
from refineg_core.pipeline.call_health import Counters, StageHealth
from refineg_core.pipeline.retry import forget_unfinished, write_all
from refineg_core.pipeline.runner import StageSummary, failure_from_exception, load_done, run_stage
from refineg_core.pipeline.stage_contract import AnswerError, Call, Judgement, MLLMStage, Skip
from refineg_core.pipeline.verdict import is_own_fault
from refineg_core.types import Failure, SampleResult


class UnusableAnswer(Exception):
    """Raised inside the cache check: the answer is a failure, not cached."""

    def __init__(self, failure: Failure, text: str, judgement: Judgement | None = None) -> None:
        super().__init__(failure.message)
        self.failure = failure
        self.text = text
        self.judgement = judgement


def no_usable_item(stage: str, n_items: int, refused: Mapping[str, int], outcome: str) -> Failure:
    """The failure of an answer none of whose ``n_items`` items could be used."""
    why = ", ".join(f"{k} x{v}" for k, v in sorted(refused.items()) if v)
    return Failure(
        stage,
        "no_usable_item",
        f"none of the answer's {n_items} items is usable ({why}); {outcome}",
    )


@attrs.frozen
class Asked:
    """How one call ended: a judged answer, or the failure (with the judgement when
    nothing in the answer was usable)."""

    judgement: Judgement | None = None
    failure: Failure | None = None


def ask(
    stage: MLLMStage,
    result: SampleResult,
    call: Call,
    counters: Counters,
    info: dict[str, Any],
    debug: bool,
) -> Asked:
    """One call plus reading its answer; failures are recorded, never raised."""
    name = stage.name

    def check(response: ChatResponse) -> Judgement:
        try:
            judgement = stage.judge(result, call, response.text)
        except AnswerError as exc:
            raise UnusableAnswer(Failure(name, exc.kind, str(exc)), response.text) from None
        if judgement.items and not judgement.usable:
            failure = no_usable_item(
                name, judgement.items, judgement.refused, stage.kept_on_failure
            )
            raise UnusableAnswer(failure, response.text, judgement)
        return judgement

    try:
        counters.health.before_call()
        response, judgement = complete_checked(stage.backend, call.request, check)
    except UnusableAnswer as exc:
        counters.health.answered()
        counters.add("calls")
        counters.add("answers_unusable")
        info["outcome"] = "unusable_answer"
        info["answer"] = exc.text[:2000]
        return Asked(judgement=exc.judgement, failure=exc.failure)
    except Exception as exc:  # whatever the type: the verdict classifies it
        failure = failure_from_exception(name, exc)  # names the plugin that crashed
        if is_own_fault(failure.kind):  # the sample's image: says nothing about the backend
            counters.add("samples_own_fault")
            info["outcome"] = "sample_failed"
        else:
            counters.health.failed(exc)
            counters.add("calls_failed")
            info["outcome"] = "backend_failed"
        return Asked(failure=Failure(name, failure.kind, secrets.scrub(failure.message)[:500]))
    counters.health.answered()
    counters.usage(response)
    if debug:
        info["answer"] = response.text
    return Asked(judgement)


def note_answer(
    judged: Judgement,
    stage: MLLMStage,
    counters: Counters,
    info: dict[str, Any],
    failures: tuple[Failure, ...],
) -> tuple[Failure, ...]:
    """Count an answer's repairs; a truncated answer adds a failure saying what
    happened to what it did not reach."""
    counters.add("answers_repaired", int(judged.repaired))
    info["outcome"] = "truncated" if judged.truncated else "ok"
    if not judged.truncated:
        return failures
    counters.add("answers_truncated")
    message = f"answer cut off after {judged.items} complete items; {stage.unreached}"
    return (*failures, Failure(stage.name, "truncated", message))


def process(
    stage: MLLMStage, item: SampleResult, counters: Counters, debug: bool = False
) -> SampleResult:
    """One sample: request, call, judge, apply; every ending is in the result."""
    call = stage.request(item)
    if isinstance(call, Skip):
        counters.add(call.counter)
        return item
    counters.update(dict(call.counts))
    info: dict[str, Any] = dict(call.info)
    asked = ask(stage, item, call, counters, info, debug)
    if asked.judgement is not None:
        counters.update(dict(asked.judgement.counts))
        info.update(asked.judgement.info)
    meta = {**item.meta, **call.meta}
    if asked.failure is not None:
        if asked.failure.kind == "no_usable_item":
            counters.add("answers_without_usable_item")
            info["outcome"] = "no_usable_item"
        return attrs.evolve(
            item, failures=(*item.failures, asked.failure), meta={**meta, stage.name: info}
        )
    assert asked.judgement is not None
    applied = stage.apply(item, call, asked.judgement)
    counters.update(dict(applied.counts))
    info.update(applied.info)
    failures = note_answer(asked.judgement, stage, counters, info, item.failures)
    return attrs.evolve(
        item, entities=applied.entities, failures=failures, meta={**meta, stage.name: info}
    )


def skip_stage(
    stage: MLLMStage,
    items: Sequence[SampleResult],
    out_path: Path,
    *,
    reason: str,
    reason_key: str = "unavailable",
) -> tuple[list[SampleResult], StageSummary]:
    """Pass every result through without calls, saying why; unfinished ones get a
    ``skipped`` marker so a later run redoes them."""
    name = stage.name
    done = load_done(out_path)
    summary = StageSummary(name, total=len(items))
    out: list[SampleResult] = []
    skipped = 0
    todo = [it for it in items if it.id not in done]
    for it in items:
        if it.id in done:
            out.append(done[it.id])
            summary.resumed += 1
            continue
        if stage.needs_call(it):
            # only what needed a call is marked: a rerun retries exactly these
            skipped += 1
            out.append(attrs.evolve(it, meta={**it.meta, name: {"skipped": reason_key}}))
        else:
            out.append(it)
    if out_path is not None:  # None: in memory (the Python API)
        write_all(out_path, out)
    summary.counters["requests_skipped"] = skipped
    summary.counters["passed_through"] = len(todo)
    summary.notes["backend"] = stage.backend.describe()
    summary.notes[reason_key] = reason
    return out, summary


def run_mllm_stage(
    stage: MLLMStage,
    results: Sequence[SampleResult],
    out_path: Path,
    *,
    enabled: bool = True,
    debug: bool = False,
    health: StageHealth | None = None,
) -> tuple[list[SampleResult], StageSummary]:
    """One chunk: skipped when disabled or unreachable, else every result through
    ``process`` at the backend's concurrency, resumably through ``out_path``. A
    down backend is a note; ``verdict.judge`` decides if the stage fails.
    ``health`` is what earlier chunks learnt of the backend."""
    health = health or StageHealth()
    out_path = Path(out_path) if out_path is not None else None  # None: in memory
    stage.start(results, out_path)
    try:
        out, summary = _run(stage, results, out_path, enabled, debug, health)
    finally:
        stage.stop()
    stage.notes(summary, results, skipped="passed_through" in summary.counters)
    return out, summary


def _run(
    stage: MLLMStage,
    results: Sequence[SampleResult],
    out_path: Path,
    enabled: bool,
    debug: bool,
    health: StageHealth,
) -> tuple[list[SampleResult], StageSummary]:
    backend = stage.backend
    forgotten = forget_unfinished(out_path, stage.name)
    if not enabled:
        reason = f"the {stage.name} stage is disabled in the config"
        return skip_stage(stage, results, out_path, reason=reason, reason_key="disabled")
    needed = any(map(stage.needs_call, results))
    reason = stage.unusable() or (health.unavailable(backend) if needed else None)
    if reason:
        return skip_stage(stage, results, out_path, reason=reason)
    counters = Counters(health=health.breaker(max(8, 2 * backend.max_concurrency)))
    out, summary = run_stage(
        stage.name,
        results,
        lambda item: process(stage, item, counters, debug),
        out_path,
        workers=backend.max_concurrency,
        debug=debug,
        events=False,  # the driver announces the whole stage once
    )
    summary.counters.update(counters.counts)
    if forgotten:
        summary.counters["retried_from_last_run"] = forgotten
    summary.notes["backend"] = backend.describe()
    down = counters.health.every_call_failed
    if down:
        summary.notes["stopped"] = down
    return out, summary
