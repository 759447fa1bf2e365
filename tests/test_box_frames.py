"""Box frames: the resize rule matches transformers, boxes round-trip, bad answers become None.

The built-in frames are the ``refineg_frames`` plugins; they are loaded by name
through the registry exactly as a backend loads them.
"""

from __future__ import annotations

import itertools
import math

import pytest
from refineg_frames.generic import NormalizedCodec, PixelCodec
from refineg_frames.qwen import Qwen2VLCodec, Qwen3VLCodec, Qwen25VLCodec, smart_resize

from refineg_core import registry
from refineg_core.errors import PluginError
from refineg_core.interfaces import BoxCodec
from refineg_core.kinds import group
from refineg_core.registry import create_box_frame
from refineg_core.testing import run_cli
from refineg_core.types import Box

ODD_SIZES = [(333, 517), (1, 2000), (2000, 1), (4000, 3000), (27, 29), (640, 480), (1000, 56)]

CODECS = [
    Qwen25VLCodec(),
    Qwen25VLCodec(min_pixels=256 * 28 * 28, max_pixels=1280 * 28 * 28),
    Qwen2VLCodec(),
    Qwen3VLCodec(),
    NormalizedCodec(scale=1000),
    NormalizedCodec(scale=100, max_side=512),
    PixelCodec(),
    PixelCodec(max_side=1000),
]


def _boxes_for(size: tuple[int, int]) -> list[Box]:
    w, h = size
    return [
        Box(0, 0, w, h),
        Box(w * 0.1, h * 0.2, w * 0.55, h * 0.9),
        Box(
            w * 0.5,
            h * 0.5,
            min(w, w * 0.5 + max(1.0, w * 0.01)),
            min(h, h * 0.5 + max(1.0, h * 0.01)),
        ),
    ]


def test_smart_resize_matches_transformers():
    qwen = pytest.importorskip("transformers.models.qwen2_vl.image_processing_qwen2_vl")
    sizes = [*ODD_SIZES, (1, 100), (50, 50), (12000, 9000), (28, 28), (29, 57), (3000, 17)]
    bounds = [(56 * 56, 28 * 28 * 16384), (256 * 28 * 28, 1280 * 28 * 28), (3136, 1003520)]
    checked = 0
    for (w, h), (lo, hi) in itertools.product(sizes, bounds):
        if max(w, h) / min(w, h) > 200:
            continue  # transformers refuses these; ours still answers (tested below)
        ref_h, ref_w = qwen.smart_resize(h, w, factor=28, min_pixels=lo, max_pixels=hi)
        assert smart_resize(w, h, min_pixels=lo, max_pixels=hi) == (ref_w, ref_h), (w, h, lo, hi)
        checked += 1
    assert checked > 20


@pytest.mark.parametrize("size", ODD_SIZES)
def test_qwen25_model_size_is_a_fixed_point_on_the_28_grid(size):
    codec = Qwen25VLCodec()
    mw, mh = codec.model_size(size)
    assert mw % 28 == 0 and mh % 28 == 0
    assert codec.min_pixels <= mw * mh <= codec.max_pixels
    # sending the resized image must not make the server resize it again
    assert codec.model_size((mw, mh)) == (mw, mh)


def test_max_pixels_bound_shrinks_large_images():
    codec = Qwen25VLCodec(max_pixels=1280 * 28 * 28)
    mw, mh = codec.model_size((4000, 3000))
    assert mw * mh <= 1280 * 28 * 28
    assert abs(mw / mh - 4 / 3) < 0.05


@pytest.mark.parametrize(
    ("codec", "size"),
    list(itertools.product(CODECS, ODD_SIZES)),
    ids=lambda v: getattr(v, "name", str(v)),
)
def test_round_trip(codec, size):
    fw, fh = getattr(codec, "frame_size", codec.model_size)(size)
    # one unit of the model's frame, in original pixels: the rounding error bound
    # (half a unit, or one where a sub-unit box is widened to stay valid)
    tol_x, tol_y = size[0] / fw + 1e-9, size[1] / fh + 1e-9
    for box in _boxes_for(size):
        encoded = codec.encode(box, size)
        assert all(isinstance(v, int) for v in encoded)
        decoded = codec.decode(encoded, size)
        assert decoded is not None, (box, encoded)
        for a, b, tol in zip(
            box.as_list(), decoded.as_list(), (tol_x, tol_y, tol_x, tol_y), strict=True
        ):
            assert abs(a - b) <= tol, (codec.name, size, box, encoded, decoded)


def test_qwen25_frame_is_pixels_of_the_resized_grid():
    codec = Qwen25VLCodec()
    size = (333, 517)
    mw, mh = codec.model_size(size)  # 336 x 504
    assert (mw, mh) == (336, 504)
    assert codec.encode(Box(0, 0, 333, 517), size) == [0, 0, mw, mh]
    full = codec.decode([0, 0, mw, mh], size)
    assert full == Box(0, 0, 333, 517)


def test_tiny_box_stays_valid_when_encoded():
    codec = PixelCodec()
    assert codec.encode(Box(13.5, 14.5, 14.5, 15.5), (27, 29)) == [14, 15, 15, 16]
    assert codec.encode(Box(26.6, 0, 26.9, 1), (27, 29)) == [26, 0, 27, 1]


def test_qwen2_frame_is_0_1000_whatever_the_size():
    codec = Qwen2VLCodec()
    assert codec.encode(Box(0, 0, 4000, 3000), (4000, 3000)) == [0, 0, 1000, 1000]
    assert codec.decode([250, 500, 750, 1000], (4000, 3000)) == Box(1000, 1500, 3000, 3000)
    mw, mh = codec.model_size((4000, 3000))
    assert mw % 28 == 0 and mh % 28 == 0


def test_extreme_aspect_ratio_still_gets_a_size():
    codec = Qwen25VLCodec()
    mw, mh = codec.model_size((1, 2000))
    assert mw == 28 and mh % 28 == 0 and mw * mh >= codec.min_pixels


@pytest.mark.parametrize(
    "answer",
    [
        None,
        "10, 20, 30, 40",
        [1, 2, 3],
        [1, 2, 3, 4, 5],
        [1, 2, 3, "x"],
        [1, 2, 3, None],
        [True, 2, 30, 40],
        [math.nan, 0, 10, 10],
        [0, 0, math.inf, 10],
        {"x1": 1},
        [40, 40, 10, 10],  # inverted
        [5, 5, 5, 9],  # zero width
        [5000, 5000, 6000, 6000],  # wholly outside the frame
        [-50, -50, -10, -10],
        7,
    ],
)
@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
def test_invalid_answers_become_none(codec, answer):
    assert codec.decode(answer, (333, 517)) is None


def test_unknown_size_gives_none():
    assert Qwen25VLCodec().decode([1, 2, 3, 4], None) is None


def test_partly_outside_box_is_clipped():
    codec = Qwen25VLCodec()
    box = codec.decode([-20, 10, 10_000, 100], (333, 517))
    assert box is not None
    assert box.x1 == 0 and box.x2 == 333 and 0 < box.y1 < box.y2 <= 517


def test_decode_all_counts_invalid():
    boxes, invalid = Qwen2VLCodec().decode_all([[0, 0, 500, 500], "junk", [9, 9, 1, 1]], (200, 100))
    assert boxes == [Box(0, 0, 100, 50)]
    assert invalid == 2


def test_frames_by_name_through_the_registry():
    assert type(create_box_frame("qwen2.5-vl")) is Qwen25VLCodec
    c = create_box_frame("qwen2-vl", {"min_pixels": 3136, "max_pixels": 200_000})
    assert type(c) is Qwen2VLCodec
    assert c.model_size((4000, 3000))[0] * c.model_size((4000, 3000))[1] <= 200_000
    p = create_box_frame("pixels", {"max_side": 1000})
    assert type(p) is PixelCodec and p.model_size((4000, 3000)) == (1000, 750)
    n = create_box_frame("norm1000")
    assert type(n) is NormalizedCodec and n.scale == 1000
    assert create_box_frame("qwen3-vl").factor == 32


def test_frame_errors_name_the_installed_frames_and_the_options():
    with pytest.raises(PluginError) as err:
        create_box_frame("yolo", config_key="backend.options.box_frame")
    assert err.value.where == "backend.options.box_frame"
    for name in ("pixels", "normalized", "qwen2.5-vl", "qwen2-vl", "qwen3-vl"):
        assert name in str(err.value)
    with pytest.raises(PluginError, match=r"min_pixels.*its options: max_side"):
        create_box_frame("pixels", {"min_pixels": 5})
    with pytest.raises(PluginError, match="min_pixels <= max_pixels"):
        create_box_frame("qwen2.5-vl", {"min_pixels": 10, "max_pixels": 5})


def test_plugins_command_lists_box_frames():
    found = {p.name: p for p in registry.installed(group("box_frame"))}
    assert {"pixels", "normalized", "qwen2.5-vl", "qwen2-vl", "qwen3-vl"} <= set(found)
    assert found["qwen2.5-vl"].target == "refineg_frames.qwen:Qwen25VLCodec"
    assert found["qwen2.5-vl"].distribution == "refineg"
    out = run_cli(["plugins"])
    assert out.code == 0
    rows = [line.split() for line in out.stdout.splitlines()]
    assert [group("box_frame"), "qwen2.5-vl", "refineg"] in [r[:3] for r in rows]


def test_only_the_named_frame_module_is_imported():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from refineg_core.registry import create_box_frame\n"
        "create_box_frame('pixels')\n"
        "print('refineg_frames.qwen' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_frame_registered_in_memory_is_selectable():
    class Swapped(PixelCodec):
        """A made-up model that writes [y1, x1, y2, x2]."""

        name = "swapped"

        def encode(self, box, original):
            x1, y1, x2, y2 = super().encode(box, original)
            return [y1, x1, y2, x2]

        def decode_raw(self, coords, original):
            y1, x1, y2, x2 = coords
            return super().decode_raw([x1, y1, x2, y2], original)

        def box_format(self):
            return "[y1, x1, y2, x2]: pixels, rows first"

    with registry.registered("box_frame", "swapped", Swapped):
        frame = create_box_frame("swapped", {"max_side": 100})
        assert isinstance(frame, BoxCodec)
        assert frame.decode([10, 20, 30, 40], (200, 100)) == Box(40, 20, 80, 60)
    with pytest.raises(PluginError, match="not installed"):
        create_box_frame("swapped")
