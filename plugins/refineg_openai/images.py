"""Images as the model will see them: resized to the codec's size, sent as data URLs.

Demonstration images repeat across many queries, so encoded images are kept in
an LRU keyed by file identity and target size (the frame's), bounded by bytes:
each demonstration image is prepared once per run and frame size. Why bytes,
not entries: with a demonstration pool of 2,000 tweets a 256-entry cache
evicted most images before their next use, and preparing one (decode, resize
to the frame, JPEG, base64) costs 15-130 ms of CPU -- more than the client
spends on the rest of a request.

With ``image_cache_dir`` set (the backend's option), prepared images are also
kept on disk (``DiskImages``), shared by runs: a demonstration pool that is the
same from run to run is then prepared once, not once per run (in the ground
stage's k = 3 setting, ~1,000 of its ~1,650 preparations per run were
demonstration images; benchmarks/pages/speed.md).
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from refineg_core.chat import ImagePart
from refineg_core.errors import SampleImageError
from refineg_core.interfaces import BoxCodec
from refineg_core.runstore import atomic_write

log = logging.getLogger(__name__)


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


def _original_will_do(
    img: Image.Image,
    target: tuple[int, int],
    fmt: str,
    model_size: Callable[[tuple[int, int]], tuple],
) -> bool:
    """Whether the original file can go instead of a copy resized to ``target``, for a
    frame whose model resizes every image itself by the rule that gave ``target``
    (``resized_by_model``, e.g. Qwen's ``smart_resize``; the size it returns is a
    fixed point, so a resized copy is not resized again, and an original becomes
    that same size on the server). Conditions:

    * ``model_size`` of the file's own size is ``target`` (a declared size that
      differs from the file's decides the frame, and the original would land
      elsewhere);
    * a near size (the grid's rounding, each side within ``NEAR``): a larger
      reduction is still done here, so the upload stays the size the model sees;
    * a JPEG, or a PNG when PNG was asked for (a PNG photo is several times the
      bytes of the JPEG asked for), RGB or grey, upright (a server that honours
      the EXIF orientation would turn it).

    Why (issue 20): resizing by a few pixels and re-encoding cost ~3.5 ms of CPU per
    image, most of what the ground stage's ``k = 3`` spends on its ~1,650 images,
    with the GIL held by the JPEG encoder; the model then gets the original through
    its own processor's resize instead of our bilinear copy of a second JPEG
    generation. The box frame is ``target`` either way.
    """
    return (
        model_size(img.size) == target
        and (img.format == "JPEG" or (img.format == "PNG" and fmt == "png"))
        and img.mode in ("RGB", "L")
        and all(abs(t - s) <= NEAR * s for s, t in zip(img.size, target, strict=True))
        and img.getexif().get(_ORIENTATION, 1) == 1
    )


def _verified_original(img: Image.Image, path: str) -> bytes:
    """The file's bytes, after decoding it (a JPEG at 1/8 scale in the DCT domain,
    which still reads every entropy-coded block): a truncated or damaged file fails
    here, located, as it would when re-encoded, instead of reaching the server."""
    if img.format == "JPEG":
        img.draft(img.mode, (max(1, img.size[0] // 8), max(1, img.size[1] // 8)))
    img.load()
    return Path(path).read_bytes()


def _prepare(
    path: str,
    target: tuple[int, int],
    fmt: str,
    quality: int,
    model_size: Callable[[tuple[int, int]], tuple] | None = None,
) -> bytes:
    """The file's bytes as the model will get them (at ``target``, in ``fmt``; or the
    original file when the model resizes images itself by ``model_size`` and
    ``_original_will_do`` says the original becomes the same ``target`` there)."""
    with Image.open(path) as img:
        if _as_is(img, target, fmt):
            return Path(path).read_bytes()
        if model_size is not None and _original_will_do(img, target, fmt, model_size):
            return _verified_original(img, path)
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
        return buf.getvalue()


def _data_url(data: bytes, fmt: str) -> str:
    """The data URL; its type read from the bytes (an original sent as it is keeps its
    own format, whatever ``fmt`` asked of re-encoded images)."""
    if data.startswith(b"\x89PNG"):
        mime = "image/png"
    elif data.startswith(b"\xff\xd8"):
        mime = "image/jpeg"
    else:
        mime = "image/png" if fmt == "png" else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


#: Bump when preparation changes (filters, pass-through rules): older files on disk
#: are then never read again (they age out under the byte bound).
PREP_VERSION = 2  # 2: originals sent as they are for frames resized by the model
_DIGEST = 32  # sha256 of the image bytes, appended to each file


class DiskImages:
    """Prepared images on disk under ``folder``, shared by runs and processes.

    One file per (file version, target size, format, quality), named by a hash of
    that key; each file is the image bytes followed by their SHA-256, checked on
    every read, so a damaged or truncated file is dropped and prepared again,
    never sent. Files are written atomically (temp file, then rename), so two
    runs sharing the folder never see half a file. Bounded by ``max_bytes``: after
    every ``max_bytes / 8`` written, the least recently written files go until the
    folder holds 80% of the bound.
    """

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = Path(folder).expanduser()
        self.max_bytes = max_bytes
        self._written = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def _path(self, key: tuple) -> Path:
        digest = hashlib.sha256(repr((PREP_VERSION, key)).encode()).hexdigest()
        return self.folder / digest[:2] / digest

    def get(self, key: tuple) -> bytes | None:
        path = self._path(key)
        try:
            blob = path.read_bytes()
        except OSError:
            with self._lock:
                self.misses += 1
            return None
        data, digest = blob[:-_DIGEST], blob[-_DIGEST:]
        if len(blob) <= _DIGEST or hashlib.sha256(data).digest() != digest:
            log.warning("prepared image %s is damaged; preparing it again", path)
            path.unlink(missing_ok=True)
            with self._lock:
                self.misses += 1
            return None
        with self._lock:
            self.hits += 1
        return data

    def put(self, key: tuple, data: bytes) -> None:
        """Store ``data``; a folder that cannot be written is logged, never fatal."""
        path = self._path(key)
        try:
            with atomic_write(path, binary=True) as fh:
                fh.write(data + hashlib.sha256(data).digest())
        except OSError as exc:
            log.warning("cannot keep a prepared image under %s: %s", self.folder, exc)
            return
        with self._lock:
            self._written += len(data)
            due = self._written >= self.max_bytes / 8
            if due:
                self._written = 0
        if due:
            self.trim()

    def trim(self) -> None:
        """Delete the least recently written files until 80% of the bound is left."""
        files = []
        for f in self.folder.glob("??/*"):
            try:
                st = f.stat()
            except OSError:
                continue
            files.append((st.st_mtime_ns, st.st_size, f))
        total = sum(size for _, size, _ in files)
        if total <= self.max_bytes:
            return
        for _, size, f in sorted(files):
            if total <= 0.8 * self.max_bytes:
                break
            f.unlink(missing_ok=True)
            total -= size


def _encode_cached(
    path: str,
    mtime_ns: int,
    file_size: int,
    target: tuple[int, int],
    fmt: str,
    quality: int,
    disk: DiskImages | None = None,
    resizer: tuple[str, Callable[[tuple[int, int]], tuple]] | None = None,
) -> str:
    """The data URL of one file version at one target size (prepared on a miss of
    the memory cache and of ``disk``). ``resizer``: (the frame's class and options,
    its ``model_size``) when the model resizes images itself (originals may go)."""
    key = (path, mtime_ns, file_size, target, fmt, quality, resizer and resizer[0])
    url = _CACHE.get(key)
    if url is None:
        data = disk.get(key) if disk is not None else None
        if data is None:
            data = _prepare(path, target, fmt, quality, resizer and resizer[1])
            if disk is not None:
                disk.put(key, data)
        url = _data_url(data, fmt)
        _CACHE.put(key, url)
    return url


_encode_cached.cache_clear = _CACHE.cache_clear  # type: ignore[attr-defined]


def image_data_url(
    part: ImagePart,
    codec: BoxCodec,
    fmt: str = "jpeg",
    quality: int = 90,
    disk: DiskImages | None = None,
) -> str:
    """Load, resize to ``codec.model_size(original)`` and encode one image part (or
    send the verified original, when the codec's model resizes images itself and
    the original is near that size: ``_original_will_do``)."""
    path = Path(part.path)
    try:
        st = path.stat()
    except OSError as exc:
        raise SampleImageError(f"image not found: {path}") from exc
    target = codec.model_size(image_size(part))
    try:
        return _encode_cached(
            str(path),
            st.st_mtime_ns,
            st.st_size,
            target,
            fmt,
            quality,
            disk,
            (f"{type(codec).__qualname__}{codec.options!r}", codec.model_size)
            if getattr(codec, "resized_by_model", False)
            else None,
        )
    except Exception as exc:  # a truncated JPEG has a good header and fails here
        raise SampleImageError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from exc
