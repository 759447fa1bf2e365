"""Finding a sample's image and its size: a missing, corrupt or bomb image is the
sample's own failure (it runs on its text), and an id never names a file outside
``images_dir``."""

from __future__ import annotations

import warnings as pywarnings
from pathlib import Path

from PIL import Image

from refineg_core.errors import DataError
from refineg_core.formats.paths import child_path
from refineg_core.types import ImageRef

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")
#: Key of a sample's ``meta`` that records why its image is not used.
IMAGE_FAILURE = "image_failure"


def find_image(images_dir: Path | None, image_id: str) -> Path | None:
    """The image file of ``image_id`` inside ``images_dir``; never a path outside it."""
    if images_dir is None:
        return None
    try:
        base = child_path(images_dir, image_id)
    except DataError:
        return None
    for suffix in ("", *IMAGE_SUFFIXES):
        candidate = base.with_name(base.name + suffix)
        if candidate.is_file():
            return candidate
    return None


def check_image(path: Path) -> tuple[tuple[int, int] | None, str | None]:
    """``(size, None)`` for a usable image, ``(None, reason)`` otherwise, from the header
    alone (a decompression bomb is refused before any stage decodes it)."""
    try:
        with pywarnings.catch_warnings():
            pywarnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return None, f"refused as a decompression bomb ({exc})"
    except Exception as exc:  # Pillow raises many exception types on bad files
        return None, f"unreadable or corrupt ({type(exc).__name__}: {exc})"
    limit = Image.MAX_IMAGE_PIXELS
    if width <= 0 or height <= 0:
        return None, f"has an empty size {width}x{height}"
    if limit and width * height > limit:
        return None, f"refused: {width}x{height} pixels exceeds the limit of {limit}"
    return (width, height), None


def image_size(path: Path) -> tuple[int, int] | None:
    """The size from the header only; None for unreadable, corrupt or oversized files."""
    return check_image(path)[0]


def resolve_image(
    images_dir: Path | None,
    image_id: str,
    size: tuple[int, int] | None,
    warnings: list[str],
) -> tuple[ImageRef, str | None]:
    """An ImageRef honest about what is there, plus the image failure (or None).

    No path when the file is missing, unreadable or refused; the failure
    message names the file (or the id) and the reason.
    """
    failure = None
    path = find_image(images_dir, image_id)
    if path is not None:
        real, reason = check_image(path)
        if real is None:
            failure = f"{path}: image {reason}; the sample continues without it"
            path = None
        else:
            size = real
    elif images_dir is not None:
        try:
            child_path(images_dir, image_id)
            failure = f"{images_dir}/{image_id}.*: image missing; the sample continues without it"
        except DataError as exc:
            failure = f"{exc}; the sample continues without an image"
    if failure:
        warnings.append(failure)
    ref = ImageRef(image_id, path, size[0] if size else None, size[1] if size else None)
    return ref, failure
