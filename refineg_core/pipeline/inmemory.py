"""The Python API's run: the stages over posts in memory, with the run's ``Worker``.

The MLLM stages run in the run's order through the worker's per-chunk entry
point with no stage file: nothing is written but the MLLM cache. A stage whose
backend does not answer is skipped (``"auto"``); ``meta["stages"]`` says so.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from refineg_core.pipeline.call_health import StageHealth
from refineg_core.pipeline.order import MLLM_STAGES
from refineg_core.pipeline.worker import Worker
from refineg_core.posts import StageLog, as_sample, check_many, finish_results
from refineg_core.progress import silenced
from refineg_core.types import Sample, SampleResult


def annotate(worker: Worker, samples: list[Sample]) -> list[SampleResult]:
    """Tag, gate, refine and ground ``samples`` in memory."""
    log = StageLog()
    results = worker.tag(samples)
    log.ran("predict")
    backend = worker.backend()
    for stage in MLLM_STAGES:
        if backend is None:
            log.skipped(stage, "no backend configured")
        elif worker.stage_mode(stage) is False:
            log.skipped(stage, f"stages.{stage} = false")
        else:
            results, summary = worker.run_mllm_chunk(stage, results, [], None, StageHealth())
            log.record(stage, summary)
    return finish_results(samples, results, log)


def pipe(
    worker: Worker,
    texts: Iterable[str | Sample],
    *,
    images: Iterable[str | Path | None] | None = None,
    batch_size: int = 256,
    progress: bool = False,
) -> Iterator[SampleResult]:
    """Annotate posts ``batch_size`` at a time, in order; errors name ``texts[i]``."""
    check_many(texts, "texts")
    if images is not None:
        check_many(images, "images")
    image_iter = iter(images) if images is not None else None
    batch: list[Sample] = []
    for i, text in enumerate(texts):
        image = next(image_iter, None) if image_iter is not None else None
        batch.append(as_sample(text, image, i, where=(f"texts[{i}]", f"images[{i}]")))
        if len(batch) >= batch_size:
            yield from _quietly(worker, batch, progress)
            batch = []
    if batch:
        yield from _quietly(worker, batch, progress)


def _quietly(worker: Worker, batch: list[Sample], progress: bool) -> list[SampleResult]:
    with contextlib.nullcontext() if progress else silenced():
        return annotate(worker, batch)
