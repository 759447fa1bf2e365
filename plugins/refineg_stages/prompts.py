"""Prompt templates for the refinement and grounding stages, and the requests they build.

Templates are ``string.Template`` strings (``$name`` placeholders; ``$$`` is a
literal dollar) so JSON braces in a user's template need no escaping. A user
overrides them in the config (``[refine] prompt``, ``[ground] system_prompt``
and ``[ground] query_prompt``); unknown placeholders are a config error.

Refinement placeholders (``REFINE_FIELDS``):
  ``$domain`` what the texts are ("social media posts", ...), ``$types`` one
  line per type with its description, ``$labels`` the type names comma
  separated, ``$generic_examples`` generic nouns never to tag, ``$image_note``
  whether an image is attached, ``$text`` the text, ``$candidates`` the
  small model's entities with their uncertainty (one per line).

Grounding system placeholders (``GROUND_SYSTEM_FIELDS``): ``$domain``,
``$types``, ``$labels``, ``$box_format`` (how a box is written in this
backend's frame, completing "Each box is ...").
Grounding query placeholders (``GROUND_QUERY_FIELDS``, used for every
demonstration and the query alike): ``$text``, ``$entities`` (a JSON list of
``{entity, type}``), ``$size`` ("W x H", the image as the model sees it).

The defaults are domain-neutral. ``$domain`` and ``$generic_examples`` come
from the config's ``[prompts]`` table (``PromptWording``), the type
descriptions from ``[labels]``, and ``$box_format`` from the backend's box
frame (``BoxCodec.box_format``), so no dataset or model wording lives here.
"""

from __future__ import annotations

import json
import string
from collections.abc import Sequence

from refineg_core.chat import ChatMessage, ChatRequest, ImagePart, Part, TextPart
from refineg_core.formats.images import image_size
from refineg_core.interfaces import BoxCodec
from refineg_core.labels import LabelSet
from refineg_core.stage_settings import (  # noqa: F401  (the template rules, re-exported)
    DEFAULT_WORDING,
    GROUND_QUERY_FIELDS,
    GROUND_SYSTEM_FIELDS,
    REFINE_FIELDS,
    PromptWording,
    check_template,
    template_fields,
    validate_template,
)
from refineg_core.types import Entity, ImageRef, Sample

REFINE_TEMPLATE = """\
You are an expert annotator of named entities in $domain.
Entity types:
$types

Rules:
- Tag only specific named entities of the types above; never tag generic nouns \
such as $generic_examples.
- Each entity name must be copied exactly as it is written in the text.
- Use only these types: $labels.
- A candidate's uncertainty (0 = sure, 1 = guessing) comes from a small model; \
fix uncertain candidates (span or type), drop wrong ones, and add entities it missed.
$image_note
Text: $text

Candidate entities from the small model:
$candidates

Think briefly (a few sentences) about the uncertain candidates and about \
anything missed, then output the final answer as a JSON list of \
{"name": ..., "type": ...} objects covering every entity in the text \
(an empty list [] when there is none)."""

GROUND_SYSTEM_TEMPLATE = """\
Each text below comes from $domain with an image. You find the named entities \
listed with the text in that image.
Entity types:
$types

For each entity you are given, answer with the boxes of the regions of the \
image that show it:
- One or more boxes per entity; use [] when the entity is not visible in the image.
- Each box is $box_format.
- Answer only for the entities given, with their names and types unchanged \
(types are among: $labels).
- Output only a JSON list of {"entity": ..., "type": ..., "boxes": [box, ...]}, \
each box written as above."""

GROUND_QUERY_TEMPLATE = """\
Image size: $size
Text: $text
Entities: $entities"""


def _render(template: str, values: dict[str, str]) -> str:
    return string.Template(template).safe_substitute(values)


def type_lines(labels: LabelSet) -> str:
    return "\n".join(f"- {t}: {d}" if d else f"- {t}" for t, d in labels.descriptions.items())


def _image_part(image: ImageRef | None) -> ImagePart | None:
    """An image part only when the file is really there (never a dangling path)."""
    if image is None or not image.available:
        return None
    assert image.path is not None
    return ImagePart(image.path, image.size)


def original_size(image: ImageRef | None) -> tuple[int, int] | None:
    """The original (width, height): from the ImageRef, else from the file header."""
    if image is None:
        return None
    if image.size is not None:
        return image.size
    if image.available:
        assert image.path is not None
        return image_size(image.path)
    return None


# -- answer schemas (for servers that can follow one: guided decoding) ------------
# A list at the top, like the prompts and demonstrations; a server that wants an
# object there (OpenAI's own) refuses it, and the backend then asks without it.


def refine_answer_schema(labels: LabelSet) -> dict:
    """The refine answer as JSON schema: ``[{"name", "type"}]``, as the prompt asks."""
    item = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "type": {"enum": list(labels.types)}},
        "required": ["name", "type"],
    }
    return {"type": "array", "items": item}


def ground_answer_schema(labels: LabelSet) -> dict:
    """The ground answer as JSON schema: ``[{"entity", "type", "boxes"}]``, as the demos show."""
    box = {"type": "array", "items": {"type": "integer"}, "minItems": 4, "maxItems": 4}
    item = {
        "type": "object",
        "properties": {
            "entity": {"type": "string"},
            "type": {"enum": list(labels.types)},
            "boxes": {"type": "array", "items": box},
        },
        "required": ["entity", "type", "boxes"],
    }
    return {"type": "array", "items": item}


# -- refinement -----------------------------------------------------------------


def candidate_lines(entities: Sequence[Entity], delegated: set[tuple[int, int, str]]) -> str:
    if not entities:
        return "(none)"
    lines = []
    for e in entities:
        u = f"{e.uncertainty:.2f}" if e.uncertainty is not None else "n/a"
        status = "uncertain" if e.key in delegated else "confident"
        lines.append(f"- {json.dumps({'name': e.text, 'type': e.type})} uncertainty={u} ({status})")
    return "\n".join(lines)


def build_refine_request(
    sample: Sample,
    entities: Sequence[Entity],
    delegated: set[tuple[int, int, str]],
    labels: LabelSet,
    *,
    with_image: bool,
    template: str | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    wording: PromptWording | None = None,
) -> ChatRequest:
    """One user turn: the image (when there is one and the backend sees images), then text."""
    words = wording or DEFAULT_WORDING
    image = _image_part(sample.image) if with_image else None
    note = "An image accompanies the text; use it to decide types.\n" if image else ""
    text = _render(
        template or REFINE_TEMPLATE,
        {
            "domain": words.domain,
            "types": type_lines(labels),
            "labels": ", ".join(labels.types),
            "generic_examples": words.generic_examples,
            "image_note": note,
            "text": sample.text,
            "candidates": candidate_lines(entities, delegated),
        },
    )
    parts: list[Part] = [image, TextPart(text)] if image else [TextPart(text)]
    return ChatRequest(
        (ChatMessage("user", tuple(parts)),),
        max_tokens=max_tokens,
        temperature=temperature,
        purpose="refine",
        answer_schema=refine_answer_schema(labels),
    )


# -- grounding ------------------------------------------------------------------


def _size_text(codec: BoxCodec, size: tuple[int, int] | None) -> str:
    if size is None:
        return "unknown"
    w, h = codec.model_size(size)
    return f"{w} x {h}"


def entity_list_json(entities: Sequence[Entity]) -> str:
    seen: list[dict[str, str]] = []
    for e in entities:
        item = {"entity": e.text, "type": e.type}
        if item not in seen:
            seen.append(item)
    return json.dumps(seen, ensure_ascii=False)


def demo_answer_json(sample: Sample, codec: BoxCodec, size: tuple[int, int]) -> str:
    """The gold answer of a demonstration, boxes in the model's frame."""
    merged: dict[tuple[str, str], list[list[float]]] = {}
    for e in sample.entities:
        boxes = merged.setdefault((e.text, e.type), [])
        for b in e.box_list:
            coded = codec.encode(b, size)
            if coded not in boxes:
                boxes.append(coded)
    answer = [{"entity": n, "type": t, "boxes": b} for (n, t), b in merged.items()]
    return json.dumps(answer, ensure_ascii=False)


def _turn(
    sample: Sample, entities: Sequence[Entity], codec: BoxCodec, template: str
) -> ChatMessage:
    image = _image_part(sample.image)
    size = original_size(sample.image)
    text = _render(
        template,
        {
            "text": sample.text,
            "entities": entity_list_json(entities),
            "size": _size_text(codec, size),
        },
    )
    parts: list[Part] = [image, TextPart(text)] if image else [TextPart(text)]
    return ChatMessage("user", tuple(parts))


def build_ground_request(
    query: Sample,
    entities: Sequence[Entity],
    demos: Sequence[Sample],
    labels: LabelSet,
    codec: BoxCodec,
    *,
    system_template: str | None = None,
    query_template: str | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    wording: PromptWording | None = None,
) -> ChatRequest:
    """System rules, then one user/assistant pair per demonstration, then the query.

    Demonstrations need an available image and a known size (their gold boxes
    are encoded into the model's frame); the caller filters them.
    """
    words = wording or DEFAULT_WORDING
    system = _render(
        system_template or GROUND_SYSTEM_TEMPLATE,
        {
            "domain": words.domain,
            "types": type_lines(labels),
            "labels": ", ".join(labels.types),
            "box_format": codec.box_format(),
        },
    )
    qt = query_template or GROUND_QUERY_TEMPLATE
    messages = [ChatMessage.text("system", system)]
    for demo in demos:
        size = original_size(demo.image)
        assert size is not None, "demonstrations need a known image size"
        messages.append(_turn(demo, demo.entities, codec, qt))
        messages.append(ChatMessage.text("assistant", demo_answer_json(demo, codec, size)))
    messages.append(_turn(query, entities, codec, qt))
    return ChatRequest(
        tuple(messages),
        max_tokens=max_tokens,
        temperature=temperature,
        purpose="ground",
        answer_schema=ground_answer_schema(labels),
    )
