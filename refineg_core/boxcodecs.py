"""Box codecs: the frame a model reads and writes boxes in.

Every MLLM sees a resized image and answers in its own frame (pixels of what it
saw, a 0-1000 grid, ...). A codec maps gold boxes of demonstrations into that
frame and answers back into original-image pixels, clipping and validating on
the way: an invalid answer becomes "no box", never an exception.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from typing import Any

from refineg_core.errors import ConfigError
from refineg_core.types import Box

#: Qwen2-VL / Qwen2.5-VL read images in 14 px patches merged 2x2: sides are multiples of 28.
QWEN_FACTOR = 28
#: The bounds Qwen2.5-VL's preprocessor_config.json ships (what vLLM serves by default).
QWEN_MIN_PIXELS = 56 * 56
QWEN_MAX_PIXELS = 28 * 28 * 16384


class BoxCodec(abc.ABC):
    """Maps between original-image pixels and a model's box frame."""

    name: str = "codec"

    @abc.abstractmethod
    def model_size(self, original: tuple[int, int]) -> tuple[int, int]:
        """The (width, height) the image is sent to the model at."""

    @abc.abstractmethod
    def encode(self, box: Box, original: tuple[int, int]) -> list[int]:
        """Original pixels -> the model's frame (rounded, as a model would write it)."""

    @abc.abstractmethod
    def decode_raw(self, coords: Sequence[float], original: tuple[int, int]) -> tuple[float, ...]:
        """The model's frame -> original pixels, not yet clipped."""

    def decode(self, coords: Any, original: tuple[int, int] | None) -> Box | None:
        """Model answer -> a valid box in original pixels, or None when it is not one.

        ``coords`` is untrusted (parsed from model text): anything that is not
        four finite numbers, or that is empty after clipping, is None.
        """
        if original is None or isinstance(coords, (str, bytes)):
            return None
        try:
            if len(coords) != 4:
                return None
            if any(isinstance(c, bool) for c in coords):
                return None
            values = [float(c) for c in coords]
        except (TypeError, ValueError):
            return None
        if not all(math.isfinite(v) for v in values):
            return None
        try:
            raw = self.decode_raw(values, original)
        except (ArithmeticError, ValueError):
            return None
        return Box.clipped(*raw, original)

    def decode_all(
        self, answers: Sequence[Any], original: tuple[int, int] | None
    ) -> tuple[list[Box], int]:
        """Decode several answered boxes; return the valid ones and how many were invalid."""
        boxes: list[Box] = []
        invalid = 0
        for coords in answers:
            box = self.decode(coords, original)
            if box is None:
                invalid += 1
            else:
                boxes.append(box)
        return boxes, invalid

    def describe(self) -> str:
        return self.name


def round_box(
    x1: float, y1: float, x2: float, y2: float, frame: tuple[float, float]
) -> list[int]:
    """Round a box to whole frame units without letting a tiny box collapse.

    A demonstration box narrower than one unit would otherwise round to
    ``x1 == x2`` and show the model an invalid example.
    """
    out: list[int] = []
    for lo, hi, limit in ((x1, x2, frame[0]), (y1, y2, frame[1])):
        a, b = math.floor(lo + 0.5), math.floor(hi + 0.5)
        if b <= a:
            b = a + 1
            if b > limit:
                a, b = a - 1, a
        out += [a, b]
    return [out[0], out[2], out[1], out[3]]


class PixelCodec(BoxCodec):
    """Generic backends: pixels of the image as sent, optionally downscaled to ``max_side``."""

    name = "pixels"

    def __init__(self, max_side: int | None = None) -> None:
        self.max_side = max_side

    def _scale(self, original: tuple[int, int]) -> float:
        w, h = original
        if self.max_side is None or max(w, h) <= self.max_side:
            return 1.0
        return self.max_side / max(w, h)

    def model_size(self, original: tuple[int, int]) -> tuple[int, int]:
        s = self._scale(original)
        return (max(1, round(original[0] * s)), max(1, round(original[1] * s)))

    def encode(self, box: Box, original: tuple[int, int]) -> list[int]:
        s = self._scale(original)
        x1, y1, x2, y2 = (v * s for v in box.as_list())
        return round_box(x1, y1, x2, y2, self.model_size(original))

    def decode_raw(self, coords: Sequence[float], original: tuple[int, int]) -> tuple[float, ...]:
        s = self._scale(original)
        return tuple(c / s for c in coords)


def smart_resize(
    width: int,
    height: int,
    *,
    factor: int = QWEN_FACTOR,
    min_pixels: int = QWEN_MIN_PIXELS,
    max_pixels: int = QWEN_MAX_PIXELS,
) -> tuple[int, int]:
    """The (width, height) Qwen2-VL / Qwen2.5-VL's image processor resizes to.

    The same rule as ``transformers.models.qwen2_vl.image_processing_qwen2_vl.
    smart_resize`` (round each side to a multiple of ``factor``; scale down to
    ``max_pixels`` or up to ``min_pixels`` keeping the aspect ratio). Two
    deliberate differences: it takes and returns (width, height), as the rest of
    refineg does, and it does not refuse aspect ratios above 200 (transformers
    raises there); the size it returns is a fixed point of the rule, so an image
    sent at that size is not resized again by the server.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return max(factor, w_bar), max(factor, h_bar)


class _ScaledCodec(BoxCodec):
    """A codec whose frame is the original scaled per axis by ``frame / original``."""

    @abc.abstractmethod
    def frame_size(self, original: tuple[int, int]) -> tuple[float, float]:
        """The (width, height) of the coordinate frame the model answers in."""

    def encode(self, box: Box, original: tuple[int, int]) -> list[int]:
        fw, fh = self.frame_size(original)
        sx, sy = fw / original[0], fh / original[1]
        return round_box(box.x1 * sx, box.y1 * sy, box.x2 * sx, box.y2 * sy, (fw, fh))

    def decode_raw(self, coords: Sequence[float], original: tuple[int, int]) -> tuple[float, ...]:
        fw, fh = self.frame_size(original)
        sx, sy = original[0] / fw, original[1] / fh
        x1, y1, x2, y2 = coords
        return (x1 * sx, y1 * sy, x2 * sx, y2 * sy)


class Qwen25VLCodec(_ScaledCodec):
    """Qwen2.5-VL: absolute pixels of its resized input grid (``smart_resize``)."""

    name = "qwen2.5-vl"

    def __init__(
        self,
        min_pixels: int = QWEN_MIN_PIXELS,
        max_pixels: int = QWEN_MAX_PIXELS,
        factor: int = QWEN_FACTOR,
    ) -> None:
        if not (0 < min_pixels <= max_pixels):
            raise ConfigError(f"need 0 < min_pixels <= max_pixels, got {min_pixels}, {max_pixels}")
        self.min_pixels, self.max_pixels, self.factor = min_pixels, max_pixels, factor

    def model_size(self, original: tuple[int, int]) -> tuple[int, int]:
        return smart_resize(
            *original, factor=self.factor, min_pixels=self.min_pixels, max_pixels=self.max_pixels
        )

    def frame_size(self, original: tuple[int, int]) -> tuple[float, float]:
        return self.model_size(original)

    def describe(self) -> str:
        return (
            f"{self.name} (pixels of the {self.factor}-px grid, "
            f"{self.min_pixels}..{self.max_pixels} px)"
        )


class NormalizedCodec(_ScaledCodec):
    """A fixed 0..``scale`` grid on both axes, whatever size the image is sent at.

    The image is sent as is (or downscaled to ``max_side``); the answer does not
    depend on that size.
    """

    name = "normalized"

    def __init__(self, scale: int = 1000, max_side: int | None = None) -> None:
        if scale < 1:
            raise ConfigError(f"a normalised grid needs scale >= 1, got {scale}")
        self.scale = scale
        self._sender = PixelCodec(max_side)

    def model_size(self, original: tuple[int, int]) -> tuple[int, int]:
        return self._sender.model_size(original)

    def frame_size(self, original: tuple[int, int]) -> tuple[float, float]:
        return (float(self.scale), float(self.scale))

    def describe(self) -> str:
        return f"normalised 0..{self.scale} grid"


class Qwen2VLCodec(NormalizedCodec):
    """Qwen2-VL: a 0-1000 grid, the image still resized by ``smart_resize``."""

    name = "qwen2-vl"

    def __init__(
        self,
        min_pixels: int = QWEN_MIN_PIXELS,
        max_pixels: int = QWEN_MAX_PIXELS,
        factor: int = QWEN_FACTOR,
    ) -> None:
        super().__init__(1000)
        self._resize = Qwen25VLCodec(min_pixels, max_pixels, factor)
        self.min_pixels, self.max_pixels, self.factor = min_pixels, max_pixels, factor

    def model_size(self, original: tuple[int, int]) -> tuple[int, int]:
        return self._resize.model_size(original)

    def describe(self) -> str:
        return "qwen2-vl (0..1000 grid, image resized like Qwen2.5-VL)"


class Qwen3VLCodec(Qwen2VLCodec):
    """Qwen3-VL: a 0-1000 grid; 16 px patches merged 2x2, so sides are multiples of 32."""

    name = "qwen3-vl"

    def __init__(
        self, min_pixels: int = 256 * 256, max_pixels: int = 4096 * 4096, factor: int = 32
    ) -> None:
        super().__init__(min_pixels, max_pixels, factor)

    def describe(self) -> str:
        return "qwen3-vl (0..1000 grid, image on a 32-px grid)"


def _pixels(max_side: int | None = None) -> BoxCodec:
    return PixelCodec(max_side)


def _norm1000(max_side: int | None = None) -> BoxCodec:
    return NormalizedCodec(1000, max_side)


#: ``box_frame`` names a user can write in a config, and what they build.
CODECS: dict[str, Any] = {
    "qwen2.5-vl": Qwen25VLCodec,
    "qwen2-vl": Qwen2VLCodec,
    "qwen3-vl": Qwen3VLCodec,
    "pixels": _pixels,
    "norm1000": _norm1000,
    "normalized": NormalizedCodec,
}

_ALIASES = {"qwen25-vl": "qwen2.5-vl", "qwen2_5_vl": "qwen2.5-vl", "qwen2_vl": "qwen2-vl",
            "qwen3_vl": "qwen3-vl", "pixel": "pixels"}


def codec_by_name(name: str, **options: Any) -> BoxCodec:
    """Build a codec from a config name plus options (``min_pixels``, ``max_side``...).

    Options set to None are ignored, so a backend can pass all of its optional
    settings and each codec takes the ones it knows.
    """
    key = _ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in CODECS:
        raise ConfigError(f"unknown box frame {name!r}; known: {', '.join(sorted(CODECS))}")
    factory = CODECS[key]
    given = {k: v for k, v in options.items() if v is not None}
    try:
        return factory(**given)
    except TypeError as exc:
        raise ConfigError(
            f"box frame {key!r} does not take options {sorted(given)}: {exc}"
        ) from None
