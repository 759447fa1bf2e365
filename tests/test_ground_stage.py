"""The grounding stage end to end: real OpenAIBackend, fake server, real tweets with gold boxes."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import pytest
from refineg_frames.qwen import Qwen25VLCodec
from refineg_openai.backend import OpenAIBackend
from refineg_openai.testing import FakeOpenAIServer, error, garbage, ok
from refineg_stages.ground import GroundSettings, box_candidates, run_ground

from refineg_core.formats.native import read_results
from refineg_core.types import SOURCE_MLLM, Box, Entity, ImageRef, Sample, SampleResult
from tests.stagedata import (
    LABELS,
    OverlapSelector,
    ScriptedBackend,
    query_text,
    with_image,
)
from tests.stagedata import _dev as dev_samples
from tests.stagedata import backend_for as shared_backend_for


def backend_for(server, **kw):
    return shared_backend_for(server, **{"box_frame": "qwen2.5-vl", **kw})


def boxed(twitter_dir: Path, n: int, skip: int = 0) -> list[Sample]:
    """Dev tweets whose gold has boxes and whose XML gives the image size."""
    picked = [
        s
        for s in dev_samples(twitter_dir)
        if s.image and s.image.size and any(e.boxes for e in s.entities)
    ]
    return picked[skip : skip + n]


def as_input(sample: Sample) -> SampleResult:
    """What grounding receives: final entities without boxes (never the gold boxes)."""
    ents = tuple(attrs.evolve(e, boxes=None, source="tagger") for e in sample.entities)
    return SampleResult(sample, ents)


@pytest.fixture
def world(twitter_dir: Path, tmp_path: Path):
    pool = [with_image(s, tmp_path / "pool", i) for i, s in enumerate(boxed(twitter_dir, 6))]
    queries = [
        with_image(s, tmp_path / "q", 10 + i) for i, s in enumerate(boxed(twitter_dir, 3, skip=6))
    ]
    selector = OverlapSelector()
    selector.index(pool)
    return pool, queries, selector


def gold_answer(sample: Sample, codec, **extra) -> str:
    items = [
        {
            "entity": e.text,
            "type": e.type,
            "boxes": [codec.encode(b, sample.image.size) for b in e.boxes],
        }
        for e in sample.entities
    ]
    return json.dumps(items + extra.get("more", []))


def test_good_answers_come_back_in_original_pixels(
    world, tmp_path: Path, server: FakeOpenAIServer
) -> None:
    pool, queries, selector = world
    codec = Qwen25VLCodec()
    by_text = {q.text: q for q in queries}
    server.responder = lambda req: ok(
        "Looking at the image...\n```json\n"
        + gold_answer(by_text[query_text(req.text)], codec)
        + "\n```"
    )
    inputs = [as_input(q) for q in queries]
    results, summary = run_ground(
        inputs,
        pool,
        selector,
        backend_for(server),
        LABELS,
        GroundSettings(k=2),
        tmp_path / "g.jsonl",
    )
    assert len(server.chat_requests) == 3
    for q, res in zip(queries, results, strict=True):
        assert [e.key for e in res.entities] == [e.key for e in q.entities]
        for gold, got in zip(q.entities, res.entities, strict=True):
            assert got.grounded_by == SOURCE_MLLM
            assert len(got.boxes) == len(gold.boxes)
            for gb, pb in zip(gold.boxes, got.boxes, strict=True):
                assert gb.iou(pb) > 0.9  # through the 28-px grid and back
        demos = res.meta["demos"]
        assert len(demos) == 2 and all(d["id"] in {p.id for p in pool} for d in demos)
        assert demos[0]["score"] >= demos[1]["score"]
    req = server.chat_requests[0]
    assert len(req.image_urls) == 3  # two demonstrations and the query
    body = req.body["messages"]
    assert [m["role"] for m in body] == ["system", "user", "assistant", "user", "assistant", "user"]
    # demonstration answers carry gold boxes in the model's frame
    demo = next(p for p in pool if p.id == results[0].meta["demos"][0]["id"])
    first_answer = json.loads(body[2]["content"])
    expected = [codec.encode(b, demo.image.size) for b in demo.entities[0].boxes]
    assert first_answer[0]["boxes"] == expected
    c = summary.counters
    assert c["calls"] == 3 and c["entities_grounded"] == sum(len(q.entities) for q in queries)
    assert summary.notes["box_frame"].startswith("qwen2.5-vl")
    stored = sorted(read_results(tmp_path / "g.jsonl"), key=lambda r: r.id != results[0].id)
    assert [e.boxes for e in stored[0].entities] == [
        tuple(Box(*[round(v, 2) for v in b.as_list()]) for b in e.boxes)
        for e in results[0].entities
    ]
    assert stored[0].sample.meta["demos"] == results[0].meta["demos"]


def test_bad_boxes_and_invented_entities_never_crash(
    world, tmp_path: Path, server: FakeOpenAIServer
) -> None:
    pool, queries, selector = world
    q = queries[0]
    first = q.entities[0]
    items = [
        {
            "entity": first.text,
            "type": first.type,
            "boxes": [
                [-50, -50, 99999, 99999],
                [10, 10, 5, 5],
                "abc",
                [1, 2, 3],
                [1, 2, "x", 4],
                [None, 1, 2, 3],
            ],
        },
        {"entity": "Somebody Invented", "type": "PER", "boxes": [[1, 1, 20, 20]]},
        {"entity": "another one", "boxes": []},
        {"type": "PER", "boxes": [[1, 1, 2, 2]]},
    ]
    server.script(ok(json.dumps(items)))
    [res], summary = run_ground(
        [as_input(q)],
        pool,
        selector,
        backend_for(server),
        LABELS,
        GroundSettings(k=1),
        tmp_path / "g.jsonl",
    )
    assert [e.key for e in res.entities] == [e.key for e in q.entities]  # nothing lost
    got = res.entities[0]
    w, h = q.image.size
    assert got.boxes == (Box(0.0, 0.0, float(w), float(h)),)  # clipped to the image
    assert got.grounded_by == SOURCE_MLLM
    c = summary.counters
    assert c["boxes_invalid"] == 5
    assert c["invented_entities"] == 2 and c["invalid_missing_entity"] == 1
    for e in res.entities[1:]:  # entities the answer skipped: kept, no boxes
        assert e.boxes is None and e.grounded_by is None
    assert c["entities_unanswered"] == len(q.entities) - 1
    assert not res.failures


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        (garbage(), "bad_response"),
        (error(500), "http_500"),
        (ok("no idea, sorry"), "no_json"),
        (ok('[{"entity": "x", "boxes": [[1, 2'), "truncated"),
        (error(422, "bad image"), "http_422"),
    ],
    ids=["garbage-body", "500", "prose", "truncated", "422"],
)
def test_failures_keep_all_entities_without_boxes(
    world, tmp_path: Path, server: FakeOpenAIServer, reply, kind
) -> None:
    pool, queries, selector = world
    bad = queries[1].text
    codec = Qwen25VLCodec()
    by_text = {q.text: q for q in queries}
    server.responder = lambda req: (
        reply
        if query_text(req.text) == bad
        else ok(gold_answer(by_text[query_text(req.text)], codec))
    )
    inputs = [as_input(q) for q in queries]
    results, summary = run_ground(
        inputs,
        pool,
        selector,
        backend_for(server),
        LABELS,
        GroundSettings(k=1),
        tmp_path / "g.jsonl",
    )
    res = results[1]
    assert res.entities == inputs[1].entities
    assert all(not e.boxes for e in res.entities)
    assert [f.kind for f in res.failures] == [kind] and res.failures[0].stage == "ground"
    assert summary.failed == 1
    assert all(e.grounded_by == SOURCE_MLLM for r in (results[0], results[2]) for e in r.entities)
    stored = {r.id: r for r in read_results(tmp_path / "g.jsonl")}
    assert len(stored[res.id].entities) == len(res.entities)


def test_no_call_without_entities_or_image(world, tmp_path: Path, server: FakeOpenAIServer) -> None:
    pool, queries, selector = world
    no_image = as_input(
        attrs.evolve(queries[0], image=attrs.evolve(queries[0].image, path=tmp_path / "gone.jpg"))
    )
    no_entities = SampleResult(queries[1], ())
    results, summary = run_ground(
        [no_image, no_entities],
        pool,
        selector,
        backend_for(server),
        LABELS,
        GroundSettings(),
        tmp_path / "g.jsonl",
    )
    assert server.chat_requests == []
    assert results == [no_image, no_entities]
    assert summary.counters["skipped_no_image"] == 1
    assert summary.counters["skipped_no_entities"] == 1


def test_resume_does_not_redo_finished_samples(
    world, tmp_path: Path, server: FakeOpenAIServer
) -> None:
    pool, queries, selector = world
    out = tmp_path / "g.jsonl"
    server.default = ok("[]")
    inputs = [as_input(q) for q in queries]
    run_ground(inputs[:2], pool, selector, backend_for(server), LABELS, GroundSettings(k=1), out)
    server.reset()
    results, summary = run_ground(
        inputs, pool, selector, backend_for(server), LABELS, GroundSettings(k=1), out
    )
    assert [query_text(r.text) for r in server.chat_requests] == [queries[2].text]
    assert summary.resumed == 2 and [r.id for r in results] == [q.id for q in queries]


def test_query_never_its_own_demo_and_selector_sees_predictions(
    world, tmp_path: Path, server: FakeOpenAIServer
) -> None:
    pool, queries, _ = world
    seen: list[Sample] = []

    class Recording(OverlapSelector):
        def select(self, query, k):
            seen.append(query)
            return super().select(query, k)

    selector = Recording()
    selector.index([*pool, queries[0]])  # the query is in the pool with its gold boxes
    pred = as_input(queries[0])
    pred = attrs.evolve(pred, entities=pred.entities[:1])
    server.default = ok("[]")
    [res], _ = run_ground(
        [pred],
        pool,
        selector,
        backend_for(server),
        LABELS,
        GroundSettings(k=2),
        tmp_path / "g.jsonl",
    )
    assert queries[0].id not in {d["id"] for d in res.meta["demos"]}
    assert len(res.meta["demos"]) == 2
    assert seen[0].entities == pred.entities  # predicted entities, not gold


def test_unavailable_or_text_only_backend_skips(world, tmp_path: Path) -> None:
    pool, queries, selector = world
    inputs = [as_input(q) for q in queries]
    dead = OpenAIBackend(OpenAIBackend.Options(base_url="http://127.0.0.1:9/v1", timeout=1.0))
    results, summary = run_ground(
        inputs, pool, selector, dead, LABELS, GroundSettings(), tmp_path / "g.jsonl"
    )
    d = summary.as_dict()
    assert d["requests_skipped"] == 3 and "nothing answers at" in d["unavailable"]
    assert "127.0.0.1:9" in d["backend"]
    assert [r.entities for r in results] == [i.entities for i in inputs]
    text_only = ScriptedBackend(lambda r: "[]", images=False)
    _, summary = run_ground(
        inputs, pool, selector, text_only, LABELS, GroundSettings(), tmp_path / "g2.jsonl"
    )
    assert text_only.requests == [] and "text-only" in summary.notes["unavailable"]


def test_zero_shot_and_demo_without_image(world, tmp_path: Path) -> None:
    pool, queries, _ = world
    imageless = [attrs.evolve(p, image=attrs.evolve(p.image, path=None)) for p in pool]
    sel = OverlapSelector()
    sel.index(imageless)
    backend = ScriptedBackend(lambda r: "[]")
    _, summary = run_ground(
        [as_input(queries[0])],
        imageless,
        sel,
        backend,
        LABELS,
        GroundSettings(k=3),
        tmp_path / "g.jsonl",
    )
    [req] = backend.requests
    assert len(req.images) == 1 and [m.role for m in req.messages] == ["system", "user"]
    assert summary.counters["demos_without_image"] == 4  # k+1 asked, all without image


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, []),
        ([], []),
        ("none", []),
        ("[]", []),
        ([1, 2, 3, 4], [[1, 2, 3, 4]]),
        ([[1, 2, 3, 4], [5, 6, 7, 8]], [[1, 2, 3, 4], [5, 6, 7, 8]]),
        ({"x1": 1, "y1": 2, "x2": 3, "y2": 4}, [[1, 2, 3, 4]]),
        ([{"bbox_2d": [1, 2, 3, 4]}], [[1, 2, 3, 4]]),
        ({"xmin": 1, "ymin": 2, "xmax": 3, "ymax": 4}, [[1, 2, 3, 4]]),
        (["1", "2", "3", "4"], [["1", "2", "3", "4"]]),
    ],
)
def test_box_shapes_models_write(value, expected) -> None:
    assert box_candidates(value) == expected


def test_entities_sharing_a_name_use_the_type(tmp_path: Path) -> None:
    sample = with_image(Sample("s", ("Paris", "loves", "Paris"), "Paris loves Paris"), tmp_path)
    ents = (Entity(0, 1, "PER", "Paris"), Entity(2, 3, "LOC", "Paris"))
    reply = json.dumps([{"entity": "paris", "type": "LOC", "boxes": [[10, 10, 50, 50]]}])
    backend = ScriptedBackend(lambda r: reply)
    sel = OverlapSelector()
    sel.index([])
    [res], _ = run_ground(
        [SampleResult(sample, ents)],
        [],
        sel,
        backend,
        LABELS,
        GroundSettings(),
        tmp_path / "g.jsonl",
    )
    assert res.entities[0].boxes is None and res.entities[0].grounded_by is None
    assert res.entities[1].boxes == (Box(10, 10, 50, 50),)


def test_no_entity_lost_under_random_failures(
    twitter_dir: Path, tmp_path: Path, server: FakeOpenAIServer
) -> None:
    """10% of answers fail in assorted ways (seeded); every entity still comes out."""
    import random

    rng = random.Random(7)
    queries = [with_image(s, tmp_path, i) for i, s in enumerate(boxed(twitter_dir, 30))]
    codec = Qwen25VLCodec()
    by_text = {q.text: q for q in queries}
    bad_kinds = [error(500), garbage(), ok("sorry"), ok('[{"entity": "a", "boxes": [[1')]

    def responder(req):
        if rng.random() < 0.1:
            return rng.choice(bad_kinds)
        return ok(gold_answer(by_text[query_text(req.text)], codec))

    server.responder = responder
    inputs = [as_input(q) for q in queries]
    sel = OverlapSelector()
    sel.index([])
    results, summary = run_ground(
        inputs,
        [],
        sel,
        backend_for(server, retries=0),
        LABELS,
        GroundSettings(k=0),
        tmp_path / "g.jsonl",
    )
    assert [[e.key for e in r.entities] for r in results] == [
        [e.key for e in i.entities] for i in inputs
    ]
    failed = [r for r in results if r.failures]
    assert summary.failed == len(failed) > 0
    assert all(e.boxes is None for r in failed for e in r.entities)
    assert sum(len(r.entities) for r in read_results(tmp_path / "g.jsonl")) == sum(
        len(i.entities) for i in inputs
    )


def test_qwen_style_answer_one_item_per_box(tmp_path: Path) -> None:
    """Qwen2.5-VL's habit: one ``{"bbox_2d", "label"}`` item per box, fenced."""
    sample = with_image(
        Sample(
            "s", ("Ted", "Cruz", "in", "Iowa"), "Ted Cruz in Iowa", ImageRef("s", None, 640, 480)
        ),
        tmp_path,
    )
    ents = (Entity(0, 2, "PER", "Ted Cruz"), Entity(3, 4, "LOC", "Iowa"))
    codec = Qwen25VLCodec()
    b1, b2 = Box(10, 20, 200, 400), Box(300, 40, 600, 460)
    reply = (
        "```json\n"
        + json.dumps(
            [
                {"bbox_2d": codec.encode(b1, (640, 480)), "label": "ted cruz"},
                {"bbox_2d": codec.encode(b2, (640, 480)), "label": "Ted Cruz"},
            ]
        )
        + "\n```"
    )
    backend_codec = codec

    class QwenScripted(ScriptedBackend):
        @property
        def box_codec(self):
            return backend_codec

    backend = QwenScripted(lambda r: reply)
    [res], summary = run_ground(
        [SampleResult(sample, ents)],
        [],
        None,
        backend,
        LABELS,
        GroundSettings(),
        tmp_path / "g.jsonl",
    )
    got = res.entities[0].boxes
    assert len(got) == 2 and got[0].iou(b1) > 0.95 and got[1].iou(b2) > 0.95
    assert res.entities[1].boxes is None and res.entities[1].grounded_by is None
    assert summary.notes["demonstrations"].startswith("none (zero-shot)")


@pytest.mark.parametrize(
    "items",
    [
        [{"entity": "Somebody Else", "type": "PER", "boxes": [[1, 2, 30, 40]]}],  # invented
        [["{name}", [1, 2, 3, 4]], 7],  # wrong shapes
        [{"entity": "{name}", "type": "{type}", "boxes": [[50, 50, 10, 10]]}],  # invalid box
        [{"entity": "{name}", "boxes": "somewhere on the left"}],  # not a box at all
    ],
    ids=["invented", "wrong-shapes", "inverted-box", "prose-box"],
)
def test_answer_with_no_usable_item_leaves_entities_ungrounded(
    world, tmp_path: Path, server: FakeOpenAIServer, items: list
) -> None:
    pool, queries, selector = world
    inputs = [as_input(q) for q in queries]
    by_text = {q.text: q for q in queries}

    def reply(req):
        first = by_text[query_text(req.text)].entities[0]
        return ok(json.dumps(items).replace("{name}", first.text).replace("{type}", first.type))

    server.responder = reply
    results, summary = run_ground(
        inputs,
        pool,
        selector,
        backend_for(server),
        LABELS,
        GroundSettings(k=1),
        tmp_path / "g.jsonl",
    )
    for inp, res in zip(inputs, results, strict=True):
        assert res.entities == inp.entities  # not marked "not groundable", not grounded
        assert all(e.grounded_by is None for e in res.entities)
        assert [f.kind for f in res.failures] == ["no_usable_item"]
    assert summary.failed == len(inputs)


def test_item_with_only_invalid_boxes_does_not_mean_not_groundable(
    world, tmp_path: Path, server: FakeOpenAIServer
) -> None:
    pool, queries, selector = world
    q = next(q for q in queries if len(q.entities) >= 2)
    first, second = q.entities[0], q.entities[1]
    server.script(
        ok(
            json.dumps(
                [
                    {"entity": first.text, "type": "Person", "boxes": [[10, 10, 5, 5], "x"]},
                    {"entity": second.text, "type": second.type, "boxes": []},
                ]
            )
        )
    )
    [res], summary = run_ground(
        [as_input(q)],
        pool,
        selector,
        backend_for(server),
        LABELS,
        GroundSettings(k=0),
        tmp_path / "g.jsonl",
    )
    got = {e.key: e for e in res.entities}
    assert got[first.key].grounded_by is None  # no valid box: grounding not done
    assert got[second.key].grounded_by == SOURCE_MLLM and got[second.key].boxes == ()
    assert summary.counters["items_only_invalid_boxes"] == 1 and not res.failures
