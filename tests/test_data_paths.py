"""Images and outputs stay where they belong (issue 9 items 5 and 6, and run_dir errors).

* A decompression bomb, a corrupt file or a missing image is a per-sample image
  failure: the sample keeps its text, the failure says what and where, the load
  goes on.
* An id or path in a data file (``IMGID:/tmp/x``, ``../x``, an absolute path)
  never makes an image be read from outside ``images_dir``, and a writer never
  writes outside its output folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from refineg_formats.twitter import write_twitter_gmner

from refineg_core.errors import ConfigError, DataError
from refineg_core.formats import load_dataset
from refineg_core.formats.images import IMAGE_FAILURE, find_image
from refineg_core.formats.paths import output_dir
from refineg_core.testing import run_cli
from refineg_core.types import Box, Entity, ImageRef, Sample
from tests.imagefiles import png_bomb_bytes, write_png


@pytest.fixture
def layout(tmp_path: Path):
    """images/ with good, bomb and corrupt images; a secret image outside it."""
    images = tmp_path / "images"
    write_png(images / "good.png")
    (images / "bomb.png").write_bytes(png_bomb_bytes())
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    write_png(tmp_path / "outside" / "secret.png")
    return tmp_path, images


def _twitter(root: Path, *ids: str) -> Path:
    path = root / "split.txt"
    path.write_text(
        "".join(f"IMGID:{i}\nObama\tB-PER\nsmiles\tO\n\n" for i in ids), encoding="utf-8"
    )
    return path


def test_bomb_corrupt_and_missing_images_are_per_sample_failures(layout):
    root, images = layout
    ds = load_dataset(_twitter(root, "good", "bomb", "broken", "gone"), images_dir=images)
    good, bomb, broken, gone = ds.samples
    assert good.image.path == images / "good.png" and good.image.size == (40, 30)
    assert IMAGE_FAILURE not in good.meta
    for sample, words in (
        (bomb, ("bomb.png", "decompression bomb")),
        (broken, ("broken.jpg", "unreadable or corrupt")),
        (gone, ("gone", "missing")),
    ):
        assert sample.image.path is None and sample.tokens == ("Obama", "smiles")
        assert [e.text for e in sample.entities] == ["Obama"]
        failure = sample.meta[IMAGE_FAILURE]
        assert all(w in failure for w in words), failure
        assert failure in ds.warnings


@pytest.mark.parametrize(
    "image_id", ["{outside}/secret", "../outside/secret", "a/../../outside/secret"]
)
def test_twitter_imgid_never_reads_outside_images_dir(layout, image_id: str):
    """Refused at its line before anything is read: no writer could name its files."""
    root, images = layout
    image_id = image_id.format(outside=root / "outside")
    split = _twitter(root, image_id)
    with pytest.raises(DataError, match="path separator") as err:
        load_dataset(split, "twitter-gmner", images_dir=images)
    assert err.value.where == f"{split}:1"
    assert find_image(images, image_id) is None


def test_ccks_and_jsonl_ids_and_paths_never_leave_images_dir(layout):
    root, images = layout
    texts = root / "texts.json"
    texts.write_text(json.dumps({"../outside/secret": {"text": "Obama smiles"}}), "utf-8")
    with pytest.raises(DataError, match="path separator") as err:
        load_dataset(texts, "ccks", images_dir=images)
    assert err.value.where == f"{texts}:1 [../outside/secret]"
    secret = root / "outside" / "secret.png"
    lines = [
        {"id": "a", "text": "Obama smiles", "image": {"id": "a", "path": str(secret)}},
        {"id": "b", "text": "Obama smiles", "image": {"id": "b", "path": "../outside/secret.png"}},
        {"id": "c", "text": "Obama smiles", "image": {"id": "c", "path": "good.png"}},
        {"id": "good", "text": "Obama smiles"},
    ]
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps(x) + "\n" for x in lines), "utf-8")
    a, b, c, good = load_dataset(data, "jsonl", images_dir=images).samples
    for s in (a, b):
        assert s.image.path is None and "outside" in s.meta[IMAGE_FAILURE]
    assert c.image.path == images / "good.png" and good.image.path == images / "good.png"


def test_twitter_writer_never_writes_outside_its_folder(tmp_path: Path):
    target = tmp_path / "elsewhere" / "x"
    target.parent.mkdir()
    ent = Entity(0, 1, "PER", "Obama", boxes=(Box(1, 1, 5, 5),))
    hostile = Sample(str(target), ("Obama",), "Obama", ImageRef(str(target)), (ent,))
    fine = Sample("1", ("Obama",), "Obama", ImageRef("1"), (ent,))
    out = tmp_path / "out" / "pred.txt"
    with pytest.raises(DataError, match="path separator") as err:
        write_twitter_gmner([fine, hostile], out)
    assert str(target) in str(err.value)
    assert not target.with_suffix(".xml").exists()
    assert not out.exists()  # checked before anything was written
    write_twitter_gmner([fine], out)
    assert (out.parent / "xml" / "1.xml").is_file()


@pytest.mark.parametrize("where", ["file", "proc"])
def test_run_dir_that_cannot_exist_is_one_line_naming_run_dir(tmp_path: Path, where: str):
    blocker = tmp_path / "a-file"
    blocker.write_text("x", "utf-8")
    run_dir = blocker / "run" if where == "file" else Path("/proc/refineg-run")
    if where == "proc" and not Path("/proc").is_dir():
        pytest.skip("no /proc on this system")
    with pytest.raises(ConfigError, match="cannot create") as err:
        output_dir(run_dir)
    assert err.value.where == "run_dir"
    data = tmp_path / "d.conll"
    data.write_text("Obama\tB-PER\n", "utf-8")
    config = tmp_path / "c.toml"
    config.write_text(
        f'run_dir = "{run_dir}"\n[labels]\nPER = "a person"\n[data.predict]\npath = "{data}"\n',
        "utf-8",
    )
    res = run_cli(["predict", "--config", str(config)])
    assert res.code == 2
    assert res.stderr.startswith("refineg: error: run_dir: cannot create"), res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
