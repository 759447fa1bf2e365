"""Readers and writers on the real datasets and on broken files."""

import json

import pytest
from PIL import Image
from refineg_formats.ccks import read_ccks, write_ccks
from refineg_formats.conll_write import write_conll
from refineg_formats.twitter import read_twitter_gmner, write_twitter_gmner

from refineg_core.errors import DataError
from refineg_core.formats import load_dataset, read_jsonl, write_jsonl
from refineg_core.types import Box


def test_twitter_gmner_dev_loads_with_boxes(twitter_dir):
    ds = load_dataset(twitter_dir / "dev.txt")
    assert len(ds) == 1500
    n_entities = sum(len(s.entities) for s in ds)
    assert n_entities == 2450  # counted independently with grep in the data README check
    boxed = [e for s in ds for e in s.entities if e.boxes]
    assert boxed, "dev has groundable entities"
    # Every box lies inside its image as stated by the XML <size>.
    for s in ds:
        for e in s.entities:
            for b in e.boxes:
                assert 0 <= b.x1 < b.x2 <= s.image.width + 1
                assert 0 <= b.y1 < b.y2 <= s.image.height + 1
    first = ds.samples[0]
    assert first.image is not None and first.image.path is None  # images are not shipped


def test_twitter_counts_match_raw_file(twitter_dir):
    raw = (twitter_dir / "train.txt").read_text(encoding="utf-8")
    b_tags = sum(1 for line in raw.splitlines() if "\tB-" in line)
    ds = load_dataset(twitter_dir / "train.txt", "twitter-gmner")
    assert sum(len(s.entities) for s in ds) == b_tags
    assert len(ds) == raw.count("IMGID:")


def test_ccks_conll_loads(ccks_dir):
    gold = load_dataset(ccks_dir / "gold-500.conll")
    assert len(gold) == 500
    assert sum(len(s.entities) for s in gold) == 339
    assert sum(1 for s in gold if not s.entities) == 223


def test_conll_line_without_tab_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.conll"
    bad.write_text("Paris\tB-LOC\nis nice\n", encoding="utf-8")
    with pytest.raises(DataError) as exc:
        load_dataset(bad, "conll")
    assert f"{bad}:2" in str(exc.value) and "no tab" in str(exc.value)


def test_non_utf8_file_is_a_located_error(tmp_path):
    bad = tmp_path / "latin1.conll"
    bad.write_bytes("Z\u00fcrich\tB-LOC\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.conll:1: not valid UTF-8"):
        load_dataset(bad, "conll")


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_dataset(tmp_path / "nope.txt")


def _twitter_fixture(tmp_path, xml_body):
    (tmp_path / "xml").mkdir()
    (tmp_path / "split.txt").write_text(
        "IMGID:42\nBarack\tB-PER\nObama\tI-PER\nin\tO\nParis\tB-LOC\n\nIMGID:43\nhi\tO\n",
        encoding="utf-8",
    )
    (tmp_path / "xml" / "42.xml").write_text(
        f"<annotation><size><width>100</width><height>80</height></size>{xml_body}</annotation>",
        encoding="utf-8",
    )
    return tmp_path / "split.txt"


def _obj(name, x1, y1, x2, y2):
    return (
        f"<object><name>{name}</name><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
        f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
    )


def test_bad_xml_boxes_are_dropped_or_clipped_but_entities_kept(tmp_path):
    path = _twitter_fixture(
        tmp_path,
        _obj("Barack Obama", 10, 10, 50, 60)
        + _obj("Barack Obama", 60, 5, 90, 40)  # second box of the same entity
        + _obj("Paris", 50, 10, 40, 20)  # x1 >= x2
        + _obj("Paris", 90, 70, 150, 120)  # outside: clipped to the image
        + _obj("Nobody", 1, 1, 2, 2),  # matches no entity
    )
    ds = read_twitter_gmner(path)
    obama, paris = ds.samples[0].entities
    assert obama.boxes == (Box(10, 10, 50, 60), Box(60, 5, 90, 40))
    assert paris.boxes == (Box(90, 70, 100, 80),)
    warnings = "\n".join(ds.warnings)
    assert "x1<x2" in warnings and "outside" in warnings and "'Nobody'" in warnings
    assert ds.samples[1].entities == ()


def test_missing_and_corrupt_images_keep_the_sample(tmp_path):
    path = _twitter_fixture(tmp_path, _obj("Paris", 1, 1, 20, 20))
    images = tmp_path / "images"
    images.mkdir()
    (images / "42.jpg").write_bytes(b"not a jpeg")
    ds = read_twitter_gmner(path, images_dir=images)
    assert [s.id for s in ds] == ["42", "43"]
    assert ds.samples[0].image.path is None and ds.samples[0].image.size == (100, 80)
    assert any("corrupt" in w for w in ds.warnings)
    assert any("43" in w and "missing" in w for w in ds.warnings)
    Image.new("RGB", (120, 90)).save(images / "43.png")
    ds = read_twitter_gmner(path, images_dir=images)
    assert ds.samples[1].image.available and ds.samples[1].image.size == (120, 90)


def test_ccks_json_aligns_names_and_keeps_unfound_ones(tmp_path):
    texts = tmp_path / "texts.json"
    ents = tmp_path / "entities.json"
    texts.write_text(
        json.dumps({"1": {"text": "The F-35 flew over Ramstein Air Base."}, "2": {"text": ""}}),
        encoding="utf-8",
    )
    ents.write_text(
        json.dumps(
            {
                "1": [
                    {
                        "name": "F-35",
                        "label": "aircraft",
                        "bnd": {"xmin": 1, "ymin": 2, "xmax": 30, "ymax": 40},
                    },
                    {"name": "Ramstein Air Base", "label": "location", "bnd": None},
                    {"name": "Su-57", "label": "aircraft", "bnd": None},
                ]
            }
        ),
        encoding="utf-8",
    )
    ds = read_ccks(texts, ents)
    s1, s2 = ds.samples
    assert [(e.text, e.type, len(e.boxes)) for e in s1.entities] == [
        ("F-35", "aircraft", 1),
        ("Ramstein Air Base", "location", 0),
    ]
    assert s1.meta["unaligned"] == [{"name": "Su-57", "label": "aircraft", "boxes": []}]
    assert s2.tokens == () and any("empty text" in w for w in ds.warnings)
    out = tmp_path / "sub.json"
    write_ccks(ds.samples, out)
    written = json.loads(out.read_text())
    assert written["1"][0] == {
        "name": "F-35",
        "label": "aircraft",
        "bnd": {"xmin": 1, "ymin": 2, "xmax": 30, "ymax": 40},
    }
    assert written["1"][1]["bnd"] is None and written["2"] == []


def test_writers_round_trip(twitter_dir, tmp_path):
    ds = load_dataset(twitter_dir / "dev.txt", limit=200)
    write_jsonl(ds.samples, tmp_path / "dev.jsonl")
    assert read_jsonl(tmp_path / "dev.jsonl").samples == ds.samples
    write_twitter_gmner(ds.samples, tmp_path / "tw" / "dev.txt")
    again = read_twitter_gmner(tmp_path / "tw" / "dev.txt")
    assert [(s.id, s.tokens, [(e.key, e.boxes) for e in s.entities]) for s in again] == [
        (s.id, s.tokens, [(e.key, e.boxes) for e in s.entities]) for s in ds
    ]
    write_conll(ds.samples, tmp_path / "dev.conll", scheme="BIOES")
    conll = load_dataset(tmp_path / "dev.conll", "conll")
    assert [[e.key for e in s.entities] for s in conll] == [[e.key for e in s.entities] for s in ds]


def test_jsonl_bad_line_is_located(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"id": "a", "tokens": ["x"]}\n{oops\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"x.jsonl:2: invalid JSON"):
        read_jsonl(path)


def test_a_repeated_id_is_found_with_its_first_line_far_apart():
    """The reader's duplicate check keeps ~12 bytes per id (a corpus streams), and
    still names the first line of an id seen more than a merge batch earlier."""
    from refineg_core.formats.ids import _BATCH, SeenIds

    seen = SeenIds()
    n = 2 * _BATCH + 10
    assert all(seen.add(f"p{i}", i + 1) is None for i in range(n))
    assert seen.add("p5", n + 1) == 6  # in the merged, sorted part
    assert seen.add(f"p{n - 1}", n + 2) == n  # still in the recent part
    assert seen.add("new", n + 3) is None
