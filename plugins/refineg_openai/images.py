"""Images as the model will see them: resized to the codec's size, sent as data URLs.

Demonstration images repeat across many queries, so encoded images are kept in
an LRU keyed by file identity and target size (the frame's), bounded by bytes:
each demonstration image is prepared once per run and frame size. Why bytes,
not entries: with a demonstration pool of 2,000 tweets a 256-entry cache
evicted most images before their next use, and preparing one (decode, resize
to the frame, JPEG, base64) costs 15-130 ms of CPU -- more than the client
spends on the rest of a request.
"""

from __future__ import annotations

import base64
import io
import threading
from collections import OrderedDict
from pathlib import Path

from PIL import Image

from refineg_core.chat import ImagePart
from refineg_core.errors import SampleImageError
from refineg_core.interfaces import BoxCodec


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


#: Bytes of data URLs kept (about 1,500-3,000 tweet images at typical sizes).
CACHE_BYTES = 192 * 1024 * 1024


class _UrlCache:
    """A thread-safe LRU of data URLs bounded by their total length."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple, str] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: tuple) -> str | None:
        with self._lock:
            url = self._items.get(key)
            if url is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return url

    def put(self, key: tuple, url: str) -> None:
        with self._lock:
            if key in self._items or len(url) > self.max_bytes:
                return
            self._items[key] = url
            self._bytes += len(url)
            while self._bytes > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self._bytes -= len(old)

    def cache_clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0
            self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._items)


_CACHE = _UrlCache(CACHE_BYTES)


#: A resize that changes neither side by more than this fraction (a frame rounding
#: the size to its patch grid, e.g. Qwen's multiples of 28: 600x800 -> 588x812)
#: uses bilinear instead of bicubic: the filters differ in sharpness only at
#: larger scale changes, and bilinear cost a third less CPU (issue 20).
NEAR = 0.05
#: EXIF orientation: an image tagged with another orientation is re-encoded (a
#: server that honours the tag would otherwise see it rotated against the frame).
_ORIENTATION = 0x0112
_PASS_FORMATS = {"jpeg": "JPEG", "png": "PNG"}


def _filter(size: tuple[int, int], target: tuple[int, int]) -> Image.Resampling:
    near = all(abs(t - s) <= NEAR * s for s, t in zip(size, target, strict=True))
    return Image.Resampling.BILINEAR if near else Image.Resampling.BICUBIC


def _as_is(img: Image.Image, target: tuple[int, int], fmt: str) -> bool:
    """Whether the file can be sent byte for byte: already the target size, in the
    requested format, plain RGB and upright. Why: decoding and re-encoding such a
    file cost ~2 ms of CPU per image (~0.1 ms to read and base64 it), and the
    model gets the original instead of a second JPEG generation."""
    return (
        img.size == target
        and img.format == _PASS_FORMATS.get(fmt)
        and img.mode == "RGB"
        and img.getexif().get(_ORIENTATION, 1) == 1
    )


def _prepare(path: str, target: tuple[int, int], fmt: str, quality: int) -> str:
    mime = "image/png" if fmt == "png" else "image/jpeg"
    with Image.open(path) as img:
        if _as_is(img, target, fmt):
            data = Path(path).read_bytes()
        else:
            if img.format == "JPEG" and 2 * target[0] <= img.size[0]:
                # Let the JPEG decoder scale by 1/2..1/8 (DCT domain) before the resize:
                # a large photo is never decoded at full size to be shrunk.
                img.draft("RGB", target)
            img = img.convert("RGB")
            if img.size != target:
                img = img.resize(target, _filter(img.size, target))
            buf = io.BytesIO()
            if fmt == "png":
                img.save(buf, format="PNG")
            else:
                img.save(buf, format="JPEG", quality=quality)
            data = buf.getvalue()
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _encode_cached(
    path: str, mtime_ns: int, file_size: int, target: tuple[int, int], fmt: str, quality: int
) -> str:
    """The data URL of one file version at one target size (prepared on a miss)."""
    key = (path, mtime_ns, file_size, target, fmt, quality)
    url = _CACHE.get(key)
    if url is None:
        url = _prepare(path, target, fmt, quality)
        _CACHE.put(key, url)
    return url


_encode_cached.cache_clear = _CACHE.cache_clear  # type: ignore[attr-defined]


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
