"""Stage results written as native JSONL, CCKS submission JSON and Twitter-GMNER files."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import pytest
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
    written = write_outputs(results, tmp_path, ["twitter-gmner", "ccks"])
    assert set(written.paths) == {"jsonl", "ccks", "twitter-gmner"}
    assert written.overlaps_dropped == 0
    assert written.paths["twitter-gmner"] == tmp_path / "twitter" / "predictions.txt"
    assert written.paths["ccks"] == tmp_path / "final.ccks.json"
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
    tw = read_twitter_gmner(written.paths["twitter-gmner"])
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
    written = write_outputs([clashing], tmp_path, ["ccks", "twitter-gmner"])
    assert written.overlaps_dropped == 1
    [s] = read_twitter_gmner(written.paths["twitter-gmner"])
    assert [e.key for e in s.entities] == [(0, 2, "ORG")]
    # JSONL and CCKS keep everything: they can hold overlaps
    assert len(read_jsonl(written.paths["jsonl"]).samples[0].entities) == 2
    ents, dropped = non_overlapping([Entity(0, 1, "PER", "a"), Entity(0, 3, "ORG", "a b c")])
    assert [e.key for e in ents] == [(0, 3, "ORG")] and dropped == 1


def test_without_output_formats_only_the_native_jsonl_is_written(
    twitter_dir: Path, tmp_path: Path
) -> None:
    results = _results(twitter_dir)
    earlier = write_outputs(results[:2], tmp_path, ["ccks", "twitter-gmner"])
    seen: list[str] = []
    written = write_outputs(results, tmp_path, observe=lambda r: seen.append(r.id))
    assert set(written.paths) == {"jsonl"}
    # an earlier run's files of formats no longer named would pass for this run's
    assert set(written.removed) == {earlier.paths["ccks"], earlier.paths["twitter-gmner"]}
    assert not earlier.paths["ccks"].exists() and not earlier.paths["twitter-gmner"].exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["final.jsonl"]
    assert seen == [r.id for r in results]  # observed once each
    assert [s.id for s in read_jsonl(written.paths["jsonl"])] == seen


def test_output_format_names_are_the_format_plugins(twitter_dir: Path, tmp_path: Path) -> None:
    """Output formats resolve through the format registry: a third-party format
    writes where it declares; an unknown name, a read-only format or two formats
    claiming one file are errors naming the list item, before anything is written."""
    from refineg.plugin import DatasetFormat, register_plugin
    from refineg_core.errors import ConfigError

    class Lines(DatasetFormat):
        output_file = "out/lines.txt"

        def read(self, path, limit=None):
            raise AssertionError("not read here")

        def write(self, samples, path):
            path.write_text("".join(f"{s.id}\n" for s in samples), encoding="utf-8")

    class ReadOnly(Lines):
        output_file = None

    class Clash(Lines):
        output_file = "final.ccks.json"

    results = _results(twitter_dir)
    with register_plugin("format", "lines", Lines):
        written = write_outputs(results, tmp_path / "a", ["lines"])
        assert written.paths["lines"].read_text().split() == [r.id for r in results]
        with register_plugin("format", "ro", ReadOnly), register_plugin("format", "clash", Clash):
            for names, index, message in [
                (["lines", "twiter"], 1, "not installed"),
                (["ro"], 0, "declares no output_file"),
                (["ccks", "clash"], 1, "writes final.ccks.json, as 'ccks' does"),
            ]:
                with pytest.raises(ConfigError, match=message) as err:
                    write_outputs(results, tmp_path / "b", names)
                assert err.value.where == f"outputs.formats[{index}]"
    assert not (tmp_path / "b").exists()
