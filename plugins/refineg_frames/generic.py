"""Frames that need no model knowledge: pixels as sent, and a fixed normalised grid."""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence

import pydantic

from refineg_core.interfaces import BoxCodec, PluginOptions
from refineg_core.types import Box


def round_box(x1: float, y1: float, x2: float, y2: float, frame: tuple[float, float]) -> list[int]:
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


def downscaled(original: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """The size an image is sent at when its longest side is capped (never upscaled)."""
    w, h = original
    if max_side is None or max(w, h) <= max_side:
        return original
    s = max_side / max(w, h)
    return (max(1, round(w * s)), max(1, round(h * s)))


#: How a frame in pixels of the image as sent asks the model to write a box.
PIXEL_BOX_FORMAT = (
    "[x1, y1, x2, y2]: integer pixel coordinates of the image as you see it "
    "(0,0 is the top-left corner; the size is given with each image)"
)


class ScaledFrame(BoxCodec):
    """A frame that is the original scaled per axis to ``frame_size``; corners as integers."""

    @abc.abstractmethod
    def frame_size(self, original: tuple[int, int]) -> tuple[float, float]:
        """The (width, height) of the coordinate frame the model answers in."""

    def encode(self, box: Box, original: tuple[int, int]) -> list[float]:
        fw, fh = self.frame_size(original)
        sx, sy = fw / original[0], fh / original[1]
        return round_box(box.x1 * sx, box.y1 * sy, box.x2 * sx, box.y2 * sy, (fw, fh))  # type: ignore[return-value]

    def decode_raw(self, coords: Sequence[float], original: tuple[int, int]) -> tuple[float, ...]:
        fw, fh = self.frame_size(original)
        sx, sy = original[0] / fw, original[1] / fh
        x1, y1, x2, y2 = coords
        return (x1 * sx, y1 * sy, x2 * sx, y2 * sy)


class PixelOptions(PluginOptions):
    #: Downscale the image so its longest side is at most this (None: send as is).
    max_side: int | None = pydantic.Field(None, ge=1)


class PixelCodec(ScaledFrame):
    """Generic backends: pixels of the image as sent, optionally downscaled to ``max_side``."""

    name = "pixels"
    Options = PixelOptions
    options: PixelOptions

    @property
    def max_side(self) -> int | None:
        return self.options.max_side

    def model_size(self, original: tuple[int, int]) -> tuple[int, int]:
        return downscaled(original, self.options.max_side)

    def frame_size(self, original: tuple[int, int]) -> tuple[float, float]:
        return self.model_size(original)

    def box_format(self) -> str:
        return PIXEL_BOX_FORMAT

    def describe(self) -> str:
        return self.name  # max_side is part of a backend's cache identity on its own


class NormalizedOptions(PixelOptions):
    #: The grid runs 0..scale on both axes.
    scale: int = pydantic.Field(1000, ge=1)


class NormalizedCodec(ScaledFrame):
    """A fixed 0..``scale`` grid on both axes, whatever size the image is sent at.

    The image is sent as is (or downscaled to ``max_side``); the answer does not
    depend on that size.
    """

    name = "normalized"
    Options = NormalizedOptions
    options: NormalizedOptions

    @property
    def scale(self) -> int:
        return self.options.scale

    def model_size(self, original: tuple[int, int]) -> tuple[int, int]:
        return downscaled(original, self.options.max_side)

    def frame_size(self, original: tuple[int, int]) -> tuple[float, float]:
        return (float(self.scale), float(self.scale))

    def box_format(self) -> str:
        n = self.scale
        return (
            f"[x1, y1, x2, y2]: integers on a 0-{n} grid over the image "
            f"(0,0 top-left, {n},{n} bottom-right)"
        )

    def describe(self) -> str:
        return f"normalised 0..{self.scale} grid"
