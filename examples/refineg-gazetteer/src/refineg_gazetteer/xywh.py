"""A box frame for models that answer ``[x, y, width, height]`` as fractions of the image.

Written only against the contract ``refineg.plugin.BoxCodec``: the image is
sent as is (or downscaled to ``max_side``), and since every number is a
fraction of a side, the answer does not depend on the size it was sent at.
"""

from __future__ import annotations

from collections.abc import Sequence

import pydantic

from refineg.plugin import Box, BoxCodec, PluginOptions


class XywhOptions(PluginOptions):
    #: Downscale the image so its longest side is at most this (None: send as is).
    max_side: int | None = pydantic.Field(None, ge=1)
    #: Decimals written in demonstrations (4: a tenth of a pixel on a 1000 px image).
    decimals: int = pydantic.Field(4, ge=1, le=8)


class XywhFrame(BoxCodec):
    """``[x, y, w, h]``: top-left corner and size, each a fraction 0..1 of the image side."""

    name = "xywh"
    Options = XywhOptions
    options: XywhOptions

    def model_size(self, original: tuple[int, int]) -> tuple[int, int]:
        w, h = original
        cap = self.options.max_side
        if cap is None or max(w, h) <= cap:
            return original
        s = cap / max(w, h)
        return (max(1, round(w * s)), max(1, round(h * s)))

    def encode(self, box: Box, original: tuple[int, int]) -> list[float]:
        w, h = original
        d = self.options.decimals
        return [
            round(box.x1 / w, d),
            round(box.y1 / h, d),
            round((box.x2 - box.x1) / w, d),
            round((box.y2 - box.y1) / h, d),
        ]

    def decode_raw(self, coords: Sequence[float], original: tuple[int, int]) -> tuple[float, ...]:
        x, y, bw, bh = coords
        if bw <= 0 or bh <= 0:
            raise ValueError("a box needs a positive width and height")
        w, h = original
        return (x * w, y * h, (x + bw) * w, (y + bh) * h)

    def box_format(self) -> str:
        return (
            "[x, y, width, height]: the top-left corner and the size of the box, each a "
            "decimal fraction of the image side (0.0 to 1.0; 0,0 is the top-left corner)"
        )
