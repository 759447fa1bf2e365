"""Prompt templates and the chat requests built from them."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import pydantic
import pytest
from refineg_frames.generic import PixelCodec
from refineg_frames.qwen import Qwen2VLCodec, Qwen25VLCodec
from refineg_stages.ground import GroundSettings
from refineg_stages.prompts import (
    DEFAULT_WORDING,
    REFINE_FIELDS,
    PromptWording,
    build_ground_request,
    build_refine_request,
    check_template,
)
from refineg_stages.refine import RefineSettings

from refineg_core.chat import ImagePart, TextPart
from refineg_core.config import load_config
from refineg_core.errors import ConfigError
from refineg_core.labels import LabelSet
from refineg_core.types import Box, Entity, ImageRef, Sample
from tests.stagedata import LABELS, WORDING, prediction, real_samples, with_image

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _texts(request) -> str:
    return "\n".join(p.text for m in request.messages for p in m.parts if isinstance(p, TextPart))


def test_refine_prompt_has_everything_the_mllm_needs(twitter_dir: Path, tmp_path: Path) -> None:
    sample = with_image(real_samples(twitter_dir, 1, min_entities=2)[0], tmp_path)
    pred = prediction(sample, uncertainty=[0.05] + [0.9] * (len(sample.entities) - 1))
    delegated = set(pred.gate.delegated)
    req = build_refine_request(
        sample,
        pred.entities,
        delegated,
        LABELS,
        with_image=True,
        max_tokens=300,
        temperature=0.2,
        wording=WORDING,
    )
    assert req.purpose == "refine" and req.max_tokens == 300 and req.temperature == 0.2
    [msg] = req.messages
    assert isinstance(msg.parts[0], ImagePart) and msg.parts[0].path == sample.image.path
    assert msg.parts[0].size == sample.image.size
    text = _texts(req)
    assert sample.text in text
    for etype, desc in LABELS.descriptions.items():
        assert f"- {etype}: {desc}" in text
    assert "never tag generic nouns" in text
    first, second = pred.entities[0], pred.entities[1]
    line1 = json.dumps({"name": first.text, "type": first.type}) + " uncertainty=0.05 (confident)"
    line2 = json.dumps({"name": second.text, "type": second.type}) + " uncertainty=0.90 (uncertain)"
    assert line1 in text and line2 in text
    assert "JSON list" in text and "social media" in text


def test_refine_prompt_text_only_when_no_image_or_text_backend(tmp_path: Path) -> None:
    sample = Sample(
        "s1",
        ("Obama", "visits", "Paris"),
        "Obama visits Paris",
        ImageRef("s1", tmp_path / "missing.jpg", 100, 80),
    )
    ents = (Entity(0, 1, "PER", "Obama", source="tagger", uncertainty=0.7),)
    req = build_refine_request(sample, ents, {(0, 1, "PER")}, LABELS, with_image=True)
    assert not req.has_images  # file missing: never a dangling path
    with_img = attrs.evolve(sample, image=ImageRef("s1", Path(__file__), 100, 80))
    req = build_refine_request(with_img, ents, set(), LABELS, with_image=False)
    assert not req.has_images  # text-only backend
    assert "An image accompanies" not in _texts(req)


def test_ccks_wording_comes_from_its_config() -> None:
    config = load_config(CONFIGS / "ccks.toml", check_plugins=False)
    sample = Sample("c1", ("The", "F-35", "landed"), "The F-35 landed")
    req = build_refine_request(
        sample, (), set(), config.label_set, with_image=False, wording=config.prompts
    )
    text = _texts(req)
    assert "military news" in text and "gun, air base, soldier" in text
    assert "vehicle, aircraft, vessel, weapon, location, other" in text
    assert "(none)" in text


def test_without_prompts_table_the_wording_is_generic() -> None:
    labels = LabelSet({"vehicle": "a named vehicle", "aircraft": "a named aircraft"})
    config = load_config(CONFIGS / "ccks.toml", ["prompts={}"], check_plugins=False)
    assert config.prompts == DEFAULT_WORDING
    sample = Sample("c1", ("The", "F-35", "landed"), "The F-35 landed")
    text = _texts(build_refine_request(sample, (), set(), labels, with_image=False))
    assert f"named entities in {DEFAULT_WORDING.domain}." in text
    assert DEFAULT_WORDING.generic_examples in text
    assert "military" not in text and "tweets" not in text  # no domain guessed from labels


def test_prompts_table_is_validated_at_load_time() -> None:
    from refineg_core.errors import ConfigError as Err

    with pytest.raises(Err) as err:
        load_config(CONFIGS / "ccks.toml", ["prompts.domian=x"], check_plugins=False)
    assert "prompts.domian" in str(err.value)
    with pytest.raises(pydantic.ValidationError):
        PromptWording(domain="")


def test_wording_reaches_the_ground_system_prompt() -> None:
    words = PromptWording(domain="museum labels", generic_examples="vase")
    query = Sample("q", ("Obama",), "Obama")
    req = build_ground_request(
        query, (Entity(0, 1, "PER", "Obama"),), [], LABELS, PixelCodec(), wording=words
    )
    assert "Each text below comes from museum labels with an image" in req.messages[0].parts[0].text


def test_user_template_overrides_default() -> None:
    template = "Types: $labels\nSentence: $text\nCands:\n$candidates\nPrice: $$5"
    settings = RefineSettings(prompt=template)
    sample = Sample("s", ("Obama",), "Obama")
    ents = (Entity(0, 1, "PER", "Obama", source="tagger", uncertainty=0.3),)
    req = build_refine_request(
        sample, ents, set(), LABELS, with_image=False, template=settings.prompt
    )
    assert _texts(req) == (
        "Types: PER, LOC, ORG, OTHER\nSentence: Obama\nCands:\n"
        '- {"name": "Obama", "type": "PER"} uncertainty=0.30 (confident)\nPrice: $5'
    )


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("$text $candidates $typo", "unknown placeholders ['$typo']"),
        ("$text only", "must use ['$candidates']"),
        ("$text $candidates costs $5", "invalid '$'"),
    ],
)
def test_bad_refine_template_is_a_config_error(template: str, message: str) -> None:
    with pytest.raises(pydantic.ValidationError) as info:
        RefineSettings(prompt=template)
    assert message in str(info.value) and "prompt" in str(info.value)
    with pytest.raises(ConfigError) as located:
        check_template(template, REFINE_FIELDS, ("text", "candidates"), where="refine.prompt")
    assert str(located.value).startswith("refine.prompt: ")


def test_settings_reject_unknown_keys() -> None:
    with pytest.raises(pydantic.ValidationError):
        RefineSettings(temprature=0.3)
    with pytest.raises(pydantic.ValidationError):
        GroundSettings(query_prompt="$text $entities $boxes")


def _boxed_sample(sid: str, folder: Path, size: tuple[int, int], box: Box, seed: int) -> Sample:
    base = Sample(
        sid,
        ("Obama", "in", "Paris"),
        "Obama in Paris",
        ImageRef(sid, None, *size),
        (Entity(0, 1, "PER", "Obama", boxes=(box,)), Entity(2, 3, "LOC", "Paris")),
    )
    return with_image(base, folder, seed)


@pytest.mark.parametrize(
    "codec", [PixelCodec(), Qwen25VLCodec(), Qwen2VLCodec()], ids=lambda c: c.name
)
def test_ground_request_demos_in_model_frame(tmp_path: Path, codec) -> None:
    demos = [
        _boxed_sample("d1", tmp_path, (641, 427), Box(10.4, 20.2, 300.7, 400.1), 1),
        _boxed_sample("d2", tmp_path, (333, 999), Box(0, 0, 333, 500), 2),
    ]
    query = Sample("q", ("Obama", "speaks"), "Obama speaks", ImageRef("q", None, 777, 555))
    query = with_image(query, tmp_path, 3)
    ents = (Entity(0, 1, "PER", "Obama", source="tagger"),)
    req = build_ground_request(query, ents, demos, LABELS, codec, max_tokens=500)
    roles = [m.role for m in req.messages]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user"]
    assert [p.path for p in req.images] == [
        demos[0].image.path,
        demos[1].image.path,
        query.image.path,
    ]
    system = req.messages[0].parts[0].text
    assert "[] when the entity is not visible" in system and "One or more boxes" in system
    assert ("0-1000 grid" in system) == isinstance(codec, Qwen2VLCodec)
    assert f"Each box is {codec.box_format()}." in system  # the frame's own sentence
    for demo, msg, ans in (
        (demos[0], req.messages[1], req.messages[2]),
        (demos[1], req.messages[3], req.messages[4]),
    ):
        w, h = codec.model_size(demo.image.size)
        assert f"Image size: {w} x {h}" in msg.parts[1].text
        gold = json.loads(ans.parts[0].text)
        assert gold[0]["entity"] == "Obama" and gold[1] == {
            "entity": "Paris",
            "type": "LOC",
            "boxes": [],
        }
        [coded] = gold[0]["boxes"]
        assert coded == codec.encode(demo.entities[0].boxes[0], demo.image.size)
        back = codec.decode(coded, demo.image.size)
        assert back.iou(demo.entities[0].boxes[0]) > 0.97
    last = req.messages[-1].parts[1].text
    assert "Obama speaks" in last and '[{"entity": "Obama", "type": "PER"}]' in last
    assert req.purpose == "ground" and req.max_tokens == 500


def test_ground_query_template_override(tmp_path: Path) -> None:
    settings = GroundSettings(query_prompt="T=$text E=$entities", system_prompt="Types $labels")
    query = Sample("q", ("Obama",), "Obama")
    ents = (Entity(0, 1, "PER", "Obama"),)
    req = build_ground_request(
        query,
        ents,
        [],
        LABELS,
        PixelCodec(),
        system_template=settings.system_prompt,
        query_template=settings.query_prompt,
    )
    assert req.messages[0].parts[0].text == "Types PER, LOC, ORG, OTHER"
    assert req.messages[1].parts[0].text == 'T=Obama E=[{"entity": "Obama", "type": "PER"}]'


def test_stage_requests_carry_their_answer_schema():
    from refineg_frames.generic import PixelCodec
    from refineg_stages.prompts import build_ground_request, build_refine_request

    from refineg_core.chat import ChatRequest
    from refineg_core.labels import LabelSet
    from refineg_core.types import Entity, Sample

    labels = LabelSet({"PER": "a person", "LOC": "a place"})
    sample = Sample("s", ("Obama",), "Obama", entities=(Entity(0, 1, "PER", "Obama"),))
    refine = build_refine_request(sample, sample.entities, set(), labels, with_image=False)
    assert refine.answer_schema["type"] == "array"
    item = refine.answer_schema["items"]
    assert item["properties"]["type"] == {"enum": ["PER", "LOC"]}
    assert item["required"] == ["name", "type"]
    ground = build_ground_request(sample, sample.entities, [], labels, PixelCodec())
    boxes = ground.answer_schema["items"]["properties"]["boxes"]
    assert boxes["items"]["minItems"] == boxes["items"]["maxItems"] == 4
    # the schema is part of what is asked: it changes the cache key
    bare = ChatRequest(refine.messages, purpose="refine")
    assert bare.fingerprint() != refine.fingerprint()
