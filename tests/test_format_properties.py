"""Property-based tests (Hypothesis) of every dataset format: what is read can be written.

For native JSONL, Twitter-GMNER, CCKS, CoNLL and the ``jsonl`` plugin:

* ``write(read(x))`` round-trips: read -> write -> read gives equal samples
  (``Sample`` equality: id, tokens, text, image, entities), and the first read
  keeps what the format holds of the generated samples;
* every reader, fed generated hostile text (line and paragraph separators, NUL,
  tabs, control characters, huge tokens, broken JSON, truncated files), either
  reads, and then every output writer of a run writes what it read, or refuses
  with a ``DataError`` located in the file (and its line, for line formats).

Deterministic (``derandomize``, no example database) and small (a few seconds per
property), so CI sees the same examples every time.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import attrs
import pytest

pytest.importorskip("hypothesis", reason="pip install hypothesis (the dev extra)")

from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from refineg_formats.ccks import read_ccks, write_ccks
from refineg_formats.conll_read import read_conll
from refineg_formats.conll_write import write_conll
from refineg_formats.twitter import read_twitter_gmner, voc_name, write_twitter_gmner

from refineg_core.errors import DataError
from refineg_core.formats import (
    load_dataset,
    read_jsonl,
    write_jsonl,
)
from refineg_core.formats.base import whole_pixels
from refineg_core.formats.native import _two_decimals
from refineg_core.pipeline.outputs import write_outputs
from refineg_core.types import Box, Entity, ImageRef, Sample, SampleResult
from refineg_core.validity import sample_problem

PROPERTY = settings(
    max_examples=40,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
HOSTILE = settings(PROPERTY, max_examples=60)

#: Characters that break naive readers: line/paragraph separators, NEL, form feed,
#: NUL, BOM, zero-width joiner, RTL override, tab, CR, LF, a lone surrogate.
ODD = "\u2028\u2029\x85\x0c\x0b\x1c\x1d\x1e\x00\ufeff\u200d\u202e\t\r\n\ud800"

odd_text = st.text(
    st.one_of(st.sampled_from(ODD), st.characters(codec="utf-8"), st.characters()),
    max_size=30,
)
#: Plain text with exactly one hostile character in it (a mix of several would hide
#: a check that misses one of them behind a check that finds another).
one_odd = st.builds(
    lambda a, c, b: a + c + b,
    st.text("ab", max_size=2),
    st.sampled_from(ODD),
    st.text("b", max_size=2),
)
token = st.text(
    st.one_of(st.sampled_from(ODD), st.characters(codec="utf-8")), min_size=1, max_size=6
)
plain_id = st.text("abcXYZ019_-#.", min_size=1, max_size=8).filter(
    lambda s: s not in (".", "..") and not s.startswith("~")
)
coord = st.one_of(st.integers(0, 50), st.floats(0, 50, allow_subnormal=False))
extent = st.one_of(st.integers(1, 40), st.floats(0.001, 40), st.just(0.004))
etype = st.sampled_from(["PER", "LOC", "ORG", "OTHER", "x-y", "Ünï"])


@st.composite
def samples(draw, *, boxes: bool = True, image: bool = True) -> list[Sample]:
    """Unique-id samples that every output writer can write (``sample_problem`` None)."""
    out: list[Sample] = []
    for sid in draw(st.lists(plain_id, min_size=1, max_size=4, unique=True)):
        toks = draw(st.lists(token, min_size=1, max_size=7))
        ents, at = [], 0
        while at < len(toks) and draw(st.booleans()):
            start = draw(st.integers(at, len(toks) - 1))
            end = draw(st.integers(start + 1, len(toks)))
            bx = None
            if boxes and draw(st.booleans()):
                x1, y1 = draw(coord), draw(coord)
                bx = (Box(x1, y1, x1 + draw(extent), y1 + draw(extent) / 2),)
            ents.append(Entity(start, end, draw(etype), " ".join(toks[start:end]), boxes=bx))
            at = end
        img = ImageRef(sid, None, 100, 80) if image else None
        sample = Sample(sid, tuple(toks), " ".join(toks), img, tuple(ents))
        assume(sample_problem(sample) is None)
        out.append(sample)
    return out


#: Found by these properties: a first token starting with a BOM lost it (CoNLL); a
#: box narrower than the rounding came back empty and the file did not read
#: (JSONL 0.01 px, CCKS and VOC XML 1 px); same-name objects doubled per cycle;
#: a second tweet of one image overwrote the first one's XML.
TINY_BOX = Entity(0, 1, "PER", "\ufeffx", boxes=(Box(1, 1, 1.004, 1.4),))
PINNED = [
    Sample("a", ("\ufeffx", "y"), "\ufeffx y", ImageRef("a", None, 100, 80), (TINY_BOX,)),
    Sample(
        "b",
        ("P", "x", "P"),
        "P x P",
        ImageRef("b", None, 100, 80),
        (
            Entity(0, 1, "LOC", "P", boxes=(Box(1, 2, 3, 4),)),
            Entity(2, 3, "LOC", "P", boxes=(Box(5, 6, 7, 8),)),
        ),
    ),
    # a second tweet of image "b": both read back the one xml/b.xml
    Sample(
        "b#2",
        ("Q", "y"),
        "Q y",
        ImageRef("b", None, 100, 80),
        (Entity(0, 1, "ORG", "Q", boxes=(Box(9, 9, 20, 20),)),),
    ),
]


def _tmp() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="refineg-prop-")


def _twice(write, read, items, folder: Path):
    """read(write(items)), then read(write(that)): both reads, for comparison."""
    first = read(write(items, folder / "a"))
    second = read(write(list(first), folder / "b"))
    return first, second


def _write_jsonl(items, folder: Path) -> Path:
    folder.mkdir()
    write_jsonl(items, folder / "d.jsonl")
    return folder / "d.jsonl"


def _write_conll(items, folder: Path) -> Path:
    folder.mkdir()
    write_conll(items, folder / "d.conll")
    return folder / "d.conll"


def _write_twitter(items, folder: Path) -> Path:
    write_twitter_gmner(items, folder / "split.txt")
    return folder / "split.txt"


def _write_ccks(items, folder: Path) -> Path:
    folder.mkdir()
    texts = {s.id: {"text": s.text} for s in items}
    (folder / "texts.json").write_text(json.dumps(texts, ensure_ascii=False), "utf-8")
    write_ccks(items, folder / "entities.json")
    return folder / "texts.json"


def _spans(s: Sample) -> list[tuple[int, int, str]]:
    return [e.key for e in s.entities]


def _boxes_as_written(s: Sample, write_box) -> list:
    return [(e.key, [write_box(b) for b in e.boxes or ()]) for e in s.entities]


@PROPERTY
@given(samples())
@example(PINNED)
def test_native_jsonl_round_trips(items):
    with _tmp() as tmp:
        first, second = _twice(_write_jsonl, read_jsonl, items, Path(tmp))
    assert list(first) == list(second)
    # the native format keeps every field (boxes to 0.01 px)
    assert [(s.id, s.tokens, s.text, s.image) for s in first] == [
        (s.id, s.tokens, s.text, s.image) for s in items
    ]
    assert [_boxes_as_written(s, _two_decimals) for s in first] == [
        _boxes_as_written(s, _two_decimals) for s in items
    ]


@PROPERTY
@given(samples(boxes=False, image=False))
@example([attrs.evolve(s, image=None, entities=()) for s in PINNED])
def test_conll_round_trips(items):
    with _tmp() as tmp:
        first, second = _twice(
            _write_conll, lambda p: read_conll(p, id_prefix="s"), items, Path(tmp)
        )
    assert list(first) == list(second)
    assert [s.tokens for s in first] == [s.tokens for s in items]
    assert [_spans(s) for s in first] == [_spans(s) for s in items]


@PROPERTY
@given(samples())
@example(PINNED)
def test_twitter_gmner_round_trips(items):
    with _tmp() as tmp:
        first, second = _twice(_write_twitter, read_twitter_gmner, items, Path(tmp))
    assert list(first) == list(second)
    assert [(s.id, s.tokens) for s in first] == [(s.id, s.tokens) for s in items]
    # The VOC XML matches boxes to entities by name: with distinct names per tweet
    # each keeps its own boxes (in whole pixels).
    for got, s in zip(first, items, strict=True):
        names = [voc_name(e.text) for e in s.entities]
        if len(set(names)) == len(names):
            assert _boxes_as_written(got, whole_pixels) == _boxes_as_written(s, whole_pixels)


@PROPERTY
@given(samples(image=False))
@example([attrs.evolve(s, image=None) for s in PINNED])
def test_ccks_round_trips(items):
    def read(texts: Path):
        return read_ccks(texts, texts.with_name("entities.json"))

    with _tmp() as tmp:
        first, second = _twice(_write_ccks, read, items, Path(tmp))
    assert list(first) == list(second)
    assert [(s.id, s.text) for s in first] == [(s.id, s.text) for s in items]


@PROPERTY
@given(samples())
@example(PINNED)
def test_jsonl_plugin_round_trips_through_load_dataset(items):
    with _tmp() as tmp:
        first = load_dataset(_write_jsonl(items, Path(tmp) / "a"), "jsonl")
        second = load_dataset(_write_jsonl(list(first), Path(tmp) / "b"), "jsonl")
    assert list(first) == list(second)
    assert [s.tokens for s in first] == [s.tokens for s in items]


# ---------------------------------------------------------------- hostile text


def _line_text(draw) -> str:
    """Lines shaped like CoNLL (``token<TAB>tag``, ``IMGID:``, blank), hostile inside."""
    tag = st.sampled_from(["O", "B-PER", "I-PER", "I-LOC", "B-x y", "X-Y", "", " O "])
    line = st.one_of(
        st.builds(lambda t, g: f"{t}\t{g}", odd_text, tag),
        st.builds(lambda t: f"IMGID:{t}", odd_text),
        st.sampled_from(["", "IMGID:7", "-DOCSTART-\tO", "IMGID:../x", "\t\t", " "]),
        odd_text,
        st.just("A" * 5000 + "\tB-PER"),
    )
    ends = st.sampled_from(["\n", "\r\n", "\n\n", "\r", "\u2028"])
    return "".join(draw(line) + draw(ends) for _ in range(draw(st.integers(0, 12))))


def _json_text(draw) -> str:
    """Lines of JSON objects with hostile strings (lone surrogates escaped), broken JSON."""
    record = st.fixed_dictionaries(
        {"id": st.one_of(odd_text, st.integers(-5, 5))},
        optional={
            "tokens": st.lists(odd_text, max_size=4),
            "text": odd_text,
            "entities": st.lists(
                st.fixed_dictionaries(
                    {"start": st.integers(-1, 4), "end": st.integers(0, 5), "type": odd_text},
                    optional={"boxes": st.lists(st.lists(st.floats(), min_size=4, max_size=4))},
                ),
                max_size=2,
            ),
            "image": st.fixed_dictionaries({}, optional={"id": odd_text, "width": st.integers()}),
        },
    )
    line = st.one_of(
        st.builds(json.dumps, record),
        st.builds(lambda r: json.dumps(r, ensure_ascii=False), record),
        st.sampled_from(['{"id": "a", "tokens": [', "]}", "NaN", "null", "", "[1]", "{}"]),
        odd_text,
        st.just("[" * 3000),
    )
    return "".join(draw(line) + "\n" for _ in range(draw(st.integers(0, 6))))


def _ccks_text(draw) -> str:
    """A CCKS texts object with hostile ids and texts, or hostile JSON lines."""
    texts = st.dictionaries(
        odd_text, st.one_of(st.fixed_dictionaries({"text": odd_text}), odd_text, st.integers())
    )
    if draw(st.booleans()):
        return _json_text(draw)
    return json.dumps(
        draw(texts), ensure_ascii=draw(st.booleans()), indent=draw(st.sampled_from([None, 1]))
    )


@st.composite
def hostile_file(draw, kind: str) -> bytes:
    make = {"json": _json_text, "ccks": _ccks_text, "lines": _line_text}[kind]
    text = make(draw)
    data = text.encode("utf-8", errors="surrogatepass")
    if draw(st.booleans()):  # truncated, possibly inside a UTF-8 sequence
        data = data[: draw(st.integers(0, len(data)))]
    return data


def _reads_or_refuses_located(fmt: str, name: str, data: bytes, line_numbers: bool) -> None:
    with _tmp() as tmp:
        _check_located(fmt, Path(tmp), name, data, line_numbers)


def _check_located(fmt: str, folder: Path, name: str, data: bytes, line_numbers: bool) -> None:
    path = folder / name
    path.write_bytes(data)
    if fmt == "twitter-gmner":
        (folder / "xml").mkdir()
    try:
        ds = load_dataset(path, fmt)
    except DataError as exc:
        assert exc.where and exc.where.startswith(str(path)), (exc.where, str(exc))
        if line_numbers and "file not found" not in str(exc):
            assert exc.where[len(str(path)) :].startswith(":"), exc.where
        return
    # what was read can be written by every output writer of a run, and reads back
    results = [SampleResult(s, s.entities) for s in ds.samples]
    written = write_outputs(results, folder / "out", ["twitter-gmner", "ccks"])
    back = read_twitter_gmner(written.paths["twitter-gmner"])
    assert [s.tokens for s in back] == [s.tokens for s in ds.samples if s.tokens]
    assert len(read_jsonl(written.paths["jsonl"])) == len(ds)


@HOSTILE
@given(hostile_file("lines"))
def test_conll_reader_reads_or_refuses_with_file_and_line(data):
    _reads_or_refuses_located("conll", "d.conll", data, line_numbers=True)


@HOSTILE
@given(hostile_file("lines"))
def test_twitter_reader_reads_or_refuses_with_file_and_line(data):
    _reads_or_refuses_located("twitter-gmner", "split.txt", b"IMGID:1\n" + data, True)


@HOSTILE
@given(hostile_file("json"))
def test_jsonl_reader_reads_or_refuses_with_file_and_line(data):
    _reads_or_refuses_located("jsonl", "d.jsonl", data, line_numbers=True)


@HOSTILE
@given(hostile_file("ccks"))
def test_ccks_reader_reads_or_refuses_with_its_file(data):
    _reads_or_refuses_located("ccks", "texts.json", data, line_numbers=False)


@HOSTILE
@given(samples(), st.data())
def test_truncated_native_file_reads_or_refuses_at_a_line(items, data):
    with _tmp() as tmp:
        raw = _write_jsonl(items, Path(tmp) / "a").read_bytes()
    cut = raw[: data.draw(st.integers(0, len(raw)))]
    _reads_or_refuses_located("jsonl", "d.jsonl", cut, line_numbers=True)


def test_properties_cover_every_builtin_format():
    from refineg_core import registry

    covered = {"jsonl", "twitter-gmner", "ccks", "conll"}
    shipped = {p.name for p in registry.installed("refineg.formats") if p.distribution == "refineg"}
    assert shipped == covered


@HOSTILE
@given(
    st.lists(st.lists(st.one_of(one_odd, odd_text), max_size=5), min_size=1, max_size=4),
    st.booleans(),
)
def test_jsonl_with_any_tokens_reads_only_what_every_writer_writes(token_lists, ascii_only):
    """Well-formed records with any token text: the reader's verdict and the writers'
    must agree (read => written and read back the same; else refused at a line)."""
    lines = [
        json.dumps({"id": f"s{i}", "tokens": toks}, ensure_ascii=ascii_only)
        for i, toks in enumerate(token_lists)
    ]
    data = "".join(line + "\n" for line in lines).encode("utf-8", errors="surrogatepass")
    _reads_or_refuses_located("jsonl", "d.jsonl", data, line_numbers=True)


@pytest.mark.parametrize("char", list(ODD + "\x7f\u00a0\u3000\U0001f468"), ids=ascii)
@pytest.mark.parametrize("where", ["alone", "start", "middle", "end"])
def test_each_hostile_character_in_a_token_is_read_and_written_or_refused(char, where):
    """Every hostile character alone, at each place of a token, in JSONL and in a
    Twitter-GMNER line: read, written by every output writer and read back equal, or
    refused at its line. (Exhaustive where the properties above sample.)"""
    tok = {"alone": char, "start": char + "ab", "middle": "a" + char + "b", "end": "ab" + char}[
        where
    ]
    record = json.dumps({"id": "s0", "tokens": ["x", tok]}) + "\n"
    _reads_or_refuses_located("jsonl", "d.jsonl", record.encode("utf-8", "surrogatepass"), True)
    if char not in "\ud800":  # a UTF-8 file cannot hold a lone surrogate
        line = f"IMGID:1\nx\tO\n{tok}\tB-PER\n".encode()
        _reads_or_refuses_located("twitter-gmner", "split.txt", line, line_numbers=True)
