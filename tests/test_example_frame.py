"""The example package's ``xywh`` box frame, selected by name in a config, end to end.

A third-party frame (``examples/refineg-gazetteer``, entry point
``refineg.box_frames: xywh``) with no change to refineg_core: the real CLI runs
train/predict/ground, the real ``openai`` backend talks HTTP to a fake server
that answers in 0-1 ``[x, y, w, h]``, and the boxes must come back in original
pixels. Skips (with the install command) when the example is not installed.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from refineg_openai.testing import FakeOpenAIServer, ok

from refineg_core.errors import PluginError
from refineg_core.formats import write_jsonl
from refineg_core.formats.native import read_results
from refineg_core.hooks import get_hooks
from refineg_core.registry import create_box_frame, installed
from refineg_core.testing import run_cli
from refineg_core.types import Box, Entity, ImageRef, Sample
from tests.stagedata import paint_image, query_text

pytest.importorskip(
    "refineg_gazetteer.xywh",
    reason="example plugin not installed: pip install -e examples/refineg-gazetteer",
)

#: (text, image size, [(start, end, type, box in original pixels)]).
GOLD = [
    (
        "Obama visits Paris today",
        (640, 480),
        [(0, 1, "PER", (101.0, 37.5, 260.25, 410.0)), (2, 3, "LOC", (300.0, 12.0, 639.0, 200.5))],
    ),
    (
        "Merkel met Obama in Berlin",
        (333, 517),
        [
            (0, 1, "PER", (5.0, 7.0, 120.0, 300.0)),
            (2, 3, "PER", (130.5, 40.0, 330.0, 512.0)),
            (4, 5, "LOC", (0.0, 400.0, 333.0, 517.0)),
        ],
    ),
    ("Berlin at night", (1000, 200), [(0, 1, "LOC", (0.0, 0.0, 1000.0, 200.0))]),
]


def gold_samples(images: Path) -> list[Sample]:
    out = []
    for i, (text, size, ents) in enumerate(GOLD):
        tokens = tuple(text.split())
        path = paint_image(images / f"img{i}.jpg", size, seed=i)
        out.append(
            Sample(
                f"s{i}",
                tokens,
                text,
                ImageRef(f"img{i}", path, *size),
                tuple(
                    Entity(a, b, t, " ".join(tokens[a:b]), boxes=(Box(*box),))
                    for a, b, t, box in ents
                ),
            )
        )
    return out


def as_xywh(box: Box, size: tuple[int, int]) -> list[float]:
    """What an xywh model writes, computed here independently of the frame's code."""
    w, h = size
    return [
        round(box.x1 / w, 4),
        round(box.y1 / h, 4),
        round((box.x2 - box.x1) / w, 4),
        round((box.y2 - box.y1) / h, 4),
    ]


def test_xywh_frame_is_installed_and_round_trips():
    [ep] = [p for p in installed("refineg.box_frames") if p.name == "xywh"]
    assert ep.distribution == "refineg-gazetteer"
    frame = create_box_frame("xywh", {"max_side": 500})
    assert frame.model_size((1000, 200)) == (500, 100)
    box = Box(130.5, 40.0, 330.0, 512.0)
    coded = frame.encode(box, (333, 517))
    assert coded == as_xywh(box, (333, 517))
    back = frame.decode(coded, (333, 517))
    assert back is not None and back.iou(box) > 0.999
    # width/height, not corners: [x2, y2] read as a size would overflow and be clipped
    assert frame.decode([0.5, 0.5, 0.25, 0.25], (400, 200)) == Box(200, 100, 300, 150)
    assert frame.decode([0.5, 0.5, 0.0, 0.2], (400, 200)) is None
    assert frame.decode([0.5, 0.5, -0.1, 0.2], (400, 200)) is None
    with pytest.raises(PluginError, match="decimals"):
        create_box_frame("xywh", {"decimals": 0})


def config_text(data: Path, base_url: str, run_dir: Path) -> str:
    return textwrap.dedent(f'''
        run_dir = "{run_dir}"
        [labels]
        PER = "a named person"
        LOC = "a named place"
        [prompts]
        domain = "captioned press photos"
        generic_examples = "crowd, city"
        [data.train]
        path = "{data}"
        format = "jsonl"
        [data.predict]
        path = "{data}"
        format = "jsonl"
        [stages]
        train = true
        predict = true
        refine = true
        ground = true
        [tagger]
        plugin = "gazetteer"
        [uncertainty]
        plugin = "rules"
        [backend]
        plugin = "openai"
        [backend.options]
        base_url = "{base_url}"
        model = "fake-model"
        box_frame = "xywh"
        retries = 0
        timeout = 10
        [refine]
        delegate = "all"
        [ground]
        k = 0
    ''')


def test_xywh_frame_selected_in_a_config_grounds_end_to_end(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("REFINEG_HOOK_PLUGINS", "")  # only this package's plugins matter
    get_hooks.cache_clear()
    gold = gold_samples(tmp_path / "images")
    write_jsonl(gold, tmp_path / "data.jsonl")
    by_text = {s.text: s for s in gold}

    def respond(request):
        sample = by_text[query_text(request.text)]
        if "Candidate entities" in request.text:  # refinement: confirm the gold entities
            return ok(json.dumps([{"name": e.text, "type": e.type} for e in sample.entities]))
        items = [
            {
                "entity": e.text,
                "type": e.type,
                "boxes": [as_xywh(b, sample.image.size) for b in e.boxes],
            }
            for e in sample.entities
        ]
        return ok("```json\n" + json.dumps(items) + "\n```")

    try:
        with FakeOpenAIServer() as server:
            server.responder = respond
            cfg = tmp_path / "xywh.toml"
            cfg.write_text(
                config_text(tmp_path / "data.jsonl", server.base_url, tmp_path / "run"),
                encoding="utf-8",
            )
            res = run_cli(["run", "-c", str(cfg)])
            assert res.code == 0, res.stderr
            refine = [r for r in server.chat_requests if "Candidate entities" in r.text]
            ground = [r for r in server.chat_requests if r not in refine]
            assert len(refine) == len(ground) == len(gold)
            # the [prompts] wording reaches both stages
            assert "named entities in captioned press photos" in refine[0].text
            assert "such as crowd, city" in refine[0].text
            system = ground[0].body["messages"][0]["content"]
            assert "comes from captioned press photos" in system
            # the frame's own sentence tells the model how to write a box
            assert "Each box is [x, y, width, height]: the top-left corner" in system
    finally:
        get_hooks.cache_clear()
    results = {r.id: r for r in read_results(tmp_path / "run" / "ground.jsonl")}
    assert set(results) == {s.id for s in gold}
    for s in gold:
        got = {e.key: e for e in results[s.id].entities}
        assert set(got) == {e.key for e in s.entities}, s.id
        for e in s.entities:
            [box] = got[e.key].boxes
            # 4 decimals of a side: well under a pixel on these images
            for a, b in zip(box.as_list(), e.boxes[0].as_list(), strict=True):
                assert abs(a - b) < 0.1, (s.id, e.text, box, e.boxes[0])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert "xywh" in json.dumps(summary)
