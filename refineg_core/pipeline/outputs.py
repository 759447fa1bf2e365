"""Write a stage's results in every output format: native JSONL, CCKS JSON, Twitter-GMNER.

The stage JSONL is already written (resumably) by the runner; these writers
produce the submission formats from the same results. Flat formats (CoNLL
tags) cannot hold overlapping spans, which a plugin could still produce, so
overlaps are resolved here (longer span first, then the earlier one) and
counted, instead of failing at the end of a long run.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import attrs

from refineg_core.formats import format_plugin, write_jsonl
from refineg_core.types import Entity, Sample, SampleResult

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
) -> Written:
    """Write ``results`` into ``out_dir`` in each requested format. ``results`` is
    read once per format (a stage's output streams from its file each time)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if iter(results) is results:  # a one-shot iterator cannot be read per format
        results = list(results)
    paths: dict[str, Path] = {}
    dropped = 0
    for fmt in formats:
        if fmt not in FORMAT_FILES:
            raise ValueError(f"unknown output format {fmt!r}; known: {', '.join(FORMAT_FILES)}")
        path = out_dir / FORMAT_FILES[fmt]
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "jsonl":
            write_jsonl(results, path)
        elif fmt == "ccks":
            format_plugin("ccks").write(as_samples(results), path)
        else:
            flat = FlatSamples(results)
            format_plugin("twitter-gmner").write(flat, path)
            dropped = flat.dropped
        paths[fmt] = path
    return Written(paths, dropped)
