"""Stage results written as native JSONL, CCKS submission JSON and Twitter-GMNER files."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
from refineg_formats.twitter import read_twitter_gmner

from refineg_core.formats import read_jsonl
from refineg_core.pipeline.outputs import non_overlapping, write_outputs
from refineg_core.types import SOURCE_MLLM, Box, Entity, SampleResult
from tests.stagedata import real_samples


def _results(twitter_dir: Path) -> list[SampleResult]:
    out = []
    for s in real_samples(twitter_dir, 5, min_entities=0):
        ents = tuple(
            attrs.evolve(e, source=SOURCE_MLLM, grounded_by=SOURCE_MLLM if e.boxes else None)
            for e in s.entities
        )
        out.append(SampleResult(attrs.evolve(s, entities=()), ents))
    return out


def test_all_formats_round_trip(twitter_dir: Path, tmp_path: Path) -> None:
    results = _results(twitter_dir)
    written = write_outputs(results, tmp_path)
    assert set(written.paths) == {"jsonl", "ccks", "twitter"} and written.overlaps_dropped == 0
    back = read_jsonl(written.paths["jsonl"])
    assert [s.entities for s in back] == [r.entities for r in results]
    ccks = json.loads(written.paths["ccks"].read_text())
    assert list(ccks) == [r.id for r in results]
    for r in results:
        rows = ccks[r.id]
        assert len(rows) == sum(max(1, len(e.boxes)) for e in r.entities)
        for e in r.entities:
            mine = [row for row in rows if row["name"] == e.text and row["label"] == e.type]
            if e.boxes:
                assert {tuple(row["bnd"].values()) for row in mine} == {
                    tuple(round(v) for v in b.as_list()) for b in e.boxes
                }
            else:
                assert [row["bnd"] for row in mine] == [None]
    tw = read_twitter_gmner(written.paths["twitter"])
    assert [s.tokens for s in tw] == [r.sample.tokens for r in results]
    assert [[(e.key, len(e.boxes)) for e in s.entities] for s in tw] == [
        [(e.key, len(e.boxes)) for e in r.entities] for r in results
    ]


def test_overlaps_are_resolved_for_flat_formats(twitter_dir: Path, tmp_path: Path) -> None:
    [r] = _results(twitter_dir)[:1]
    n = len(r.sample.tokens)
    extra = (
        Entity(0, 2, "ORG", " ".join(r.sample.tokens[:2]), boxes=(Box(1, 1, 5, 5),)),
        Entity(1, 3, "LOC", " ".join(r.sample.tokens[1:3])),
    )
    assert n >= 3
    clashing = attrs.evolve(r, entities=extra)
    written = write_outputs([clashing], tmp_path)
    assert written.overlaps_dropped == 1
    [s] = read_twitter_gmner(written.paths["twitter"])
    assert [e.key for e in s.entities] == [(0, 2, "ORG")]
    # JSONL and CCKS keep everything: they can hold overlaps
    assert len(read_jsonl(written.paths["jsonl"]).samples[0].entities) == 2
    ents, dropped = non_overlapping([Entity(0, 1, "PER", "a"), Entity(0, 3, "ORG", "a b c")])
    assert [e.key for e in ents] == [(0, 3, "ORG")] and dropped == 1
