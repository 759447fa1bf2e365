"""Real Twitter-GMNER samples turned into stage inputs, with images made on disk.

The dataset ships no images: ``with_image`` (from ``refineg_stages.testing``,
re-exported here with the other stage helpers) paints one per sample at the
size the sample's XML declares.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import refineg_openai.testing as fake_openai
import tomllib
from refineg_openai.testing import backend_for  # noqa: F401  (re-exported for the tests)
from refineg_stages.prompts import PromptWording
from refineg_stages.testing import (  # noqa: F401  (re-exported for the tests)
    OverlapSelector,
    ScriptedBackend,
    _samples,
    answer,
    first_samples,
    paint_image,
    prediction,
    query_text,
    with_image,
)

from refineg_core.labels import LabelSet
from refineg_core.types import Sample

#: The Twitter-GMNER label table as a config's TOML (one line, for f-strings).
TWITTER_LABELS_TOML = (
    '[labels]\nPER = "person"\nLOC = "location"\nORG = "organisation"\nOTHER = "other named entity"'
)

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


def oracle(gold_by_text):
    """Answer like a perfect MLLM: gold entities for refinement, gold boxes for grounding."""

    def respond(request):
        text = query_text(request.text)
        gold = gold_by_text.get(text)
        if gold is None:
            return fake_openai.ok("[]")
        if "box" in request.text.lower():
            # answer what was asked: gold boxes for a gold entity, [] for any other
            asked = json.loads(request.text.rsplit("Entities: ", 1)[1].split("\n", 1)[0])
            boxes = {(e.text, e.type): e.box_list for e in gold.entities}
            items = [
                {
                    "entity": a["entity"],
                    "type": a["type"],
                    "boxes": [
                        [round(v) for v in b.as_list()]
                        for b in boxes.get((a["entity"], a["type"]), ())
                    ],
                }
                for a in asked
            ]
        else:
            items = [{"name": e.text, "type": e.type} for e in gold.entities]
        return fake_openai.ok("Reasoning: looked at it.\n```json\n" + json.dumps(items) + "\n```")

    return respond


def gazetteer_config(
    root: Path, base_url: str, run_dir: Path, *, refine="auto", ground="auto"
) -> str:
    """A run of the example gazetteer tagger + entropy gate + openai backend on
    ``root``/{train,dev} (Twitter-GMNER files) with images in ``root``/images."""

    def switch(v):
        return json.dumps(v) if isinstance(v, str) else str(v).lower()

    return textwrap.dedent(f'''
        run_dir = "{run_dir}"
        {TWITTER_LABELS_TOML}
        [data.train]
        path = "{root}/train/train.txt"
        [data.predict]
        path = "{root}/dev/dev.txt"
        images_dir = "{root}/images"
        [outputs]
        formats = ["twitter-gmner", "ccks"]
        [stages]
        refine = {switch(refine)}
        ground = {switch(ground)}
        [tagger]
        plugin = "gazetteer"
        [uncertainty.options]
        threshold = 0.4
        [backend]
        plugin = "openai"
        [backend.options]
        base_url = "{base_url}"
        model = "fake-model"
        concurrency = 4
        retries = 0
        timeout = 10
        [ground]
        k = 0
    ''')


def gazetteer_data_dir(tmp_path_factory) -> Path:
    """A module's folder of ``write_gazetteer_data`` tweets (skips without the real data)."""
    import pytest

    from tests.conftest import TWITTER

    if not TWITTER.exists():
        pytest.skip(f"real data not found at {TWITTER}")
    root = tmp_path_factory.mktemp("tw")
    write_gazetteer_data(root, TWITTER)
    return root


def write_gazetteer_data(
    root: Path, twitter: Path, *, n_train: int = 400, n_dev: int = 30
) -> dict[str, Sample]:
    """Real tweets for a fast gazetteer run under ``root``: ``n_train`` train tweets,
    ``n_dev`` dev tweets with entities and painted images at their sizes; the dev gold
    by text."""
    from refineg_formats.twitter import read_twitter_gmner, write_twitter_gmner

    train = read_twitter_gmner(twitter / "train.txt").samples[:n_train]
    dev = [s for s in read_twitter_gmner(twitter / "dev.txt").samples if s.entities][:n_dev]
    write_twitter_gmner(train, root / "train" / "train.txt")
    write_twitter_gmner(dev, root / "dev" / "dev.txt")
    for i, s in enumerate(dev):
        paint_image(root / "images" / f"{s.image.image_id}.jpg", s.image.size or (400, 300), i)
    return {s.text: s for s in dev}


def write_config(tmp_path: Path, text: str, name: str = "c.toml") -> Path:
    """A config file holding ``text`` in ``tmp_path``."""
    cfg = tmp_path / name
    cfg.write_text(text, encoding="utf-8")
    return cfg
