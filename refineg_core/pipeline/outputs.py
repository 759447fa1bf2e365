"""Write a run's results: the native JSONL always, plus each ``[outputs] formats``.

Output formats are format plugins (each declares its ``output_file``); none is
known here by name. Samples were checked against them when read
(``validity``), so no write fails at the end of a paid run; a format that
cannot hold overlapping spans gets them resolved (longer, then earlier, wins)
and counted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import attrs

from refineg_core.formats import format_plugin, write_jsonl
from refineg_core.formats.writers import NATIVE, NATIVE_FILE, output_formats, stale_outputs
from refineg_core.runstore import copy_file
from refineg_core.types import Entity, Sample, SampleResult


@attrs.frozen
class Written:
    """Where each format went, entities a flat format left out, stale files removed."""

    paths: dict[str, Path]
    overlaps_dropped: int = 0
    removed: tuple[Path, ...] = ()


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
    formats: Iterable[str] = (),
    *,
    observe: Callable[[SampleResult], None] | None = None,
) -> Written:
    """``final.jsonl`` (a stage file is copied), then each format's ``output_file``,
    reading ``results`` once per format; ``observe`` sees every result once. An
    earlier run's file of a format not named now is removed (it would pass for
    this run's)."""
    plugins = output_formats(formats)  # a bad name fails before anything is written
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if iter(results) is results:  # a one-shot iterator cannot be read per format
        results = list(results)
    paths: dict[str, Path] = {}
    dropped = 0
    observed = observe is None
    native = out_dir / NATIVE_FILE
    if getattr(results, "path", None) is not None:
        copy_file(results.path, native)
    else:
        observed = True
        write_jsonl(_observed(results, observe) if observe else results, native)
    paths[NATIVE] = native
    for name, cls in plugins.items():
        path = out_dir / str(cls.output_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        # a one-pass writer observes; one reading its input twice would observe twice
        watch = not observed and cls.writes_in_one_pass
        stream = _observed(results, observe) if watch else results
        observed = observed or watch
        writer = format_plugin(name, config_key="outputs")
        if cls.holds_overlaps:
            writer.write(as_samples(stream), path)
        else:
            flat = FlatSamples(stream)
            writer.write(flat, path)
            dropped = max(dropped, flat.dropped)  # the same entities in each flat format
        paths[name] = path
    if not observed:
        for r in results:
            observe(r)
    removed = tuple(stale_outputs(out_dir, plugins))
    for path in removed:
        path.unlink(missing_ok=True)
    return Written(paths, dropped, removed)


def _observed(results: Iterable[SampleResult], observe) -> Iterator[SampleResult]:
    for r in results:
        observe(r)
        yield r
