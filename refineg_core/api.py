"""The Python API: ``refineg.load(...)`` returns the same ``Pipeline`` the CLI uses.

import refineg
pipe = refineg.load("runs/twitter-gmner")        # a run directory or a config
doc = pipe("Obama visits Paris", image="photo.jpg")
for e in doc.entities:
    print(e.text, e.type, e.uncertainty, e.source, e.boxes)
"""

from __future__ import annotations

import json
from pathlib import Path

from refineg_core.config import config_from_dict, load_config
from refineg_core.errors import ConfigError
from refineg_core.formats.images import image_size
from refineg_core.labels import tokenize
from refineg_core.pipeline.orchestrator import Pipeline
from refineg_core.types import ImageRef, Sample
from refineg_core.validity import check_sample


def load(path: str | Path, *, overrides: list[str] | None = None) -> Pipeline:
    """A pipeline from a TOML config, or from a run directory (its ``config.json``).

    A run directory brings its trained tagger; its data files need not exist any
    more (only grounding demonstrations use the pool, when it is there).
    """
    path = Path(path)
    if path.is_dir():
        stored = path / "config.json"
        if not stored.is_file():
            raise ConfigError("not a run directory (no config.json)", where=str(path))
        raw = json.loads(stored.read_text(encoding="utf-8"))
        from refineg_core.config import apply_overrides

        config = config_from_dict(apply_overrides(raw, overrides or []), check_paths=False)
        config.run_dir = path
        return Pipeline(config)
    return Pipeline(load_config(path, overrides, check_paths=False))


def as_sample(text: str | Sample, image: str | Path | None, index: int) -> Sample:
    """A post as the pipeline's Sample (tokenised text, image with its size).

    A Sample the run's output writers could not write (a token holding a tab...)
    is refused here, as the file readers refuse it (``refineg_core.validity``).
    """
    if isinstance(text, Sample):
        return check_sample(text, where=f"texts[{index}]")
    ref = None
    if image is not None:
        image = Path(image)
        size = image_size(image) if image.is_file() else None
        ref = ImageRef(image.stem, image, *(size or (None, None)))
    return check_sample(
        Sample(f"doc-{index}", tuple(tokenize(text)), text, ref), where=f"texts[{index}]"
    )
