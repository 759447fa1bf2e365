"""The HTML report: rendered by headless Chromium and checked on the screenshot's pixels."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from pathlib import Path

import attrs
import numpy as np
import pytest
from PIL import Image
from refineg_report import hooks as report_hooks
from refineg_report.report import COLOURS, DrawnBox, label_rows, render_report, render_sample

from refineg_core.formats.native import write_jsonl
from refineg_core.hooks import get_hooks
from refineg_core.types import (
    SOURCE_GOLD,
    SOURCE_MLLM,
    SOURCE_TAGGER,
    Box,
    Entity,
    ImageRef,
    Sample,
    SampleResult,
)
from tests.stagedata import real_samples

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]
PURPLE = (128, 64, 192)
W, H = 400, 300
MLLM_BOX = Box(40, 50, 200, 250)
TAGGER_BOX = Box(240, 30, 380, 120)
GOLD_BOX = Box(230, 160, 390, 290)


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("headless Chromium is not installed (Debian: apt-get install -y chromium)")


def screenshot(html_path: Path, tmp_path: Path) -> np.ndarray:
    png = Path(os.environ.get("REFINEG_REPORT_SHOT", tmp_path / "shot.png"))
    cmd = [
        chromium(),
        *CHROMIUM_FLAGS,
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={png}",
        "--window-size=1200,900",
        html_path.resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert png.is_file(), (
        f"chromium wrote no screenshot (rc {proc.returncode}): {proc.stderr[-800:]}"
    )
    return np.asarray(Image.open(png).convert("RGB")).astype(int)


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    h = hex_colour.lstrip("#")
    return tuple(int(h[i : i + 2], 16) for i in (0, 2, 4))  # type: ignore[return-value]


def near(pixels: np.ndarray, colour: tuple[int, int, int], tol: int = 40) -> np.ndarray:
    return np.abs(pixels - np.array(colour)).sum(axis=-1) < tol


def photo(path: Path) -> Path:
    """A flat purple picture, so every box colour drawn over it stands out."""
    Image.new("RGB", (W, H), PURPLE).save(path, format="JPEG", quality=95)
    return path


def _case(twitter_dir: Path, tmp_path: Path) -> tuple[list[SampleResult], dict[str, Sample]]:
    tweet = real_samples(twitter_dir, 1, min_entities=2)[0]
    a, b = tweet.entities[0], tweet.entities[1]
    with_img = attrs.evolve(tweet, image=ImageRef("img1", photo(tmp_path / "img1.jpg"), W, H))
    pred = SampleResult(
        with_img,
        (
            attrs.evolve(a, boxes=(MLLM_BOX,), source=SOURCE_MLLM, grounded_by=SOURCE_MLLM),
            attrs.evolve(
                b,
                boxes=(TAGGER_BOX,),
                source=SOURCE_TAGGER,
                grounded_by=SOURCE_MLLM,
                uncertainty=0.12,
            ),
        ),
    )
    gold = attrs.evolve(with_img, entities=(attrs.evolve(b, boxes=(GOLD_BOX,)),))
    other = real_samples(twitter_dir, 1, min_entities=1, skip=1)[0]
    no_image = SampleResult(
        attrs.evolve(other, image=ImageRef("missing", tmp_path / "missing.jpg", 640, 480)),
        tuple(attrs.evolve(e, source=SOURCE_TAGGER) for e in other.entities),
    )
    return [pred, no_image], {gold.id: gold}


def test_report_html_is_self_contained(twitter_dir: Path, tmp_path: Path) -> None:
    results, gold = _case(twitter_dir, tmp_path)
    html = render_report(results, gold)
    assert "data:image/jpeg;base64," in html and 'src="file:' not in html
    assert html.count('class="box"') == 2 and html.count('class="box gold"') == 1
    assert "image not available" in html and "missing" in html
    for r in results:  # the sample without an image still lists its entities
        for e in r.entities:
            assert e.text.replace("&", "&amp;").replace("'", "&#x27;") in html
    assert "predicted = gold (span + type)" in html
    assert "<script" not in html  # nothing to execute: a text in a tweet cannot inject one
    evil = attrs.evolve(
        results[1], sample=attrs.evolve(results[1].sample, text="<script>alert(1)</script>")
    )
    assert "<script>alert" not in render_report([evil])


def test_report_screenshot_shows_boxes_where_they_belong(twitter_dir: Path, tmp_path: Path) -> None:
    results, gold = _case(twitter_dir, tmp_path)
    page = tmp_path / "report.html"
    page.write_text(render_report(results, gold), encoding="utf-8")
    px = screenshot(page, tmp_path)
    # where the picture landed on the page: the purple region
    ys, xs = np.nonzero(near(px, PURPLE, 30))
    assert len(xs) > 0.5 * W * H, "the embedded image is not visible"
    x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    assert abs((x1 - x0) - W) <= 2 and abs((y1 - y0) - H) <= 2  # shown at natural size

    def edge_hits(box: Box, colour: str, step: int = 1) -> dict[str, float]:
        """Share of pixels along each side of the box that have the colour."""
        mask = near(px, _rgb(colour))
        bx1, by1, bx2, by2 = (round(v) for v in box.as_list())
        inset = 1  # inside the 3-px border
        sides = {
            "left": mask[y0 + by1 + 20 : y0 + by2 - 4 : step, x0 + bx1 + inset],
            "right": mask[y0 + by1 + 20 : y0 + by2 - 4 : step, x0 + bx2 - 1 - inset],
            "top": mask[y0 + by1 + inset, x0 + bx1 + 4 : x0 + bx2 - 4 : step],
            "bottom": mask[y0 + by2 - 1 - inset, x0 + bx1 + 4 : x0 + bx2 - 4 : step],
        }
        return {k: float(v.mean()) for k, v in sides.items()}

    for box, colour in ((MLLM_BOX, COLOURS[SOURCE_MLLM]), (TAGGER_BOX, COLOURS[SOURCE_TAGGER])):
        hits = edge_hits(box, colour)
        assert min(hits["left"], hits["right"], hits["bottom"]) > 0.9, hits
        cx, cy = x0 + int((box.x1 + box.x2) / 2), y0 + int((box.y1 + box.y2) / 2)
        assert near(px[cy, cx], PURPLE, 30)  # the box is an outline, not a fill
    # the two stages really get different colours on screen
    assert not near(
        px[y0 + int(MLLM_BOX.y2) - 2, x0 + int(MLLM_BOX.x1) + 30], _rgb(COLOURS[SOURCE_TAGGER])
    )
    # gold is dashed: its sides are partly gold-coloured, partly background
    gold_hits = edge_hits(GOLD_BOX, COLOURS[SOURCE_GOLD])
    assert 0.25 < gold_hits["left"] < 0.95 and 0.25 < gold_hits["top"] < 0.95, gold_hits
    # nothing of the box colours outside the picture's boxes (e.g. drawn in the wrong place)
    cyan = near(px, _rgb(COLOURS[SOURCE_MLLM]))
    cyan[y0:y1, x0:x1] = False
    legend_and_tags = cyan.sum()
    assert legend_and_tags < 2000  # only the legend swatch and the entity's type tag


def test_report_command_through_the_hook(twitter_dir: Path, tmp_path: Path, capsys) -> None:
    results, gold = _case(twitter_dir, tmp_path)
    pred_path = tmp_path / "ground.jsonl"
    write_jsonl(results, pred_path)
    gold_path = tmp_path / "gold.jsonl"
    write_jsonl(list(gold.values()), gold_path)
    parser = argparse.ArgumentParser(prog="refineg")
    sub = parser.add_subparsers(dest="command")
    get_hooks().add_commands(sub)  # the installed entry point, as the CLI loads it
    out = tmp_path / "r.html"
    args = parser.parse_args(
        [
            "report",
            "--pred",
            str(pred_path),
            "--gold",
            str(gold_path),
            "--out",
            str(out),
            "--limit",
            "1",
        ]
    )
    assert args.func is report_hooks.run_report
    assert args.func(args) == 0
    html = out.read_text()
    assert "showing the first 1 of 2 samples" in html and html.count('class="box gold"') == 1
    assert "wrote" in capsys.readouterr().out


def test_gold_colour_differs_from_stage_colours() -> None:
    assert len({COLOURS[SOURCE_GOLD], COLOURS[SOURCE_MLLM], COLOURS[SOURCE_TAGGER]}) == 3


def test_labels_of_coinciding_boxes_do_not_overlap(tmp_path: Path) -> None:
    # The MLLM confirms the tagger's box and a second entity shares it: three labels
    # at one corner; gold on the same box twice; one box far away.
    same, far = Box(40, 50, 200, 250), Box(300, 200, 390, 290)
    drawn = [
        DrawnBox(same, "Obama (PER)", "#f0f", False),
        DrawnBox(same, "Barack Obama (PER)", "#0ff", False),
        DrawnBox(Box(42, 51, 199, 250), "POTUS (PER)", "#0ff", False),
        DrawnBox(far, "Paris (LOC)", "#0ff", False),
        DrawnBox(same, "gold: Obama (PER)", "#0f0", True),
        DrawnBox(same, "gold: Barack Obama (PER)", "#0f0", True),
    ]
    assert label_rows(drawn, (W, H), 400) == [0, 1, 2, 0, 0, 1]
    sample = Sample("s", ("Obama",), "Obama", ImageRef("s", photo(tmp_path / "s.jpg"), W, H))
    result = SampleResult(
        sample, (Entity(0, 1, "PER", "Obama", boxes=(same, same), source=SOURCE_MLLM),)
    )
    html = render_sample(result, None)
    assert "top:-18px" in html and "top:-35px" in html  # one line apart


def test_report_without_out_writes_beside_the_predictions(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    sample = Sample("s", ("Obama",), "Obama", ImageRef("s", photo(tmp_path / "s.jpg"), W, H))
    write_jsonl([SampleResult(sample, ())], run / "ground.jsonl")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    parser = argparse.ArgumentParser(prog="refineg")
    get_hooks().add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["report", "--pred", str(run / "ground.jsonl")])
    assert args.func(args) == 0
    assert (run / "ground.report.html").is_file()
    assert list(elsewhere.iterdir()) == []
    assert str(run / "ground.report.html") in capsys.readouterr().out
