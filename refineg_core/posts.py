"""A user's post (text, optional image file) as the pipeline's ``Sample``.

The Python API (``pipe("Obama visits Paris", image="photo.jpg")``) takes posts
as plain text; this is the one place that turns them into samples, so the API
module and the pipeline it returns do not import each other.
"""

from __future__ import annotations

from pathlib import Path

from refineg_core.formats.images import image_size
from refineg_core.labels import tokenize
from refineg_core.types import ImageRef, Sample


def as_sample(text: str | Sample, image: str | Path | None, index: int) -> Sample:
    """A post as the pipeline's Sample (tokenised text, image with its size)."""
    if isinstance(text, Sample):
        return text
    ref = None
    if image is not None:
        image = Path(image)
        size = image_size(image) if image.is_file() else None
        ref = ImageRef(image.stem, image, *(size or (None, None)))
    return Sample(f"doc-{index}", tuple(tokenize(text)), text, ref)
