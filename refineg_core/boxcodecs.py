"""Box codecs: the frame a model reads and writes boxes in.

Every MLLM sees a resized image and answers in its own frame (pixels of what it
saw, a 0-1000 grid, ...). A codec maps gold boxes of demonstrations into that
frame and answers back into original-image pixels, clipping and validating on
the way: an invalid answer becomes "no box", never an exception.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

from refineg_core.types import Box


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

    def decode(self, coords: Sequence[float], original: tuple[int, int] | None) -> Box | None:
        """Model answer -> a valid box in original pixels, or None when it is not one."""
        if original is None or len(coords) != 4:
            return None
        try:
            values = [float(c) for c in coords]
        except (TypeError, ValueError):
            return None
        return Box.clipped(*self.decode_raw(values, original), original)


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
        return [round(v * s) for v in box.as_list()]

    def decode_raw(self, coords: Sequence[float], original: tuple[int, int]) -> tuple[float, ...]:
        s = self._scale(original)
        return tuple(c / s for c in coords)
