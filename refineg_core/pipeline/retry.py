"""Retry, not replay: which lines of an MLLM stage's file a rerun asks again.

A skipped result is still written (downstream stays valid), marked
``meta[stage]["skipped"]``; the next run forgets it and the failed or unusable
ones, so they are asked again (usable answers come from the cache).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from refineg_core.formats.native import sample_to_dict
from refineg_core.pipeline.runner import load_done
from refineg_core.runstore import atomic_write
from refineg_core.types import SampleResult

#: Failure kinds that do not make a sample be asked again: the answer was usable
#: (``truncated``), or the sample's image cannot be decoded (``image``: asking again
#: cannot help; a changed image file changes the data's fingerprint instead).
FINAL_FAILURE_KINDS = frozenset({"truncated", "image"})


def merged_meta(result: SampleResult) -> dict[str, Any]:
    return {**result.sample.meta, **result.meta}


def is_skipped(result: SampleResult, stage: str) -> bool:
    info = merged_meta(result).get(stage)
    return isinstance(info, dict) and bool(info.get("skipped"))


def needs_retry(result: SampleResult, stage: str) -> bool:
    """Skipped, or a call/answer of this stage failed: a rerun asks again."""
    return is_skipped(result, stage) or any(
        f.stage == stage and f.kind not in FINAL_FAILURE_KINDS for f in result.failures
    )


def forget_unfinished(out_path: Path | None, stage: str) -> int:
    """Drop the lines a rerun must redo; return how many. No id is ever there twice."""
    if out_path is None or not Path(out_path).exists():  # None: in memory (the Python API)
        return 0
    done = load_done(out_path)
    keep = [r for r in done.values() if not needs_retry(r, stage)]
    dropped = len(done) - len(keep)
    if dropped:
        write_all(out_path, keep)
    return dropped


def write_all(path: Path, results: Sequence[SampleResult]) -> None:
    """Rewrite a stage file atomically."""
    with atomic_write(path) as fh:
        for r in results:
            fh.write(json.dumps(sample_to_dict(r), ensure_ascii=False) + "\n")
