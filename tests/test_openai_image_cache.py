"""The openai backend's prepared-image cache: each image prepared once per file
version and frame size, bounded by bytes (not by a count a large pool outgrows)."""

from __future__ import annotations

from pathlib import Path

import pytest
from refineg_openai import images

from refineg_core.chat import ImagePart
from refineg_core.registry import create_box_frame
from refineg_core.testing.stages import paint_image


@pytest.fixture
def painted(tmp_path) -> list[Path]:
    return [paint_image(tmp_path / f"{i}.jpg", (40 + i % 7, 30 + i % 5), i) for i in range(300)]


@pytest.fixture(autouse=True)
def clean_cache():
    images._CACHE.cache_clear()
    yield
    images._CACHE.cache_clear()


def test_a_pool_larger_than_256_images_is_prepared_once(painted):
    codec = create_box_frame("pixels")
    parts = [ImagePart(p, None) for p in painted]
    first = [images.image_data_url(p, codec) for p in parts]
    assert images._CACHE.misses == 300 and images._CACHE.hits == 0
    again = [images.image_data_url(p, codec) for p in parts]
    assert again == first
    assert images._CACHE.misses == 300 and images._CACHE.hits == 300  # nothing prepared twice
    assert all(u.startswith("data:image/jpeg;base64,") for u in first)


def test_another_frame_size_or_a_changed_file_is_prepared_again(painted):
    part = ImagePart(painted[0], None)
    pixels, qwen = create_box_frame("pixels"), create_box_frame("qwen2.5-vl")
    a = images.image_data_url(part, pixels)
    b = images.image_data_url(part, qwen)
    assert images._CACHE.misses == 2
    assert a != b  # 40x30 is sent as 56x28 in the qwen frame
    paint_image(painted[0], (40, 30), 99)  # rewritten: new mtime/content
    assert images.image_data_url(part, pixels) != a


def test_the_cache_stays_within_its_byte_bound(painted, monkeypatch):
    cache = images._UrlCache(20_000)
    monkeypatch.setattr(images, "_CACHE", cache)
    codec = create_box_frame("pixels")
    for p in painted[:100]:
        images.image_data_url(ImagePart(p, None), codec)
    assert 0 < len(cache) < 100
    assert cache._bytes <= 20_000
    last = images.image_data_url(ImagePart(painted[99], None), codec)
    assert cache.hits == 1 and last.startswith("data:image/jpeg")  # the newest stays
