"""The Qwen-VL family's box conventions.

Qwen2-VL / Qwen2.5-VL / Qwen3-VL resize every image with ``smart_resize`` (sides
rounded to the patch grid, pixel count kept within bounds). Qwen2.5-VL answers
in absolute pixels of that resized image; Qwen2-VL and Qwen3-VL on a 0-1000 grid.
"""

from __future__ import annotations

import math

import pydantic

from refineg_core.interfaces import PluginOptions
from refineg_frames.generic import PIXEL_BOX_FORMAT, NormalizedCodec, ScaledFrame

#: Qwen2-VL / Qwen2.5-VL read images in 14 px patches merged 2x2: sides are multiples of 28.
QWEN_FACTOR = 28
#: The bounds Qwen2.5-VL's preprocessor_config.json ships (what vLLM serves by default).
QWEN_MIN_PIXELS = 56 * 56
QWEN_MAX_PIXELS = 28 * 28 * 16384


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


class QwenResizeOptions(PluginOptions):
    """The processor's pixel bounds and patch grid (keep them within the server's own)."""

    min_pixels: int = pydantic.Field(QWEN_MIN_PIXELS, ge=1)
    max_pixels: int = pydantic.Field(QWEN_MAX_PIXELS, ge=1)
    factor: int = pydantic.Field(QWEN_FACTOR, ge=1)

    @pydantic.model_validator(mode="after")
    def _bounds(self) -> QwenResizeOptions:
        if self.min_pixels > self.max_pixels:
            raise ValueError(
                f"need min_pixels <= max_pixels, got {self.min_pixels}, {self.max_pixels}"
            )
        return self


class _QwenResize:
    """Mixin: the image goes at ``smart_resize`` size; bounds readable as attributes."""

    options: QwenResizeOptions
    #: The model's own processor applies ``model_size`` to every image it gets, so an
    #: original near that size may be sent as it is (refineg_openai.images, issue 20).
    resized_by_model = True

    @property
    def min_pixels(self) -> int:
        return self.options.min_pixels

    @property
    def max_pixels(self) -> int:
        return self.options.max_pixels

    @property
    def factor(self) -> int:
        return self.options.factor

    def model_size(self, original: tuple[int, int]) -> tuple[int, int]:
        o = self.options
        return smart_resize(
            *original, factor=o.factor, min_pixels=o.min_pixels, max_pixels=o.max_pixels
        )

    def image_tokens(self, original: tuple[int, int]) -> int:
        """One token per ``factor`` x ``factor`` cell (14-px patches merged 2x2 for
        Qwen2/2.5-VL: 28 px; Qwen3-VL: 32 px) of the resized image."""
        w, h = self.model_size(original)
        return (w // self.factor) * (h // self.factor)


class Qwen25VLCodec(_QwenResize, ScaledFrame):
    """Qwen2.5-VL: absolute pixels of its resized input grid (``smart_resize``)."""

    name = "qwen2.5-vl"
    Options = QwenResizeOptions
    options: QwenResizeOptions

    def frame_size(self, original: tuple[int, int]) -> tuple[float, float]:
        return self.model_size(original)

    def box_format(self) -> str:
        return PIXEL_BOX_FORMAT

    def describe(self) -> str:
        return (
            f"{self.name} (pixels of the {self.factor}-px grid, "
            f"{self.min_pixels}..{self.max_pixels} px)"
        )


class Qwen2VLCodec(_QwenResize, NormalizedCodec):
    """Qwen2-VL: a 0-1000 grid, the image still resized by ``smart_resize``."""

    name = "qwen2-vl"
    Options = QwenResizeOptions
    options: QwenResizeOptions  # type: ignore[assignment]

    @property
    def scale(self) -> int:
        return 1000

    def describe(self) -> str:
        return "qwen2-vl (0..1000 grid, image resized like Qwen2.5-VL)"


class Qwen3Options(QwenResizeOptions):
    """Qwen3-VL: 16 px patches merged 2x2, so sides are multiples of 32."""

    min_pixels: int = pydantic.Field(256 * 256, ge=1)
    max_pixels: int = pydantic.Field(4096 * 4096, ge=1)
    factor: int = pydantic.Field(32, ge=1)


class Qwen3VLCodec(Qwen2VLCodec):
    """Qwen3-VL: a 0-1000 grid; the image on a 32-px grid."""

    name = "qwen3-vl"
    Options = Qwen3Options
    options: Qwen3Options

    def describe(self) -> str:
        return "qwen3-vl (0..1000 grid, image on a 32-px grid)"
