"""Images as the model will see them: resized to the codec's size, sent as data URLs.

Demonstration images repeat across many queries, so encoded images are kept in
a small LRU keyed by file identity and target size.
"""

from __future__ import annotations

import base64
import functools
import io
from pathlib import Path

from PIL import Image

from refineg_core.boxcodecs import BoxCodec
from refineg_core.chat import ImagePart
from refineg_core.errors import SampleImageError


def image_size(part: ImagePart) -> tuple[int, int]:
    """The original (width, height): the declared size when given, else read from the file.

    The declared size wins because the stage encoded demonstration boxes in it;
    the model's frame must be derived from the same numbers.
    """
    if part.size is not None:
        return part.size
    try:
        with Image.open(part.path) as img:
            return img.size
    except Exception as exc:  # Pillow raises many types on bad files: the sample's own fault
        raise SampleImageError(f"cannot read image {part.path}: {exc}") from exc


@functools.lru_cache(maxsize=256)
def _encode_cached(
    path: str, mtime_ns: int, file_size: int, target: tuple[int, int], fmt: str, quality: int
) -> str:
    with Image.open(path) as img:
        img = img.convert("RGB")
        if img.size != target:
            img = img.resize(target, Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        if fmt == "png":
            img.save(buf, format="PNG")
        else:
            img.save(buf, format="JPEG", quality=quality)
    mime = "image/png" if fmt == "png" else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def image_data_url(part: ImagePart, codec: BoxCodec, fmt: str = "jpeg", quality: int = 90) -> str:
    """Load, resize to ``codec.model_size(original)`` and encode one image part."""
    path = Path(part.path)
    try:
        st = path.stat()
    except OSError as exc:
        raise SampleImageError(f"image not found: {path}") from exc
    target = codec.model_size(image_size(part))
    try:
        return _encode_cached(str(path), st.st_mtime_ns, st.st_size, target, fmt, quality)
    except Exception as exc:  # a truncated JPEG has a good header and fails here
        raise SampleImageError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from exc
