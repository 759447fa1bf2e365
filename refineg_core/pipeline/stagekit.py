"""What the two MLLM stages (refine, ground) share around ``run_stage``.

- thread-safe counters (calls, tokens, invalid items) merged into the summary;
- the "skipped" marker: when the backend is unavailable (or the stage is
  disabled) every result still goes to the stage's JSONL so downstream outputs
  stay valid, but marked ``meta[stage]["skipped"]``;
- retry, not replay: the next run forgets skipped lines and lines whose call
  failed or whose answer was unusable, so they are asked again (usable answers
  come from the response cache, which never stores the unusable ones);
- a call-health breaker: when every call so far has failed (wrong URL, bad key,
  model not served), the stage stops calling instead of failing 10,000 times;
- turning a backend exception into a recorded failure kind;
- ``ask``: one call plus answer parsing, with failures recorded the same way.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from refineg_core import secrets
from refineg_core.chat import ChatRequest, ChatResponse
from refineg_core.errors import BackendUnavailable
from refineg_core.formats.native import sample_to_dict
from refineg_core.hooks import get_hooks
from refineg_core.mllm_cache import complete_checked
from refineg_core.pipeline.answers import AnswerError, ParsedAnswer, parse_answer
from refineg_core.pipeline.runner import StageSummary, failure_from_exception, load_done, run_stage
from refineg_core.pipeline.verdict import failure_kind, is_own_fault
from refineg_core.runstore import atomic_write
from refineg_core.types import Failure, SampleResult

#: Failure kinds that do not make a sample be asked again: the answer was usable
#: (``truncated``), or the sample's image cannot be decoded (``image``: asking again
#: cannot help; a changed image file changes the data's fingerprint instead).
FINAL_FAILURE_KINDS = frozenset({"truncated", "image"})


class Counters:
    """A Counter that many worker threads may bump, plus the stage's call health."""

    def __init__(self, breaker_after: int = 8, health: CallHealth | None = None) -> None:
        self._lock = threading.Lock()
        self.counts: Counter = Counter()
        self.health = health or CallHealth(breaker_after)

    def add(self, key: str, n: int = 1) -> None:
        if n:
            with self._lock:
                self.counts[key] += n

    def update(self, counts: Counter | dict[str, int]) -> None:
        with self._lock:
            self.counts.update({k: v for k, v in counts.items() if v})

    def usage(self, response: ChatResponse) -> None:
        with self._lock:
            self.counts["calls"] += 1
            if response.cached:
                self.counts["cached_calls"] += 1
            self.counts["prompt_tokens"] += response.usage.prompt_tokens
            self.counts["completion_tokens"] += response.usage.completion_tokens


class CallHealth:
    """Stops a stage whose backend has failed every call so far.

    ``limit`` failed calls in a row with no success ever trips it; after that
    every call fails at once with the reason. One success disarms it for the run
    (a flaky server is retried per call, not abandoned).
    """

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self._lock = threading.Lock()
        self._in_a_row = 0
        self._answered = False
        self._last = ""
        self.tripped: str | None = None

    def before_call(self) -> None:
        if self.tripped:
            raise BackendUnavailable(self.tripped)

    def answered(self) -> None:
        with self._lock:
            self._answered = True
            self._in_a_row = 0

    @property
    def every_call_failed(self) -> str | None:
        """Why the stage must count as unavailable: calls were made, none answered."""
        if self.tripped:
            return self.tripped
        if self._in_a_row and not self._answered:
            return f"all {self._in_a_row} calls failed (last: {self._last})"
        return None

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            self._last = str(exc)[:200]
            self._in_a_row += 1
            if not self._answered and self._in_a_row >= self.limit and not self.tripped:
                self.tripped = (
                    f"stopped calling after the first {self._in_a_row} calls all failed "
                    f"(last: {str(exc)[:200]})"
                )


class StageHealth:
    """What one stage learns about its backend, shared by every chunk it runs:
    whether the backend is reachable (asked once) and the call breaker."""

    def __init__(self) -> None:
        self.calls: CallHealth | None = None
        self._checked = False
        self._reason: str | None = None

    def unavailable(self, backend) -> str | None:
        if not self._checked:
            self._reason = backend.check_available()
            self._checked = True
        return self._reason

    def breaker(self, limit: int) -> CallHealth:
        if self.calls is None:
            self.calls = CallHealth(limit)
        return self.calls


def merged_meta(result: SampleResult) -> dict[str, Any]:
    """Meta of a result whether it came from memory or from a JSONL (sample.meta)."""
    return {**result.sample.meta, **result.meta}


def is_skipped(result: SampleResult, stage: str) -> bool:
    info = merged_meta(result).get(stage)
    return isinstance(info, dict) and bool(info.get("skipped"))


def needs_retry(result: SampleResult, stage: str) -> bool:
    """Skipped, or a call/answer of this stage failed: a rerun asks again."""
    return is_skipped(result, stage) or any(
        f.stage == stage and f.kind not in FINAL_FAILURE_KINDS for f in result.failures
    )


def forget_unfinished(out_path: Path, stage: str) -> int:
    """Drop the lines a rerun must redo (skipped placeholders, failed calls, unusable
    answers); return how many were dropped. The file never holds an id twice."""
    if out_path is None or not Path(out_path).exists():  # None: in memory (the Python API)
        return 0
    done = load_done(out_path)
    keep = [r for r in done.values() if not needs_retry(r, stage)]
    dropped = len(done) - len(keep)
    if dropped:
        _write_all(out_path, keep)
    return dropped


def _write_all(path: Path, results: Sequence[SampleResult]) -> None:
    """Rewrite a stage file atomically (a kill mid-write leaves the old file)."""
    with atomic_write(path) as fh:
        for r in results:
            fh.write(json.dumps(sample_to_dict(r), ensure_ascii=False) + "\n")


def skip_stage(
    stage: str,
    items: Sequence[SampleResult],
    out_path: Path,
    *,
    needs_call: Callable[[SampleResult], bool],
    reason: str,
    backend: str,
    reason_key: str = "unavailable",
) -> tuple[list[SampleResult], StageSummary]:
    """Pass every result through without calls, say why, and count what was skipped.

    Results already finished by an earlier run are kept; the others are written
    with a ``skipped`` marker so a later run redoes them.
    """
    hooks = get_hooks()
    done = load_done(out_path)
    summary = StageSummary(stage, total=len(items))
    out: list[SampleResult] = []
    skipped = 0
    todo = [it for it in items if it.id not in done]
    hooks.stage_started(stage, 0)
    for it in items:
        if it.id in done:
            out.append(done[it.id])
            summary.resumed += 1
            continue
        if needs_call(it):
            # only what needed a call is marked: a rerun retries exactly these
            skipped += 1
            out.append(attrs.evolve(it, meta={**it.meta, stage: {"skipped": reason_key}}))
        else:
            out.append(it)
    if out_path is not None:  # None: in memory (the Python API)
        _write_all(out_path, out)
    summary.counters["requests_skipped"] = skipped
    summary.counters["passed_through"] = len(todo)
    summary.notes["backend"] = backend
    summary.notes[reason_key] = reason
    hooks.stage_finished(stage, summary.as_dict())
    return out, summary


def backend_failure_kind(exc: BaseException) -> str:
    """A short kind for a failed call (``refineg_core.pipeline.verdict.failure_kind``)."""
    return failure_kind(exc)


class UnusableAnswer(Exception):
    """Raised inside the cache check: the answer is recorded as a failure, not cached."""

    def __init__(self, failure: Failure, text: str) -> None:
        super().__init__(failure.message)
        self.failure = failure
        self.text = text


def ask(
    backend,
    request: ChatRequest,
    stage: str,
    counters: Counters,
    info: dict[str, Any],
    debug: bool,
    usable: Callable[[ParsedAnswer], Failure | None] | None = None,
) -> ParsedAnswer | Failure:
    """Call the backend and parse its JSON list; a failed call or an unusable
    answer comes back as the Failure to record (``info`` says which).

    ``usable`` is the stage's own judgement of a parsed answer (a Failure when
    nothing in it can be used); only answers that parse and pass it are cached.
    """

    def check(response: ChatResponse) -> ParsedAnswer:
        try:
            parsed = parse_answer(response.text)
        except AnswerError as exc:
            raise UnusableAnswer(Failure(stage, exc.kind, str(exc)), response.text) from None
        refusal = usable(parsed) if usable is not None else None
        if refusal is not None:
            raise UnusableAnswer(refusal, response.text)
        return parsed

    try:
        counters.health.before_call()
        response, parsed = complete_checked(backend, request, check)
    except UnusableAnswer as exc:
        counters.health.answered()
        counters.add("calls")
        counters.add("answers_unusable")
        info["outcome"] = "unusable_answer"
        info["answer"] = exc.text[:2000]
        return exc.failure
    except Exception as exc:  # whatever the type: the verdict classifies it
        failure = failure_from_exception(stage, exc)  # names the plugin that crashed
        kind, message = failure.kind, failure.message
        if is_own_fault(kind):  # the sample's image: says nothing about the backend
            counters.add("samples_own_fault")
            info["outcome"] = "sample_failed"
            return Failure(stage, kind, secrets.scrub(message)[:500])
        counters.health.failed(exc)
        counters.add("calls_failed")
        info["outcome"] = "backend_failed"
        return Failure(stage, kind, secrets.scrub(message)[:500])
    counters.health.answered()
    counters.usage(response)
    if debug:
        info["answer"] = response.text
    return parsed


def run_mllm_stage(
    stage: str,
    results: Sequence[SampleResult],
    backend,
    out_path: Path,
    *,
    enabled: bool,
    needs_call: Callable[[SampleResult], bool],
    process: Callable[[SampleResult, Counters], SampleResult],
    debug: bool = False,
    unusable: str | None = None,
    required: bool = False,
    health: StageHealth | None = None,
) -> tuple[list[SampleResult], StageSummary]:
    """The frame both MLLM stages share: skip when disabled or unreachable (or
    ``unusable`` says why the backend cannot serve this stage), else run
    ``process`` over every result at the backend's concurrency and merge the
    counters into the summary.

    An unreachable backend, or one that failed every call, is a note
    (``unavailable``/``stopped``); whether that fails the stage is decided once,
    by ``refineg_core.pipeline.verdict.judge``, for ``required`` stages and
    ``"auto"`` ones alike. ``health`` carries what earlier chunks of the same
    stage learnt about the backend (reachability, the breaker)."""
    health = health or StageHealth()
    out_path = Path(out_path) if out_path is not None else None  # None: in memory
    forgotten = forget_unfinished(out_path, stage)
    skip = {"needs_call": needs_call, "backend": backend.describe()}
    if not enabled:
        reason = f"the {stage} stage is disabled in the config"
        return skip_stage(stage, results, out_path, reason=reason, reason_key="disabled", **skip)
    reason = unusable or (health.unavailable(backend) if any(map(needs_call, results)) else None)
    if reason:
        return skip_stage(stage, results, out_path, reason=reason, **skip)
    counters = Counters(health=health.breaker(max(8, 2 * backend.max_concurrency)))
    out, summary = run_stage(
        stage,
        results,
        lambda item: process(item, counters),
        out_path,
        workers=backend.max_concurrency,
        debug=debug,
    )
    summary.counters.update(counters.counts)
    if forgotten:
        summary.counters["retried_from_last_run"] = forgotten
    summary.notes["backend"] = backend.describe()
    down = counters.health.every_call_failed
    if down:
        summary.notes["stopped"] = down
    return out, summary


def no_usable_item(stage: str, n_items: int, refused: dict[str, int], outcome: str) -> Failure:
    """The failure of an answer none of whose ``n_items`` items could be used."""
    why = ", ".join(f"{k} x{v}" for k, v in sorted(refused.items()) if v)
    return Failure(
        stage,
        "no_usable_item",
        f"none of the answer's {n_items} items is usable ({why}); {outcome}",
    )


def note_answer(
    parsed: ParsedAnswer,
    stage: str,
    counters: Counters,
    info: dict[str, Any],
    failures: tuple[Failure, ...],
    unreached: str,
) -> tuple[Failure, ...]:
    """Count a parsed answer's repairs; a truncated answer adds a failure saying
    what happened to the entities it did not reach (``unreached``)."""
    counters.add("answers_repaired", int(parsed.repaired))
    info["outcome"] = "truncated" if parsed.truncated else "ok"
    if not parsed.truncated:
        return failures
    counters.add("answers_truncated")
    message = f"answer cut off after {len(parsed.items)} complete items; {unreached}"
    return (*failures, Failure(stage, "truncated", message))
