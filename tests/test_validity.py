"""What is read can be written (issue 19 case 5): one validity check for samples.

Readers refuse, with file and line, a sample that one of the run's output
writers (native JSONL, CCKS JSON, Twitter-GMNER) could not write; the writers
then never fail after the MLLM was paid. Characters that are text, not line
ends (U+2028, U+0085, form feed), are read as part of a token.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from refineg_formats.twitter import read_twitter_gmner

from refineg_core.errors import DataError
from refineg_core.formats import load_dataset
from refineg_core.pipeline.outputs import write_outputs
from refineg_core.posts import as_sample
from refineg_core.types import Entity, Sample, SampleResult
from refineg_core.validity import check_sample, sample_problem


def _twitter(tmp_path: Path, body: str) -> Path:
    (tmp_path / "xml").mkdir(exist_ok=True)
    path = tmp_path / "split.txt"
    path.write_text(body, encoding="utf-8")
    return path


def _jsonl(tmp_path: Path, *records) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_twitter_token_with_a_tab_is_refused_at_its_line(tmp_path):
    path = _twitter(tmp_path, "IMGID:7\nObama\tB-PER\nvis\tits\tO\n")
    with pytest.raises(DataError, match="found 2 tabs") as err:
        load_dataset(path, "twitter-gmner")
    assert err.value.where == f"{path}:3"


def test_twitter_imgid_with_a_path_separator_is_refused_at_its_line(tmp_path):
    path = _twitter(tmp_path, "IMGID:1\nhi\tO\n\nIMGID:../x\nObama\tB-PER\n")
    with pytest.raises(DataError, match="path separator") as err:
        load_dataset(path, "twitter-gmner")
    assert err.value.where == f"{path}:4"


@pytest.mark.parametrize("char", ["\u2028", "\u2029", "\x85", "\x0c", "\x0b", "\x1c", "\x00"])
def test_unicode_line_boundaries_inside_a_token_are_text(tmp_path, char):
    path = _twitter(tmp_path, f"IMGID:7\nOba{char}ma\tB-PER\nvisits\tO\n")
    ds = load_dataset(path, "twitter-gmner")
    assert [s.tokens for s in ds] == [(f"Oba{char}ma", "visits")]
    assert ds.samples[0].entities[0].text == f"Oba{char}ma"


def test_a_carriage_return_inside_a_token_is_refused_at_its_line(tmp_path):
    path = _twitter(tmp_path, "IMGID:7\nObama\tB-PER\nvis\rits\tO\n")
    with pytest.raises(DataError, match="carriage return") as err:
        load_dataset(path, "twitter-gmner")
    assert err.value.where == f"{path}:3"


def test_crlf_is_still_a_line_end(tmp_path):
    path = _twitter(tmp_path, "IMGID:7\r\nObama\tB-PER\r\n\r\nIMGID:8\r\nhi\tO\r\n")
    ds = load_dataset(path, "twitter-gmner")
    assert [s.tokens for s in ds] == [("Obama",), ("hi",)]


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        ({"id": "s1", "tokens": ["New\tYork"]}, "token 0 .* tab"),
        ({"id": "s1", "tokens": ["a", "b\nc"]}, "token 1 .* line break"),
        ({"id": "s1", "tokens": ["a", " "]}, "token 1 .* empty"),
        ({"id": "s1", "tokens": ["IMGID:9", "x"]}, "token 0 .*starts with .IMGID:"),
        ({"id": "s1", "tokens": ["-DOCSTART-"]}, "token 0 .*starts with .-DOCSTART-"),
        ({"id": "../s1", "tokens": ["a"]}, "image id '../s1' contains a path separator"),
        ({"id": "s1", "tokens": ["a"], "image": {"id": "a/b"}}, "path separator"),
        ({"id": " s1", "tokens": ["a"]}, "image id ' s1' .* whitespace"),
        (
            {"id": "s1", "tokens": ["a"], "entities": [{"start": 0, "end": 1, "type": "P ER "}]},
            "type 'P ER ' .*whitespace",
        ),
        ({"id": "s1", "tokens": ["a\ud800"]}, "lone surrogate"),
    ],
)
def test_jsonl_sample_no_writer_can_write_is_refused_at_its_line(tmp_path, record, problem):
    path = _jsonl(tmp_path, {"id": "ok", "tokens": ["fine"]}, record)
    with pytest.raises(DataError, match=problem) as err:
        load_dataset(path, "jsonl")
    assert err.value.where == f"{path}:2"
    assert "twitter-gmner" in str(err.value) or "UTF-8" in str(err.value)


def test_ccks_id_no_writer_can_write_is_refused_at_its_line(tmp_path):
    texts = tmp_path / "texts.json"
    texts.write_text('{\n "1": {"text": "Obama"},\n "a/b": {"text": "Paris"}\n}\n', "utf-8")
    with pytest.raises(DataError, match="path separator") as err:
        load_dataset(texts, "ccks")
    assert err.value.where == f"{texts}:3 [a/b]"


def test_what_is_read_is_written_by_every_output_writer(tmp_path):
    """Odd but valid tokens pass reading, and write_outputs writes them all."""
    tokens = ["Oba\u2028ma", "v\x85isits", "\x0cParis", "x\x00y", " lead", "\u200dzwj"]
    rec = {
        "id": "s1",
        "tokens": tokens,
        "entities": [{"start": 0, "end": 1, "type": "PER", "boxes": [[1, 2, 30, 40]]}],
        "image": {"id": "s1", "width": 100, "height": 80},
    }
    ds = load_dataset(_jsonl(tmp_path, rec, {"id": "empty", "tokens": []}), "jsonl")
    results = [SampleResult(s, s.entities) for s in ds]
    out = tmp_path / "out"
    written = write_outputs(results, out, ["twitter-gmner", "ccks"])
    back = read_twitter_gmner(written.paths["twitter-gmner"])
    assert [s.tokens for s in back] == [tuple(tokens)]  # the empty sample has no CoNLL line
    assert back.samples[0].entities[0].boxes[0].as_list() == [1.0, 2.0, 30.0, 40.0]
    ccks = json.loads(written.paths["ccks"].read_text("utf-8"))
    assert set(ccks) == {"s1", "empty"}


def test_python_api_refuses_what_no_writer_can_write():
    bad = Sample("x", ("New\tYork",), "New York")
    with pytest.raises(DataError, match="tab"):
        as_sample(bad, None, 0)
    assert as_sample("Obama visits Paris", None, 0).tokens == ("Obama", "visits", "Paris")


def test_entity_past_the_sentence_end_is_a_problem():
    s = Sample("x", ("a",), "a", entities=(Entity(0, 3, "PER", "a"),))
    assert "runs past" in (sample_problem(s) or "")
    with pytest.raises(DataError, match="sample 'x'") as err:
        check_sample(s, where="here:1")
    assert err.value.where == "here:1"


@pytest.mark.parametrize("etype", ["PER ", "A\tB", " "])
def test_a_label_no_writer_can_write_is_refused_when_the_label_set_is_made(etype):
    """Predicted entities carry the config's types: one the writers refuse would
    otherwise fail the run while writing its outputs, after every MLLM call."""
    from refineg_core.config import config_from_dict
    from refineg_core.errors import ConfigError

    with pytest.raises(ConfigError, match="entity type") as err:
        config_from_dict({"labels": {"PER": "people", etype: "odd"}}).label_set  # noqa: B018
    assert err.value.where == "labels"
    fine = config_from_dict({"labels": {"PER": "people", "x-y Z": "fine"}}).label_set
    assert fine.types == ("PER", "x-y Z")


def test_the_checked_writers_are_every_installed_output_format():
    """Readers do not know which formats a run will write, so they ask every
    installed format that can be an output; a read-only format is not asked."""
    from refineg_core import registry
    from refineg_core.validity import _writers

    names = {name for name, _ in _writers()}
    assert {"jsonl", "ccks", "twitter-gmner"} <= names
    assert "csv" not in names and "conll" not in names  # these formats are read only
    for name in registry.available_names("refineg.formats"):
        cls = registry.load_class("format", name)
        assert (name in names) == (cls.output_file is not None)


def test_run_refuses_unwritable_predict_data_before_any_mllm_call(tmp_path):
    """Issue 19 case 5 end to end: a JSONL post with a tab inside a token used to pass
    reading and every MLLM call, then fail the run while writing its outputs."""
    pytest.importorskip("refineg_gazetteer", reason="pip install -e examples/refineg-gazetteer")
    from refineg_openai.testing import FakeOpenAIServer

    from refineg_core.testing import run_cli
    from tests.stagedata import gazetteer_config

    root = tmp_path / "data"
    (root / "train").mkdir(parents=True)
    train = "IMGID:1\nObama\tB-PER\nvisits\tO\nParis\tB-LOC\n\nIMGID:2\nMerkel\tB-PER\n"
    _twitter(root / "train", train).rename(root / "train" / "train.txt")
    (root / "dev").mkdir()
    (root / "images").mkdir()
    posts = [
        {"id": "p1", "tokens": ["Obama", "in", "Paris"]},
        {"id": "p2", "tokens": ["New\tYork"]},
    ]
    dev = _jsonl(root / "dev", *posts).rename(root / "dev" / "dev.txt")
    with FakeOpenAIServer() as server:
        text = gazetteer_config(root, server.base_url, tmp_path / "run", refine=True, ground=True)
        text = text.replace(f'path = "{dev}"', f'path = "{dev}"\nformat = "jsonl"')
        cfg = tmp_path / "c.toml"
        cfg.write_text(text, encoding="utf-8")
        result = run_cli(["run", "-c", str(cfg)])
        assert not server.chat_requests  # nothing was paid for (preflight only lists models)
    assert result.code == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert f"{dev}:2" in last and "holds a tab" in last and "twitter-gmner" in last, last
    # refused when predict reads it (the tagger may be trained by then): nothing predicted,
    # no MLLM call, no partial outputs
    run = tmp_path / "run"
    assert not any((run / name).exists() for name in ("predict.jsonl", "final.jsonl", "twitter"))


def test_twitter_writer_leaves_no_stale_xml_and_merges_a_repeated_image(tmp_path):
    """Rewriting into the same folder: a tweet that has no boxes now must not read back
    the boxes an earlier write left in xml/; two tweets of one image share its file."""
    from refineg_formats.twitter import write_twitter_gmner

    from refineg_core.types import Box, ImageRef

    def tweet(sid, image_id, name, box):
        ent = Entity(0, 1, "PER", name, boxes=(box,) if box else ())
        return Sample(sid, (name, "x"), f"{name} x", ImageRef(image_id, None, 100, 80), (ent,))

    out = tmp_path / "pred.txt"
    write_twitter_gmner([tweet("7", "7", "Obama", Box(1, 1, 9, 9))], out)
    write_twitter_gmner([tweet("7", "7", "Obama", None)], out)
    [again] = read_twitter_gmner(out).samples
    assert again.entities[0].boxes == ()
    first, second = (
        tweet("7", "7", "Obama", Box(1, 1, 9, 9)),
        tweet("7#2", "7", "Paris", Box(2, 2, 8, 8)),
    )
    write_twitter_gmner([first, second], out)
    back = read_twitter_gmner(out).samples
    assert [[b.as_list() for b in s.entities[0].boxes] for s in back] == [
        [[1.0, 1.0, 9.0, 9.0]],
        [[2.0, 2.0, 8.0, 8.0]],
    ]
    assert [s.id for s in back] == ["7", "7#2"]
