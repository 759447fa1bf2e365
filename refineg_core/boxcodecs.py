"""The box-frame contract: how a model reads and writes boxes.

Every MLLM sees a resized image and answers in its own frame (pixels of what it
saw, a 0-1000 grid, x/y/width/height...). A frame (a ``BoxCodec``) maps gold
boxes of demonstrations into that frame, answers back into original-image
pixels, and says in one sentence how the model should write a box. Decoding
validates on the way: an invalid answer becomes "no box", never an exception.

Frames are plugins (entry-point group ``refineg.box_frames``, loaded by name
through ``refineg_core.registry.create_box_frame``); the built-in ones live in
the ``refineg_frames`` package. The core knows only this contract.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from typing import Any, ClassVar

from refineg_core.interfaces import PluginOptions
from refineg_core.types import Box

#: The entry-point group box frames register under.
BOX_FRAME_GROUP = "refineg.box_frames"


class BoxCodec(abc.ABC):
    """Maps between original-image pixels and a model's box frame.

    A frame author writes ``model_size``, ``encode``, ``decode_raw`` and
    ``box_format``; ``decode``/``decode_all`` validate untrusted answers for them.
    Options a config may set are the nested pydantic ``Options`` model; a frame
    is built as ``Frame(options)`` or, from code, ``Frame(key=value, ...)``.
    """

    #: The name a config selects the frame by (the entry-point name).
    name: ClassVar[str] = "frame"
    Options: ClassVar[type[PluginOptions]] = PluginOptions

    def __init__(self, options: PluginOptions | None = None, **settings: Any) -> None:
        if options is not None and settings:
            raise TypeError("give either an Options instance or keyword settings, not both")
        self.options = options if options is not None else self.Options(**settings)

    @abc.abstractmethod
    def model_size(self, original: tuple[int, int]) -> tuple[int, int]:
        """The (width, height) the image is sent to the model at."""

    @abc.abstractmethod
    def encode(self, box: Box, original: tuple[int, int]) -> list[float]:
        """Original pixels -> the model's frame, written as a model would write it."""

    @abc.abstractmethod
    def decode_raw(self, coords: Sequence[float], original: tuple[int, int]) -> tuple[float, ...]:
        """Four numbers of the model's frame -> (x1, y1, x2, y2) original pixels, unclipped."""

    @abc.abstractmethod
    def box_format(self) -> str:
        """How a box is written, for the prompt's ``$box_format``.

        One phrase completing "Each box is ...", naming the four numbers and
        their frame, e.g. "[x1, y1, x2, y2]: integers on a 0-1000 grid ...".
        """

    def image_tokens(self, original: tuple[int, int]) -> int | None:
        """Tokens the model spends on one image sent at ``model_size(original)``, for
        cost plans; None when the frame does not know its model's image cost."""
        return None

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
        except (TypeError, ValueError, OverflowError):  # OverflowError: a 400-digit int
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
        """The frame and its settings in one line (run summaries, cache identity)."""
        set_ = self.options.model_dump(exclude_defaults=True)
        return self.name + (f" {set_}" if set_ else "")
