"""The report's gate view: right/wrong marks, the error/delegated filter, the curve."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import attrs
import numpy as np
import pytest
from PIL import Image
from refineg_report.curve import curve_png, risk_coverage
from refineg_report.report import render_report

from refineg_core.types import SOURCE_TAGGER, Entity, GateVerdict, Sample, SampleResult
from tests.test_report import CHROMIUM_FLAGS, PURPLE, W, chromium, near, photo

TOKENS = ("Obama", "meets", "Merkel", "in", "Paris", "today")


def ent(start, end, etype, u):
    return Entity(
        start, end, etype, " ".join(TOKENS[start:end]), source=SOURCE_TAGGER, uncertainty=u
    )


def case(image: Path | None = None):
    """Post a: one right entity (u 0.1), one wrong type (u 0.5, delegated); post b: one
    right entity (u 0.3) and a missed gold entity, missed-entity score 0.6, kept."""
    from refineg_core.types import ImageRef

    img = ImageRef("img", image, W, 300) if image is not None else None
    a = Sample("a", TOKENS, " ".join(TOKENS), image=img)
    b = Sample("b", TOKENS, " ".join(TOKENS))
    ra = SampleResult(
        a,
        (ent(0, 1, "PER", 0.1), ent(2, 3, "LOC", 0.5)),
        gate=GateVerdict(True, 0.0, frozenset({(2, 3, "LOC")})),
    )
    rb = SampleResult(b, (ent(4, 5, "LOC", 0.3),), gate=GateVerdict(False, 0.6))
    gold = {
        "a": attrs.evolve(
            a, entities=(Entity(0, 1, "PER", "Obama"), Entity(2, 3, "PER", "Merkel"))
        ),
        "b": attrs.evolve(b, entities=(Entity(4, 5, "LOC", "Paris"), Entity(0, 1, "PER", "Obama"))),
    }
    return [ra, rb], gold


def test_risk_coverage_by_hand():
    results, gold = case()
    curve = risk_coverage(results, gold, grid=np.array([0.05, 0.2, 0.4, 0.55, 1.0]))
    # tau 0.05: nothing kept; 0.2: {0.1} right; 0.4: {0.1, 0.3} right; 0.55 and 1: 2 of 3
    assert np.isnan(curve.kept_precision[0])
    assert curve.kept_precision[1:].tolist() == pytest.approx([1, 1, 2 / 3, 2 / 3])
    # posts delegated: a (max 0.5), b (missed 0.6) above tau
    assert curve.delegated_share.tolist() == [1, 1, 1, 0.5, 0]
    # the run's own verdicts: a delegated, kept = Obama (right) and Paris (right)
    assert curve.run_delegated_share == 0.5 and curve.run_kept_precision == 1.0
    assert risk_coverage(results, {}) is None  # no gold: no curve


def png_pixels(url: str) -> np.ndarray:
    assert url.startswith("data:image/png;base64,")
    img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    return np.asarray(img.convert("RGB")).astype(int)


def test_curve_png_marks_the_target_only_when_there_is_one():
    pytest.importorskip("matplotlib", reason="pip install 'refineg[report]'")
    results, gold = case()
    curve = risk_coverage(results, gold)
    green = (0x2C, 0xA0, 0x2C)  # the target line's colour
    plain = png_pixels(curve_png(curve))
    assert plain.shape == (380, 640, 3)
    assert near(plain, (0x33, 0x66, 0xCC), 10).sum() > 200  # the curve is drawn
    assert near(plain, green, 60).sum() < 30
    promised = {"target_precision": 0.9, "risk": 0.1, "threshold": 0.25, "unit": "entity"}
    marked = png_pixels(curve_png(curve, promised))
    assert near(marked, green, 60).sum() > 300  # a dashed line across the plot


def test_marks_and_filter_in_the_html():
    results, gold = case()
    html = render_report(results, gold)
    assert html.count('class="mark right"') == 2  # Obama in a, Paris in b
    assert html.count('class="mark wrong"') == 1  # Merkel typed LOC
    assert html.count('class="mark missed"') == 2  # gold Merkel/PER in a, Obama in b
    assert 'class="sample err del" id="s-a"' in html and 'class="sample err" id="s-b"' in html
    assert html.count('<span class="deleg">delegated</span>') == 1
    assert "errors only (2)" in html and "delegated only (1)" in html
    assert "<script" not in html
    pytest.importorskip("matplotlib")
    assert "alt='gate risk-coverage curve'" in html
    assert "risk-coverage" not in render_report(results)  # no gold: no curve, no marks
    assert "mark right" not in render_report(results)


def tall_screenshot(html_path: Path, tmp_path: Path) -> np.ndarray:
    """The page in a window tall enough for the curve and three posts."""
    import subprocess

    png = tmp_path / f"{html_path.stem}.png"
    cmd = [
        chromium(),
        *CHROMIUM_FLAGS,
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={png}",
        "--window-size=1200,2600",
        html_path.resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert png.is_file(), f"chromium wrote no screenshot (rc {proc.returncode})"
    return np.asarray(Image.open(png).convert("RGB")).astype(int)


def test_delegated_filter_hides_the_other_posts_on_screen(tmp_path: Path):
    """Rendered by Chromium with "delegated only" chosen: post a (delegated, with the
    picture) stays; choosing "errors only" keeps both (both have an error);
    a third, exact, post without delegation disappears under either filter."""
    chromium()
    results, gold = case(photo(tmp_path / "img.jpg"))
    exact = Sample("c", TOKENS, " ".join(TOKENS), entities=(Entity(4, 5, "LOC", "Paris"),))
    from refineg_core.types import ImageRef

    exact_img = attrs.evolve(exact, image=ImageRef("img", tmp_path / "img.jpg", W, 300))
    results.insert(
        0, SampleResult(exact_img, (ent(4, 5, "LOC", 0.01),), gate=GateVerdict(False, 0.0))
    )
    gold["c"] = exact_img

    def purple_blocks(checked: str) -> int:
        html = render_report(results, gold)
        html = html.replace('id="show-all" checked', 'id="show-all"').replace(
            f'id="show-{checked}"', f'id="show-{checked}" checked'
        )
        page = tmp_path / f"{checked}.html"
        page.write_text(html, encoding="utf-8")
        mask = near(tall_screenshot(page, tmp_path), PURPLE, 30)
        rows = np.nonzero(mask.any(axis=1))[0]
        # separate pictures are separate runs of rows
        return int(len(rows) > 0) + int(np.sum(np.diff(rows) > 1)) if len(rows) else 0

    assert purple_blocks("all") == 2  # post c and post a have the picture
    assert purple_blocks("del") == 1  # only a is delegated
    assert purple_blocks("err") == 1  # c is exact: hidden
