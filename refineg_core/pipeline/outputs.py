"""Write a stage's results in every output format: native JSONL, CCKS JSON, Twitter-GMNER.

The stage JSONL is already written (resumably) by the runner; these writers
produce the submission formats from the same results. Every sample was checked
against these writers when it was read (``refineg_core.validity``), so a write
cannot fail on a sample at the end of a paid run. Flat formats (CoNLL
tags) cannot hold overlapping spans, which a plugin could still produce, so
overlaps are resolved here (longer span first, then the earlier one) and
counted, instead of failing at the end of a long run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import attrs

from refineg_core.formats import format_plugin, write_jsonl
from refineg_core.runstore import copy_file
from refineg_core.types import Entity, Sample, SampleResult
from refineg_core.validity import OUTPUT_WRITERS

FORMAT_FILES = {
    "jsonl": "final.jsonl",
    "ccks": "final.ccks.json",
    "twitter": "twitter/predictions.txt",
}


@attrs.frozen
class Written:
    """Where each format went, and how many entities a flat format had to leave out."""

    paths: dict[str, Path]
    overlaps_dropped: int = 0


def non_overlapping(entities: Iterable[Entity]) -> tuple[tuple[Entity, ...], int]:
    """Keep a flat set of entities: longer spans win, then earlier ones."""
    chosen: list[Entity] = []
    dropped = 0
    for e in sorted(entities, key=lambda e: (-(e.end - e.start), e.start, e.type)):
        if any(e.start < c.end and c.start < e.end for c in chosen):
            dropped += 1
            continue
        chosen.append(e)
    return tuple(sorted(chosen, key=lambda e: (e.start, e.end))), dropped


def as_samples(results: Iterable[SampleResult]) -> Iterator[Sample]:
    """Samples carrying the predicted entities (what the format writers read)."""
    return (attrs.evolve(r.sample, entities=r.entities) for r in results)


class FlatSamples:
    """The samples of ``results`` without overlapping spans, re-iterable (a writer
    may read it twice); ``dropped`` counts what the last full pass left out."""

    def __init__(self, results: Iterable[SampleResult]) -> None:
        self.results = results
        self.dropped = 0

    def __iter__(self) -> Iterator[Sample]:
        dropped = 0
        for s in as_samples(self.results):
            ents, n = non_overlapping(s.entities)
            dropped += n
            yield attrs.evolve(s, entities=ents)
        self.dropped = dropped


def write_outputs(
    results: Iterable[SampleResult],
    out_dir: Path,
    formats: Iterable[str] = ("jsonl", "ccks", "twitter"),
    *,
    observe: Callable[[SampleResult], None] | None = None,
) -> Written:
    """Write ``results`` into ``out_dir`` in each requested format. ``results`` is
    read once per format (a stage's output streams from its file each time; the
    native JSONL of a stage file is copied, not re-read); ``observe`` sees every
    result once."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if iter(results) is results:  # a one-shot iterator cannot be read per format
        results = list(results)
    formats = list(formats)
    unknown = [f for f in formats if f not in FORMAT_FILES]
    if unknown:
        raise ValueError(f"unknown output format {unknown[0]!r}; known: {', '.join(FORMAT_FILES)}")
    paths: dict[str, Path] = {}
    dropped = 0
    observed = observe is None
    for fmt in formats:
        path = out_dir / FORMAT_FILES[fmt]
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "jsonl" and getattr(results, "path", None) is not None:
            _copy(results.path, path)
            paths[fmt] = path
            continue
        # a one-pass writer observes; the Twitter writer reads its input twice
        watch = not observed and fmt != "twitter"
        stream = _observed(results, observe) if watch else results
        observed = observed or watch
        if fmt == "jsonl":
            write_jsonl(stream, path)
        elif fmt == "ccks":
            format_plugin(OUTPUT_WRITERS[fmt]).write(as_samples(stream), path)
        else:
            flat = FlatSamples(stream)
            format_plugin(OUTPUT_WRITERS[fmt]).write(flat, path)
            dropped = flat.dropped
        paths[fmt] = path
    if not observed:
        for r in results:
            observe(r)
    return Written(paths, dropped)


def _observed(results: Iterable[SampleResult], observe) -> Iterator[SampleResult]:
    for r in results:
        observe(r)
        yield r


def _copy(source: Path, target: Path) -> None:
    """Copy a stage file atomically (a reader never sees half of it)."""
    copy_file(source, target)
