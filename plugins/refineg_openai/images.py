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


def _prepare(path: str, target: tuple[int, int], fmt: str, quality: int) -> str:
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
