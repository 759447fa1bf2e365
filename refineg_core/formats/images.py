"""Finding a sample's image and its size without failing on missing files."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

from refineg_core.types import ImageRef

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")


def find_image(images_dir: Path | None, image_id: str) -> Path | None:
    if images_dir is None:
        return None
    for suffix in ("", *IMAGE_SUFFIXES):
        candidate = images_dir / f"{image_id}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def image_size(path: Path) -> tuple[int, int] | None:
    """Read the size from the header only; None for unreadable or corrupt files."""
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, UnidentifiedImageError, ValueError):
        return None


def resolve_image(
    images_dir: Path | None,
    image_id: str,
    size: tuple[int, int] | None,
    warnings: list[str],
) -> ImageRef:
    """An ImageRef that is honest about what is there: no path when the file is not."""
    path = find_image(images_dir, image_id)
    if path is not None:
        real = image_size(path)
        if real is None:
            warnings.append(f"{path}: image unreadable or corrupt; the sample continues without it")
            path = None
        else:
            size = real
    elif images_dir is not None:
        warnings.append(
            f"{images_dir}/{image_id}.*: image missing; the sample continues without it"
        )
    return ImageRef(
        image_id,
        path,
        size[0] if size else None,
        size[1] if size else None,
    )
