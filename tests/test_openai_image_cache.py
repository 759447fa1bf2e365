"""The openai backend's prepared-image cache: each image prepared once per file
version and frame size, bounded by bytes (not by a count a large pool outgrows)."""

from __future__ import annotations

from pathlib import Path

import pytest
from refineg_openai import images
from refineg_stages.testing import paint_image

from refineg_core.chat import ImagePart
from refineg_core.registry import create_box_frame


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


def _decoded(url: str):
    import base64
    import io

    from PIL import Image

    head, data = url.split(",", 1)
    return head, Image.open(io.BytesIO(base64.b64decode(data)))


def test_an_upright_jpeg_already_at_the_frame_size_is_sent_byte_for_byte(tmp_path):
    path = paint_image(tmp_path / "a.jpg", (64, 48), 3)
    url = images.image_data_url(ImagePart(path, None), create_box_frame("pixels"))
    import base64

    assert url == "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode()


def test_a_rotated_or_png_file_is_re_encoded_at_the_frame_size(tmp_path):
    from PIL import Image

    rotated = tmp_path / "r.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": a server honouring it would turn it
    Image.open(paint_image(tmp_path / "src.jpg", (64, 48), 1)).save(rotated, exif=exif)
    png = tmp_path / "p.png"
    Image.open(paint_image(tmp_path / "src2.jpg", (64, 48), 2)).save(png)
    pixels = create_box_frame("pixels")
    for path in (rotated, png):
        url = images.image_data_url(ImagePart(path, None), pixels)
        head, img = _decoded(url)
        assert head == "data:image/jpeg;base64"
        assert img.format == "JPEG" and img.size == (64, 48)
        assert img.getexif().get(0x0112, 1) == 1
        assert url.split(",", 1)[1] != images.base64.b64encode(path.read_bytes()).decode()


def test_near_and_far_resizes_reach_the_frame_size_exactly(tmp_path):
    from PIL import Image

    qwen = create_box_frame("qwen2.5-vl")
    qwen.resized_by_model = False  # a model fed as given: the near resize is done here
    capped = create_box_frame("pixels", {"max_side": 1000})
    near = paint_image(tmp_path / "near.jpg", (600, 800), 4)  # Qwen: 588 x 812
    far = paint_image(tmp_path / "far.jpg", (4000, 3000), 5)  # capped: 1000 x 750
    for path, size, frame in ((near, (600, 800), qwen), (far, (4000, 3000), capped)):
        _, img = _decoded(images.image_data_url(ImagePart(path, size), frame))
        assert img.size == frame.model_size(size)
    assert images._filter((600, 800), (588, 812)) == Image.Resampling.BILINEAR
    assert images._filter((4000, 3000), (1000, 750)) == Image.Resampling.BICUBIC
    # The picture survives the cheap paths (DCT-domain decode, bilinear): against a
    # full decode and bicubic resize, the mean difference per channel stays small.
    for path, size, frame in ((near, (600, 800), qwen), (far, (4000, 3000), capped)):
        _, got = _decoded(images.image_data_url(ImagePart(path, size), frame))
        reference = Image.open(path).convert("RGB").resize(got.size, Image.Resampling.BICUBIC)
        diff = sum(
            abs(a - b)
            for pa, pb in zip(got.getdata(), reference.getdata(), strict=True)
            for a, b in zip(pa, pb, strict=True)
        ) / (3 * got.size[0] * got.size[1])
        assert diff < 4, (path.name, diff)  # of 255


# ------------------------------------------- originals, for a model that resizes itself
def _b64(path: Path) -> str:
    import base64

    return base64.b64encode(path.read_bytes()).decode()


def test_an_original_the_model_resizes_itself_is_sent_as_it_is(tmp_path):
    from PIL import Image

    qwen = create_box_frame("qwen2.5-vl")
    jpg = paint_image(tmp_path / "a.jpg", (600, 800), 4)  # Qwen's processor: 588 x 812
    png = tmp_path / "b.png"
    Image.open(paint_image(tmp_path / "src.jpg", (333, 517), 2)).save(png)  # 336 x 504
    for path, size, mime in ((jpg, (600, 800), "jpeg"), (png, None, "png")):
        url = images.image_data_url(ImagePart(path, size), qwen, fmt=mime)
        assert url == f"data:image/{mime};base64," + _b64(path)  # its own type, not "jpeg"
        _, img = _decoded(url)
        # the frame is unchanged: the server's smart_resize of what it gets is the
        # size the boxes were written in
        assert qwen.model_size(img.size) == qwen.model_size(Image.open(path).size)
    # a frame whose model takes the image as given still gets the resized copy
    pixels_like = create_box_frame("qwen2.5-vl")
    pixels_like.resized_by_model = False
    _, img = _decoded(images.image_data_url(ImagePart(jpg, (600, 800)), pixels_like))
    assert img.size == (588, 812)


def test_an_original_goes_only_where_the_server_would_make_the_same_frame(tmp_path):
    from PIL import Image

    qwen = create_box_frame("qwen2.5-vl")
    small = create_box_frame("qwen2.5-vl", {"max_pixels": 200 * 200})
    declared = paint_image(tmp_path / "d.jpg", (610, 800), 1)  # declared 600 x 800 below
    big = paint_image(tmp_path / "big.jpg", (600, 800), 2)
    tiny = paint_image(tmp_path / "tiny.jpg", (40, 30), 3)  # min_pixels: 56 x 28
    rotated = tmp_path / "r.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(paint_image(tmp_path / "src.jpg", (600, 800), 5)).save(rotated, exif=exif)
    cmyk = tmp_path / "cmyk.jpg"
    Image.open(paint_image(tmp_path / "src2.jpg", (600, 800), 6)).convert("CMYK").save(cmyk)
    cases = [
        (declared, (600, 800), qwen),  # the file says 616 x 812 to the server, boxes 588 x 812
        (big, None, small),  # a large reduction: done here, the upload stays small
        (tiny, None, qwen),
        (rotated, None, qwen),
        (cmyk, None, qwen),
    ]
    png = tmp_path / "p.png"  # a PNG when JPEG was asked for: re-encoded, smaller
    Image.open(paint_image(tmp_path / "src3.jpg", (600, 800), 7)).save(png)
    cases.append((png, None, qwen))
    for path, size, frame in cases:
        url = images.image_data_url(ImagePart(path, size), frame)
        head, img = _decoded(url)
        want = frame.model_size(size or Image.open(path).size)
        assert head == "data:image/jpeg;base64" and img.size == want, path.name
        assert url.split(",", 1)[1] != _b64(path), path.name


def test_a_damaged_original_is_a_located_failure_never_sent(tmp_path):
    from refineg_core.errors import SampleImageError

    qwen = create_box_frame("qwen2.5-vl")
    path = paint_image(tmp_path / "whole.jpg", (600, 800), 7)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a good header
    with pytest.raises(SampleImageError, match=r"cut\.jpg") as info:
        images.image_data_url(ImagePart(cut, (600, 800)), qwen)
    assert "truncated" in str(info.value)
    assert images.image_data_url(ImagePart(path, (600, 800)), qwen).endswith(_b64(path))


def test_originals_and_resized_copies_are_kept_apart(tmp_path, monkeypatch):
    prepared = _counting_prepare(monkeypatch)
    path = paint_image(tmp_path / "a.jpg", (600, 800), 4)
    qwen = create_box_frame("qwen2.5-vl")
    copy_frame = create_box_frame("qwen2.5-vl")
    copy_frame.resized_by_model = False
    disk = images.DiskImages(tmp_path / "prepared", 2**30)
    original = images.image_data_url(ImagePart(path, None), qwen, disk=disk)
    resized = images.image_data_url(ImagePart(path, None), copy_frame, disk=disk)
    assert original != resized and len(prepared) == 2  # same target size, two entries
    images._CACHE.cache_clear()
    assert images.image_data_url(ImagePart(path, None), qwen, disk=disk) == original
    assert disk.hits == 1


# ------------------------------------------------------------- on disk, across runs
def _counting_prepare(monkeypatch) -> list[str]:
    """Record which files are really prepared (the real ``_prepare`` still runs)."""
    prepared: list[str] = []
    real = images._prepare

    def prepare(path, target, fmt, quality, model_size=None):
        prepared.append(path)
        return real(path, target, fmt, quality, model_size)

    monkeypatch.setattr(images, "_prepare", prepare)
    return prepared


def test_a_later_run_reads_prepared_images_from_disk(painted, tmp_path, monkeypatch):
    prepared = _counting_prepare(monkeypatch)
    codec = create_box_frame("qwen2.5-vl")  # resizes every painted image
    parts = [ImagePart(p, None) for p in painted[:20]]
    disk = images.DiskImages(tmp_path / "prepared", 2**30)
    first = [images.image_data_url(p, codec, disk=disk) for p in parts]
    assert len(prepared) == 20 and disk.misses == 20
    images._CACHE.cache_clear()  # a new run: nothing in memory
    later = images.DiskImages(tmp_path / "prepared", 2**30)
    again = [images.image_data_url(p, codec, disk=later) for p in parts]
    assert again == first
    assert len(prepared) == 20 and later.hits == 20  # none prepared twice
    images._CACHE.cache_clear()
    plain = [images.image_data_url(p, codec) for p in parts]  # without the disk: the same
    assert plain == first


def test_a_damaged_prepared_image_is_prepared_again_never_sent(painted, tmp_path, caplog):
    codec = create_box_frame("qwen2.5-vl")
    part = ImagePart(painted[0], None)
    disk = images.DiskImages(tmp_path / "prepared", 2**30)
    want = images.image_data_url(part, codec, disk=disk)
    [stored] = (tmp_path / "prepared").glob("??/*")
    stored.write_bytes(stored.read_bytes()[:-40])  # truncated
    images._CACHE.cache_clear()
    with caplog.at_level("WARNING"):
        assert images.image_data_url(part, codec, disk=disk) == want
    assert "damaged" in caplog.text
    images._CACHE.cache_clear()
    assert images.image_data_url(part, codec, disk=disk) == want  # rewritten whole
    assert disk.hits == 1


def test_the_folder_stays_within_its_bound_and_keeps_the_newest(painted, tmp_path):
    codec = create_box_frame("qwen2.5-vl")
    disk = images.DiskImages(tmp_path / "prepared", 30_000)
    for p in painted[:100]:
        images.image_data_url(ImagePart(p, None), codec, disk=disk)
    sizes = [f.stat().st_size for f in (tmp_path / "prepared").glob("??/*")]
    assert 0 < len(sizes) < 100
    assert sum(sizes) <= 30_000 + max(sizes) * 8  # trimmed every bound / 8 written
    disk.trim()
    assert sum(f.stat().st_size for f in (tmp_path / "prepared").glob("??/*")) <= 30_000
    images._CACHE.cache_clear()
    images.image_data_url(ImagePart(painted[99], None), codec, disk=disk)
    assert disk.hits == 1  # the newest stayed


def test_an_unwritable_folder_costs_only_the_disk_layer(painted, tmp_path, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the folder should be")
    disk = images.DiskImages(blocker, 2**30)
    codec = create_box_frame("qwen2.5-vl")
    with caplog.at_level("WARNING"):
        url = images.image_data_url(ImagePart(painted[0], None), codec, disk=disk)
    assert url.startswith("data:image/jpeg;base64,")
    assert "cannot keep a prepared image" in caplog.text


def test_the_backend_option_keeps_prepared_images_across_backends(painted, tmp_path):
    from refineg_openai.backend import OpenAIBackend

    from refineg_core.chat import ChatMessage, ChatRequest, TextPart

    def backend():
        return OpenAIBackend(
            OpenAIBackend.Options(
                base_url="http://127.0.0.1:9/v1", model="m", image_cache_dir=tmp_path / "img"
            )
        )

    request = ChatRequest(
        (ChatMessage("user", (ImagePart(painted[3], None), TextPart("boxes?"))),), purpose="ground"
    )
    first = backend().payload(request)
    assert len(list((tmp_path / "img").glob("??/*"))) == 1
    images._CACHE.cache_clear()
    second = backend()
    assert second.payload(request) == first
    assert second._disk.hits == 1


def test_the_ground_stage_answers_the_same_with_originals(twitter_dir, tmp_path, monkeypatch):
    """Against a server answering gold boxes in the Qwen frame, the ground stage's
    results are the same whether near-size originals go as they are or as resized
    copies: only the image bytes of the requests differ, never their text (boxes of
    the demonstrations included) or what comes back."""
    import json

    from refineg_frames.qwen import Qwen25VLCodec
    from refineg_openai.backend import OpenAIBackend
    from refineg_openai.testing import FakeOpenAIServer, gold_items, ok
    from refineg_stages.ground import GroundSettings, run_ground
    from refineg_stages.testing import OverlapSelector, prediction, query_text, with_image

    from tests.stagedata import LABELS, real_samples

    picked = [
        s
        for s in real_samples(twitter_dir, 300)
        if s.image and s.image.size and any(e.boxes for e in s.entities)
    ][:16]
    assert len(picked) == 16
    pool = [with_image(s, tmp_path / "pool", i) for i, s in enumerate(picked[:10])]
    queries = [with_image(s, tmp_path / "q", 20 + i) for i, s in enumerate(picked[10:])]
    by_text = {q.text: q for q in queries}
    codec = Qwen25VLCodec()

    def run(originals: bool, name: str):
        monkeypatch.setattr(Qwen25VLCodec, "resized_by_model", originals)
        images._CACHE.cache_clear()
        selector = OverlapSelector()
        selector.index(pool)
        with FakeOpenAIServer() as server:
            server.responder = lambda req: ok(
                json.dumps(gold_items(by_text[query_text(req.text)], "ground", codec=codec))
            )
            backend = OpenAIBackend(
                OpenAIBackend.Options(
                    base_url=server.base_url, model="fake-model", box_frame="qwen2.5-vl"
                )
            )
            results, summary = run_ground(
                [prediction(q) for q in queries],
                pool,
                selector,
                backend,
                LABELS,
                GroundSettings(k=2),
                tmp_path / f"{name}.jsonl",
            )
            backend.close()
            sent = sorted((r.text, tuple(r.image_urls)) for r in server.chat_requests)
        return results, summary, sent

    copies, copies_summary, copies_sent = run(False, "copies")
    originals, originals_summary, originals_sent = run(True, "originals")
    assert copies_summary.failed == originals_summary.failed == 0
    assert len(copies_sent) == len(originals_sent) == len(queries)
    assert [r.entities for r in originals] == [r.entities for r in copies]
    assert sum(bool(e.boxes) for r in originals for e in r.entities) > 0  # boxes came back
    assert [t for t, _ in originals_sent] == [t for t, _ in copies_sent]
    urls = [u for _, us in originals_sent for u in us]
    originals_b64 = {_b64(Path(s.image.path)) for s in pool + queries}
    assert urls and all(u.split(",", 1)[1] in originals_b64 for u in urls)  # all as they are
    assert not any(u.split(",", 1)[1] in originals_b64 for _, us in copies_sent for u in us)
