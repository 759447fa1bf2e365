"""Every hostile data file and evaluation input of tests/hostile/data/, one parametrised test.

``cases.toml`` says what is done with each case folder and what must happen: a
located ``RefinegError`` (never an ``unexpected ...`` crash) or a load that
keeps every sample and records the problem. CONTRIBUTING.md lists the same
cases in its "Hostile inputs: data files and evaluation" table.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import tomllib
from PIL import Image

from refineg_core.errors import RefinegError
from refineg_core.formats import load_dataset
from refineg_core.formats.images import IMAGE_FAILURE
from refineg_core.hooks import get_hooks
from refineg_core.testing import run_cli

DATA = Path(__file__).parent / "data"
CASES: list[dict[str, Any]] = tomllib.loads((DATA / "cases.toml").read_text("utf-8"))["case"]
CONTRIBUTING = Path(__file__).parents[2] / "CONTRIBUTING.md"


def huge_token(path: Path) -> None:
    path.write_text("A" * 2_000_000 + "\tB-PER\n", encoding="utf-8")


def deep_nesting(path: Path) -> None:
    path.write_text("[" * 100_000 + "]" * 100_000 + "\n", encoding="utf-8")


def symlink_loop(path: Path) -> None:
    """A Twitter split whose image is a symlink to itself (git keeps no such link)."""
    path.write_text("IMGID:7\nObama\tB-PER\nvisits\tO\n", encoding="utf-8")
    (path.parent / "xml").mkdir(exist_ok=True)
    (path.parent / "images").mkdir(exist_ok=True)
    (path.parent / "images" / "7.png").symlink_to("7.png")


GENERATORS = {"huge_token": huge_token, "deep_nesting": deep_nesting, "symlink_loop": symlink_loop}


@pytest.fixture(autouse=True)
def core_hooks_only(monkeypatch):
    monkeypatch.setenv("REFINEG_HOOK_PLUGINS", "")
    get_hooks.cache_clear()
    yield
    get_hooks.cache_clear()


def _case_dir(case: dict[str, Any], tmp_path: Path) -> Path:
    """The case folder; generated files go into a copy under tmp_path."""
    folder = DATA / case["id"]
    if "generate" not in case:
        return folder
    copy = tmp_path / case["id"]
    if folder.is_dir():
        shutil.copytree(folder, copy)
    copy.mkdir(exist_ok=True)
    GENERATORS[case["generate"]](copy / case["file"])
    return copy


def _load(case: dict[str, Any], folder: Path):
    def rel(key: str) -> Path | None:
        return folder / case[key] if key in case else None

    options = {key: folder / case[key] for key in ("xml_dir", "entities") if key in case}
    return load_dataset(
        folder / case["file"],
        case.get("format"),
        images_dir=rel("images_dir"),
        options=options,
        boxes=case.get("boxes_policy"),
    )


def _check_loaded(case: dict[str, Any], ds) -> None:
    samples = list(ds.samples)
    if "samples" in case:
        assert len(samples) == case["samples"]
    else:
        assert samples, "every case keeps its samples"
    if "n_entities" in case:
        assert sum(len(s.entities) for s in samples) == case["n_entities"]
    if "ids" in case:
        assert [s.id for s in samples] == case["ids"]
    if "tokens" in case:
        assert list(samples[0].tokens) == case["tokens"]
    if "boxes" in case:
        got = [[b.as_list() for b in e.boxes] for e in samples[0].entities]
        assert got == case["boxes"]
    if "warning" in case:
        assert any(re.search(case["warning"], w) for w in ds.warnings), ds.warnings
    if "image_failure" in case:
        failure = samples[0].meta.get(IMAGE_FAILURE, "")
        assert re.search(case["image_failure"], failure), failure
        assert samples[0].image is not None and samples[0].image.path is None
    if "image_size" in case:
        image = samples[0].image
        assert image is not None and image.path is not None, samples[0].meta
        assert list(image.size) == case["image_size"]
        with Image.open(image.path) as img:  # what a backend sends: RGB pixels
            assert img.convert("RGB").size == tuple(case["image_size"])
    if case.get("regions") == "unknown":
        ents = [e for s in samples for e in s.entities]
        assert ents and all(e.boxes is None for e in ents)


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_hostile_input(case: dict[str, Any], tmp_path: Path):
    folder = _case_dir(case, tmp_path)
    if case["action"] == "eval":
        args = [a.replace("{dir}", str(folder)) for a in case["args"]]
        res = run_cli(["eval", *args])
        assert "Traceback" not in res.stderr and "unexpected" not in res.stderr
        if case["expect"] == "error":
            assert res.code == 2, res.stderr
            last = res.stderr.strip().splitlines()[-1]
            assert last.startswith("refineg: error: ")
            assert re.search(case["error"], last), last
        else:
            assert res.code == 0, res.stderr
            assert re.search(case["stdout"], res.stdout), res.stdout
        return
    if case["expect"] == "error":
        with pytest.raises(RefinegError) as err:
            _load(case, folder)
        assert re.search(case["error"], str(err.value)), str(err.value)
        if "where" in case:
            assert err.value.where == case["where"].replace("{dir}", str(folder))
        return
    _check_loaded(case, _load(case, folder))


def test_every_case_folder_is_listed_and_documented():
    ids = [c["id"] for c in CASES]
    assert len(ids) == len(set(ids))
    folders = {p.name for p in DATA.iterdir() if p.is_dir()}
    generated = {c["id"] for c in CASES if "generate" in c}
    assert folders == set(ids) - generated
    table = CONTRIBUTING.read_text("utf-8").split("## Hostile inputs: data files and evaluation")
    assert len(table) == 2, "CONTRIBUTING.md lacks the hostile inputs section"
    missing = [i for i in ids if f"`{i}`" not in table[1]]
    assert not missing, f"cases missing from the CONTRIBUTING.md table: {missing}"
    assert len(ids) >= 20
