"""The Python API's posts: the caller's arguments checked and turned into samples,
and the results finished (character offsets, which stages ran). A caller's mistake
(not a str, a URL, a missing path) raises naming the argument; an existing file
that is no usable image is the sample's own failure, as in a data file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import attrs

from refineg_core.formats.images import IMAGE_FAILURE
from refineg_core.formats.images import check_image as check_image_file
from refineg_core.labels import tokenize
from refineg_core.pipeline.runner import StageSummary
from refineg_core.types import Failure, ImageRef, Sample, SampleResult
from refineg_core.validity import check_sample

#: Where ``doc.meta`` says which stages ran (``{"refine": {"status", "reason"}}``).
STAGES_META = "stages"
#: The stage name of failures found in what the caller passed (an unusable image).
INPUT_STAGE = "input"


def check_text(text: object, where: str = "text") -> str | Sample:
    """``text`` if it is a ``str`` or a ``Sample``, else a TypeError naming the argument."""
    if isinstance(text, (str, Sample)):
        return text
    hint = {
        "bytes": " (decode it first, e.g. text.decode('utf-8'))",
        "list": " (pipe() takes many texts)",
        "tuple": " (pipe() takes many texts)",
    }.get(type(text).__name__, "")
    raise TypeError(f"{where} must be a str (or a refineg.Sample), got {type(text).__name__}{hint}")


def check_many(values: object, where: str) -> None:
    """``pipe(texts)`` takes an iterable of texts: one str would be one post per character."""
    if isinstance(values, (str, bytes, Path)):
        raise TypeError(
            f"{where} must be an iterable of texts, not a single {type(values).__name__}: "
            f"pass a list ([text]) or call the pipeline itself, pipe(text)"
        )


def check_image(image: object, where: str = "image") -> Path | None:
    """The caller's image path; a wrong type, a URL, a missing path or a folder raises."""
    if image is None:
        return None
    if not isinstance(image, (str, Path)):
        raise TypeError(f"{where} must be a path (str or Path) or None, got {type(image).__name__}")
    if isinstance(image, str) and "://" in image:
        raise ValueError(
            f"{where}: {image!r} is a URL; refineg reads local files only (no network at "
            "run time): download it and pass the file's path"
        )
    path = Path(image).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{where}: {path} does not exist")
    if path.is_dir():
        raise IsADirectoryError(f"{where}: {path} is a directory, not an image file")
    return path


def _token_offsets(tokens: tuple[str, ...], text: str) -> list[tuple[int, int]] | None:
    """Each token's character span in ``text``, or None when one is not found."""
    offsets, at = [], 0
    for token in tokens:
        found = text.find(token, at)
        if found < 0:
            return None
        offsets.append((found, found + len(token)))
        at = found + len(token)
    return offsets


def as_sample(
    text: str | Sample,
    image: str | Path | None,
    index: int,
    *,
    where: tuple[str, str] = ("text", "image"),
) -> Sample:
    """A post as the pipeline's Sample, arguments checked first (named by ``where``)."""
    text = check_text(text, where[0])
    if isinstance(text, Sample):  # what no output writer could write is refused here too
        return check_sample(text, where=where[0])
    path = check_image(image, where[1])
    ref, meta = None, {}
    if path is not None:
        size, reason = check_image_file(path)
        if reason is not None:
            meta[IMAGE_FAILURE] = f"{path}: image {reason}; the sample continues without it"
            ref = ImageRef(path.stem, None)
        else:
            assert size is not None
            ref = ImageRef(path.stem, path, *size)
    sample = Sample(f"doc-{index}", tuple(tokenize(text)), text, ref, meta=meta)
    return check_sample(sample, where=where[0])


@attrs.define
class StageLog:
    """Which stages one API call ran or skipped, and why (``doc.meta["stages"]``)."""

    stages: dict[str, dict[str, str]] = attrs.field(factory=dict)

    def ran(self, stage: str, note: str = "") -> None:
        self.stages[stage] = {"status": "ran", **({"reason": note} if note else {})}

    def skipped(self, stage: str, reason: str) -> None:
        self.stages[stage] = {"status": "skipped", "reason": reason}

    def record(self, stage: str, summary: StageSummary) -> None:
        """From an MLLM stage's summary: skipped (backend unavailable, disabled) or ran."""
        notes = summary.notes
        reason = notes.get("unavailable") or notes.get("disabled")
        if reason:
            backend = notes.get("backend")
            self.skipped(stage, f"{backend}: {reason}" if backend else reason)
        elif not (summary.counters.get("calls") or summary.counters.get("calls_failed")):
            self.ran(stage, "no call was needed (nothing delegated, or no image to ground on)")
        else:
            self.ran(stage)


def finish_results(
    samples: Sequence[Sample], results: Sequence[SampleResult], log: StageLog
) -> list[SampleResult]:
    """Results with character offsets, an unusable image as a failure, and the stages."""
    by_id = {s.id: s for s in samples}
    out = []
    for r in results:
        sample = by_id.get(r.id, r.sample)
        offsets = _token_offsets(sample.tokens, sample.text)
        entities = tuple(
            attrs.evolve(e, char_start=offsets[e.start][0], char_end=offsets[e.end - 1][1])
            if offsets is not None and e.end <= len(offsets)
            else e
            for e in r.entities
        )
        failures = r.failures
        problem = sample.meta.get(IMAGE_FAILURE)
        if problem and not any(f.kind == "image" for f in failures):
            failures = (Failure(INPUT_STAGE, "image", str(problem)), *failures)
        meta = {**r.meta, STAGES_META: {k: dict(v) for k, v in log.stages.items()}}
        out.append(attrs.evolve(r, entities=entities, failures=failures, meta=meta))
    return out
