"""Helpers for stage tests and benchmarks: painted images, tagger-like predictions,
scripted backends and a deterministic selector. (The fake OpenAI server and
``backend_for`` are the openai plugin's: ``refineg_openai.testing``.)

Datasets rarely ship their images, so ``with_image`` paints one per sample (PIL)
at the size the sample declares (480x360 when it declares none).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import attrs
from PIL import Image, ImageDraw

from refineg_core.formats import load_dataset
from refineg_core.interfaces import ContextSelector, MLLMBackend
from refineg_core.types import (
    SOURCE_TAGGER,
    Demonstration,
    GateVerdict,
    ImageRef,
    Sample,
    SampleResult,
)

__all__ = [
    "OverlapSelector",
    "ScriptedBackend",
    "answer",
    "first_samples",
    "paint_image",
    "prediction",
    "query_text",
    "with_image",
]


@cache
def _samples(path: Path) -> tuple[Sample, ...]:
    return load_dataset(path).samples


def first_samples(path: Path, n: int, *, min_entities: int = 1, skip: int = 0) -> list[Sample]:
    """The first ``n`` samples of a dataset file with at least ``min_entities`` entities."""
    picked = [s for s in _samples(Path(path)) if len(s.entities) >= min_entities]
    return picked[skip : skip + n]


def paint_image(path: Path, size: tuple[int, int], seed: int = 0) -> Path:
    """A deterministic picture with a few coloured blocks (something to look at)."""
    w, h = size
    img = Image.new("RGB", size, (40 + seed * 37 % 180, 90, 140))
    draw = ImageDraw.Draw(img)
    for i in range(4):
        x, y = (seed * 53 + i * 97) % max(1, w - 40), (seed * 31 + i * 71) % max(1, h - 40)
        draw.rectangle([x, y, x + w // 4, y + h // 4], fill=((i * 60) % 255, 200 - i * 30, 60))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="JPEG", quality=85)
    return path


def with_image(sample: Sample, folder: Path, seed: int = 0) -> Sample:
    size = sample.image.size if sample.image and sample.image.size else (480, 360)
    image_id = sample.image.image_id if sample.image else sample.id
    path = paint_image(folder / f"{image_id}.jpg", size, seed)
    return attrs.evolve(sample, image=ImageRef(image_id, path, size[0], size[1]))


def prediction(
    sample: Sample,
    *,
    uncertainty: Sequence[float] | None = None,
    tau: float = 0.5,
    missed: float = 0.0,
) -> SampleResult:
    """What the prediction stage hands over: tagger entities plus the gate's decision.

    The gold entities play the tagger's prediction (without their boxes); an
    entity above ``tau`` is delegated.
    """
    us = list(uncertainty) if uncertainty is not None else [0.1] * len(sample.entities)
    ents = tuple(
        attrs.evolve(e, boxes=None, source=SOURCE_TAGGER, uncertainty=u)
        for e, u in zip(sample.entities, us, strict=True)
    )
    delegated = frozenset(e.key for e in ents if (e.uncertainty or 0) > tau)
    gate = GateVerdict(bool(delegated) or missed > tau, missed, delegated)
    return SampleResult(sample, ents, gate=gate)


def query_text(request_text: str) -> str:
    """The text of the query (the last ``Text:`` line of a prompt)."""
    return request_text.rsplit("Text: ", 1)[1].split("\n", 1)[0]


def answer(items: list[dict]) -> str:
    return json.dumps(items)


class ScriptedBackend(MLLMBackend):
    """A backend answering from a callable: for prompt-level tests only."""

    def __init__(self, reply, *, images: bool = True) -> None:
        super().__init__()
        self.reply = reply
        self.requests: list = []
        self._images = images

    @property
    def supports_images(self) -> bool:  # type: ignore[override]
        return self._images

    def complete(self, request):
        from refineg_core.chat import ChatResponse, Usage

        self.requests.append(request)
        return ChatResponse(self.reply(request), Usage(5, 3))


_WORD = re.compile(r"\w+")


class OverlapSelector(ContextSelector):
    """A deterministic selector (word overlap): a real ContextSelector for stage tests."""

    def index(self, pool: Sequence[Sample]) -> None:
        self.pool = list(pool)
        self.calls = 0

    def select(self, query: Sample, k: int) -> list[Demonstration]:
        self.calls += 1
        q = set(_WORD.findall(query.text.lower()))
        scored = []
        for s in self.pool:
            words = set(_WORD.findall(s.text.lower()))
            score = len(q & words) / (len(q | words) or 1)
            scored.append(Demonstration(s, score, {"text": score}))
        scored.sort(key=lambda d: (-d.score, d.sample.id))
        return scored[:k]
