"""Run one stage over many samples: concurrently, resumably, never dying on one item.

A stage supplies ``process(item) -> SampleResult``. The runner skips ids already
written to the stage's JSONL (so a killed run resumes), runs the rest on up to
``workers`` threads (MLLM calls are I/O-bound), appends each result the moment
it is done, and turns an exception in one item into a recorded failure that
keeps the item's entities.
Without a JSONL (``out_path=None``: the Python API) nothing is written or
resumed; the results exist only in memory.
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
    """Append-only JSONL; thread-safe; flushed after every line.

    A half-written last line left by a killed run is cut off first, so what is
    on disk is always whole records.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        repair_tail(self.path)  # a torn last line is cut (the run store's one repair)
        self._fh = self.path.open("a", encoding="utf-8")

    def write_record(self, record: dict[str, Any]) -> None:
        line = secrets.scrub(json.dumps(record, ensure_ascii=False))
        with self._lock:
            self._fh.write(line + "\n")
            self._fh.flush()

    def close(self) -> None:
        self._fh.close()


class ResultWriter(JsonlAppender):
    """The stage JSONL: one SampleResult per line."""

    def write(self, result: SampleResult) -> None:
        self.write_record(sample_to_dict(result))


def load_records(path: Path | None) -> list[dict[str, Any]]:
    """Every whole record of a JSONL written by a JsonlAppender (torn tail repaired);
    none without a file (``None``: results kept in memory only)."""
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
    """Run ``work`` on up to ``workers`` threads; ``on_done`` gets each result in the
    calling thread as soon as it is ready. At most 2x``workers`` items are in
    flight, so a huge input is never submitted all at once."""
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
            """Hand every finished result on; return the first error instead of raising
            it, so results that finished beside a failing item are never lost."""
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
            # Ctrl-C: start nothing more and do not wait for the items in flight (a
            # local model's generation would hold the exit for a minute; they were
            # told to stop through refineg_core.interrupts; set here too for callers
            # without the CLI's handler, e.g. a notebook's "interrupt kernel")
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
    """Process every item not yet in ``out_path``; return all results in input order
    (``out_path=None``: in memory, nothing written). ``events``: fire the stage
    start/finish hooks (off where a caller runs one stage in many calls and
    announces it once itself)."""
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
