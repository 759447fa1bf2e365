"""Real Twitter-GMNER samples turned into stage inputs, with images made on disk.

The dataset ships no images: ``with_image`` (from ``refineg_core.testing.stages``,
re-exported here with the other stage helpers) paints one per sample at the
size the sample's XML declares.
"""

from __future__ import annotations

from pathlib import Path

import tomllib

from refineg_core.labels import LabelSet
from refineg_core.pipeline.prompts import PromptWording
from refineg_core.testing.stages import (  # noqa: F401  (re-exported for the tests)
    OverlapSelector,
    ScriptedBackend,
    _samples,
    answer,
    backend_for,
    first_samples,
    paint_image,
    prediction,
    query_text,
    with_image,
)
from refineg_core.types import Sample

#: The shipped Twitter-GMNER config: its label descriptions and prompt wording.
TWITTER_CONFIG = tomllib.loads(
    (Path(__file__).resolve().parents[1] / "configs" / "twitter-gmner.toml").read_text("utf-8")
)
LABELS = LabelSet(TWITTER_CONFIG["labels"])
WORDING = PromptWording(**TWITTER_CONFIG["prompts"])


def _dev(twitter_dir: Path) -> tuple[Sample, ...]:
    return _samples(twitter_dir / "dev.txt")


def real_samples(
    twitter_dir: Path, n: int, *, min_entities: int = 1, skip: int = 0
) -> list[Sample]:
    """The first ``n`` dev tweets with at least ``min_entities`` entities (after ``skip``)."""
    return first_samples(twitter_dir / "dev.txt", n, min_entities=min_entities, skip=skip)
