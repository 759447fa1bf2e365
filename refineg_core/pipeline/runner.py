"""Run one stage over many samples: concurrently, resumably, never dying on one item.

Ids already in the stage's JSONL are skipped (a killed run resumes), the rest
run on up to ``workers`` threads (MLLM calls are I/O-bound), each result is
appended as it is done, and an exception in one item becomes its failure.
"""

from __future__ import annotations

import json
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, TypeVar

from refineg_core import interrupts, secrets
from refineg_core.blame import blame
from refineg_core.errors import DataError, RefinegError
from refineg_core.formats.native import result_from_dict, sample_to_dict
from refineg_core.hooks import get_hooks
from refineg_core.pipeline.summary import StageSummary
from refineg_core.pipeline.verdict import count_failures, failure_kind
from refineg_core.progress import bar
from refineg_core.runstore import repair_tail
from refineg_core.types import Failure, SampleResult

T = TypeVar("T")
R = TypeVar("R")


class JsonlAppender:
    """Append-only JSONL, thread-safe, flushed per line; a torn last line left by a
    killed run is cut off first, so the disk holds whole records."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        repair_tail(self.path)
        self._fh = self.path.open("a", encoding="utf-8")

    def write_record(self, record: dict[str, Any]) -> None:
        line = secrets.scrub(json.dumps(record, ensure_ascii=False))
        with self._lock:
            self._fh.write(line + "\n")
            self._fh.flush()

    def close(self) -> None:
        self._fh.close()


class ResultWriter(JsonlAppender):
    def write(self, result: SampleResult) -> None:
        self.write_record(sample_to_dict(result))


def load_records(path: Path | None) -> list[dict[str, Any]]:
    """Every whole record of a JsonlAppender's file; none for ``None`` (in memory)."""
    if path is None or not Path(path).exists():
        return []
    path = Path(path)
    JsonlAppender(path).close()
    records = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"invalid JSON: {exc.msg}", where=f"{path}:{lineno}") from None
    return records


def load_done(path: Path | None) -> dict[str, SampleResult]:
    """Results already written by an earlier (possibly interrupted) run."""
    return {r["id"]: result_from_dict(r) for r in load_records(path)}


def run_concurrently(
    items: Iterable[T],
    work: Callable[[T], R],
    on_done: Callable[[R], None],
    *,
    workers: int = 1,
) -> None:
    """``work`` on up to ``workers`` threads, ``on_done`` in the calling thread as
    each result is ready; at most 2x``workers`` in flight (a huge input streams)."""
    workers = max(1, workers)
    interrupts.clear()  # a stop asked of an earlier call (the Python API) is over
    pool = ThreadPoolExecutor(max_workers=workers)
    interrupted = False
    try:
        queue = iter(items)
        pending: set[Future] = set()

        def refill() -> None:
            for item in queue:
                pending.add(pool.submit(work, item))
                if len(pending) >= workers * 2:
                    break

        def deliver(futures: Iterable[Future]) -> BaseException | None:
            """Hand finished results on, returning the first error: results that
            finished beside a failing item are never lost."""
            error = None
            for fut in futures:
                if fut.cancelled():
                    continue
                exc = fut.exception()
                if exc is None:
                    on_done(fut.result())
                elif error is None:
                    error = exc
            return error

        refill()
        try:
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                error = deliver(finished)
                if error is not None:
                    for fut in pending:
                        fut.cancel()
                    deliver(wait(pending).done)
                    raise error
                refill()
        except KeyboardInterrupt:
            # Ctrl-C: start nothing more, wait for nothing in flight (a local model
            # would hold the exit a minute); told to stop here too for a notebook
            interrupts.request()
            interrupted = True
            raise
    finally:
        pool.shutdown(wait=not interrupted, cancel_futures=interrupted)


def failure_from_exception(stage: str, exc: BaseException) -> Failure:
    kind = failure_kind(exc)
    message = str(exc) if isinstance(exc, RefinegError) else f"{type(exc).__name__}: {exc}"
    if not isinstance(exc, RefinegError):  # an unexpected crash: say whose code it was
        culprit = blame(exc)
        if culprit is not None:
            message = f"{culprit.describe()}: {message}"
    return Failure(stage, kind, message[:500])


def run_stage(
    stage: str,
    items: Sequence[SampleResult],
    process: Callable[[SampleResult], SampleResult],
    out_path: Path | None,
    *,
    workers: int = 1,
    unit: str = "sample",
    debug: bool = False,
    events: bool = True,
) -> tuple[list[SampleResult], StageSummary]:
    """Process every item not yet in ``out_path`` (None: in memory); all results in
    input order. ``events``: fire the stage hooks (off for a chunk of a stage)."""
    started = time.perf_counter()
    summary = StageSummary(stage, total=len(items))
    done = load_done(out_path)
    todo = [it for it in items if it.id not in done]
    summary.resumed = len(items) - len(todo)
    hooks = get_hooks()
    if events:
        hooks.stage_started(stage, len(todo))
    writer = ResultWriter(out_path) if out_path is not None else None
    results: dict[str, SampleResult] = dict(done)

    def safe(item: SampleResult) -> SampleResult:
        try:
            return process(item)
        except Exception as exc:  # one bad item never stops a run
            if debug:
                traceback.print_exc()
            return item.with_failure(failure_from_exception(stage, exc))

    def record(result: SampleResult) -> None:
        if writer is not None:
            writer.write(result)
        results[result.id] = result
        summary.processed += 1
        new_failures = [f for f in result.failures if f.stage == stage]
        if new_failures:
            summary.failed += 1
            summary.failure_kinds.update(f.kind for f in new_failures)
            count_failures(summary.counters, (f.kind for f in new_failures))
        progress.update(1)

    progress = bar(desc=stage, total=len(todo), unit=unit)
    try:
        run_concurrently(todo, safe, record, workers=workers)
    finally:
        progress.close()
        if writer is not None:
            writer.close()
    summary.seconds = time.perf_counter() - started
    if events:
        hooks.stage_finished(stage, summary.as_dict())
    return [results[it.id] for it in items if it.id in results], summary
