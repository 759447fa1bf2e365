"""Render predictions (and gold, when given) as one self-contained HTML file.

Everything is inline (images as base64, CSS in a <style> block), so the file
can be mailed or opened from anywhere without a server. Boxes are absolutely
positioned divs placed in percent of the image, so they stay on their object
however the browser scales the picture. The colour says who decided the entity
(tagger or MLLM); gold boxes are dashed in a third colour.

With gold, every predicted entity is marked right or wrong (exact span and
type) and every gold entity the prediction lacks is marked missed; a filter
(radio buttons and CSS, no script) shows only the posts with an error or only
the posts the gate delegated. With gold and the gate's verdicts (the predict
stage's results) the page opens with the gate's risk-coverage curve
(:mod:`refineg_report.curve`).
"""

from __future__ import annotations

import base64
import html
import io
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
from PIL import Image, UnidentifiedImageError

from refineg_core.formats.images import find_image
from refineg_core.progress import bar
from refineg_core.types import (
    SOURCE_GOLD,
    SOURCE_MLLM,
    SOURCE_TAGGER,
    Box,
    Entity,
    Sample,
    SampleResult,
)

#: Colour per deciding stage; gold gets its own. Saturated so they stand out on photos.
COLOURS: dict[str, str] = {
    SOURCE_TAGGER: "#ff00ff",
    SOURCE_MLLM: "#00e5ff",
    SOURCE_GOLD: "#00ff00",
}
OTHER_COLOUR = "#ffd400"
#: Longest image side embedded in the report (keeps the file small).
MAX_SIDE = 800

_CSS = """
body { font-family: system-ui, sans-serif; margin: 16px; background: #fafafa; color: #222; }
h1 { font-size: 20px; margin: 0 0 8px; }
table.summary { border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }
table.summary td, table.summary th { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
.legend span { display: inline-block; margin-right: 14px; font-size: 13px; }
.legend i { display: inline-block; width: 14px; height: 10px; margin-right: 4px;
            vertical-align: middle; }
.sample { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 10px;
          margin: 0 0 14px; display: flex; gap: 16px; align-items: flex-start; }
.frame { position: relative; flex: none; line-height: 0; }
.frame img { width: 100%; height: 100%; display: block; }
.noimg { width: 240px; height: 120px; flex: none; display: flex; align-items: center;
         justify-content: center; background: #eee; color: #777; font-size: 13px;
         border: 1px dashed #bbb; text-align: center; line-height: 1.3; }
.box { position: absolute; box-sizing: border-box; border: 3px solid; pointer-events: none; }
.box.gold { border-style: dashed; }
.box .lbl { position: absolute; left: -3px; top: -18px; font: 11px/16px monospace;
            padding: 0 3px; color: #000; white-space: nowrap; }
.box.gold .lbl { top: auto; bottom: -18px; }
.info { font-size: 13px; min-width: 0; }
.info .id { color: #888; font-size: 12px; }
.info .text { margin: 4px 0 8px; font-size: 14px; }
.ent { margin: 2px 0; }
.tag { display: inline-block; padding: 0 5px; border-radius: 3px; font-size: 11px;
       color: #000; margin-left: 4px; }
.fail { color: #b00020; font-size: 12px; margin-top: 6px; }
.mark { font-weight: bold; margin-right: 4px; }
.mark.right { color: #1b7f2a; }
.mark.wrong, .mark.missed { color: #b00020; }
.deleg { font-size: 11px; color: #555; border: 1px solid #999; border-radius: 3px;
         padding: 0 3px; margin-left: 4px; }
.filter { font-size: 13px; margin: 6px 0; }
.filter label { margin-right: 12px; }
#show-err:checked ~ .samples .sample:not(.err) { display: none; }
#show-del:checked ~ .samples .sample:not(.del) { display: none; }
.curve { margin: 8px 0; }
"""

#: How an entity compares with the gold: (css class, symbol, words).
MARKS = {
    "right": ("right", "\u2713", "right"),
    "wrong": ("wrong", "\u2717", "wrong"),
    "missed": ("missed", "\u2717", "missed"),
}


def _colour(source: str) -> str:
    return COLOURS.get(source, OTHER_COLOUR)


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def embed_image(path: Path, max_side: int = MAX_SIDE) -> tuple[str, tuple[int, int]] | None:
    """A data URL of the (downscaled) image and its original size; None when unreadable."""
    try:
        with Image.open(path) as img:
            original = img.size
            img = img.convert("RGB")
            img.thumbnail((max_side, max_side))
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=85)
    except (OSError, UnidentifiedImageError, ValueError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii"), original


#: Label geometry in CSS px (11px monospace: about 6.6 px a character, 16 px a line).
LABEL_LINE = 17
_CHAR_W = 6.7


@attrs.frozen
class DrawnBox:
    box: Box
    label: str
    colour: str
    gold: bool


def label_rows(drawn: Sequence[DrawnBox], frame: tuple[int, int], display_w: int) -> list[int]:
    """How many lines each label moves away from its box so no two labels overlap.

    Predicted labels sit above the box's top-left corner and move up; gold ones
    below its bottom-left corner and move down. Coinciding boxes (the MLLM
    confirming the tagger's box, two entities on one face) would otherwise
    print their labels on top of each other.
    """
    scale = display_w / frame[0]
    placed: list[tuple[float, float, float, float]] = []
    rows: list[int] = []
    for d in drawn:
        x = d.box.x1 * scale
        width = len(d.label) * _CHAR_W + 6
        row = 0
        while True:
            if d.gold:
                y = d.box.y2 * scale + 2 + row * LABEL_LINE
            else:
                y = d.box.y1 * scale - 18 - row * LABEL_LINE
            rect = (x, y, x + width, y + LABEL_LINE - 1)
            if not any(_overlap(rect, other) for other in placed):
                break
            row += 1
        placed.append(rect)
        rows.append(row)
    return rows


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _box_div(d: DrawnBox, size: tuple[int, int], row: int = 0) -> str:
    w, h = size
    box = d.box
    left, top = 100 * box.x1 / w, 100 * box.y1 / h
    width, height = 100 * (box.x2 - box.x1) / w, 100 * (box.y2 - box.y1) / h
    cls = "box gold" if d.gold else "box"
    offset = -18 - row * LABEL_LINE
    place = f"bottom:{offset}px" if d.gold else f"top:{offset}px"
    return (
        f'<div class="{cls}" style="left:{left:.3f}%;top:{top:.3f}%;width:{width:.3f}%;'
        f'height:{height:.3f}%;border-color:{d.colour}">'
        f'<span class="lbl" style="background:{d.colour};{place}">{_esc(d.label)}</span></div>'
    )


def _entity_line(e: Entity, mark: str | None = None, delegated: bool = False) -> str:
    colour = _colour(e.source)
    source = _esc(e.source or "unstated")
    bits = []
    if mark is not None:
        cls, symbol, words = MARKS[mark]
        bits.append(f'<span class="mark {cls}" title="{words}">{symbol} {words}</span>')
    bits += [
        f"<b>{_esc(e.text)}</b>",
        f'<span class="tag" style="background:{colour}">{_esc(e.type)} · {source}</span>',
    ]
    if e.uncertainty is not None:
        bits.append(f"u={e.uncertainty:.2f}")
    if e.boxes:
        bits.append(
            f"{len(e.boxes)} box{'es' if len(e.boxes) > 1 else ''}"
            + (f" by {_esc(e.grounded_by)}" if e.grounded_by else "")
        )
    elif e.boxes is not None:
        bits.append(f"not visible (per {_esc(e.grounded_by or 'gold')})")
    else:
        bits.append("grounding not attempted")
    if delegated:
        bits.append('<span class="deleg">delegated</span>')
    return f'<div class="ent">{" ".join(bits)}</div>'


def _image_path(sample: Sample, images_dir: Path | None) -> Path | None:
    if sample.image is not None and sample.image.available:
        return sample.image.path
    if images_dir is not None:
        image_id = sample.image.image_id if sample.image else sample.id
        return find_image(images_dir, image_id)
    return None


def render_sample(
    result: SampleResult,
    gold: Sample | None,
    *,
    images_dir: Path | None = None,
    display_width: int = 560,
) -> str:
    sample = result.sample
    path = _image_path(sample, images_dir)
    embedded = embed_image(path) if path else None
    gold_keys = {e.key for e in gold.entities} if gold is not None else set()
    pred_keys = {e.key for e in result.entities}
    has_error = gold is not None and gold_keys != pred_keys
    was_delegated = result.gate is not None and result.gate.delegate_sample
    cls = "sample" + (" err" if has_error else "") + (" del" if was_delegated else "")
    parts = [f'<section class="{cls}" id="s-{_esc(sample.id)}">']
    if embedded is not None:
        url, size = embedded
        # Boxes are in pixels of the size the data was annotated at; prefer it.
        frame = sample.image.size if sample.image and sample.image.size else size
        dw = min(display_width, frame[0])
        dh = round(dw * frame[1] / frame[0])
        parts.append(
            f'<div class="frame" style="width:{dw}px;height:{dh}px">'
            f'<img src="{url}" alt="{_esc(sample.id)}">'
        )
        drawn = [
            DrawnBox(b, f"{e.text} ({e.type})", _colour(e.source), False)
            for e in result.entities
            for b in e.box_list
        ]
        drawn += [
            DrawnBox(b, f"gold: {e.text} ({e.type})", COLOURS[SOURCE_GOLD], True)
            for e in (gold.entities if gold else ())
            for b in e.box_list
        ]
        for d, row in zip(drawn, label_rows(drawn, frame, dw), strict=True):
            parts.append(_box_div(d, frame, row))
        parts.append("</div>")
    else:
        why = "image not available" if path is None else "image unreadable"
        image_id = sample.image.image_id if sample.image else sample.id
        parts.append(f'<div class="noimg">{why}<br>{_esc(image_id)}</div>')
    parts.append('<div class="info">')
    parts.append(f'<div class="id">{_esc(sample.id)}</div>')
    parts.append(f'<div class="text">{_esc(sample.text)}</div>')
    parts.append(
        "<div><b>predicted</b>" + (" (delegated to the MLLM)" if was_delegated else "") + "</div>"
    )
    delegated_keys = result.gate.delegated if result.gate is not None else frozenset()
    parts.extend(
        _entity_line(
            e,
            None if gold is None else ("right" if e.key in gold_keys else "wrong"),
            e.key in delegated_keys,
        )
        for e in result.entities
    )
    if not result.entities:
        parts.append('<div class="ent">(none)</div>')
    if gold is not None:
        parts.append("<div style='margin-top:6px'><b>gold</b></div>")
        parts.extend(
            _entity_line(e, None if e.key in pred_keys else "missed") for e in gold.entities
        )
        if not gold.entities:
            parts.append('<div class="ent">(none)</div>')
    for f in result.failures:
        parts.append(
            f'<div class="fail">{_esc(f.stage)} failed ({_esc(f.kind)}): {_esc(f.message)}</div>'
        )
    parts.append("</div></section>")
    return "".join(parts)


def summarize(
    results: Sequence[SampleResult], gold: Mapping[str, Sample] | None, images: int
) -> list[tuple[str, str]]:
    sources = Counter(e.source for r in results for e in r.entities)
    failures = Counter(f"{f.stage}/{f.kind}" for r in results for f in r.failures)
    n_ent = sum(sources.values())
    rows = [
        ("samples", str(len(results))),
        ("samples with an image", str(images)),
        ("predicted entities", str(n_ent)),
        *((f"decided by {s}", str(n)) for s, n in sorted(sources.items())),
        ("entities with boxes", str(sum(1 for r in results for e in r.entities if e.boxes))),
        ("samples with failures", str(sum(1 for r in results if r.failures))),
        *((f"failures {k}", str(n)) for k, n in sorted(failures.items())),
    ]
    if gold is not None:
        matched = [gold[r.id] for r in results if r.id in gold]
        g_keys = sum(len({e.key for e in s.entities}) for s in matched)
        hits = sum(
            len({e.key for e in r.entities} & {e.key for e in gold[r.id].entities})
            for r in results
            if r.id in gold
        )
        rows += [
            ("samples with gold", str(len(matched))),
            ("gold entities", str(g_keys)),
            ("predicted = gold (span + type)", str(hits)),
        ]
    return rows


def render_report(
    results: Sequence[SampleResult],
    gold: Mapping[str, Sample] | None = None,
    *,
    title: str = "refineg report",
    images_dir: Path | None = None,
    limit: int | None = None,
    guarantee: Mapping[str, Any] | None = None,
) -> str:
    """The whole HTML page as a string. ``guarantee``: the run summary's record of a
    precision target (``calibration.guarantee``), marked on the curve."""
    shown = list(results)[:limit] if limit is not None else list(results)
    sections = [
        render_sample(r, gold.get(r.id) if gold else None, images_dir=images_dir)
        for r in bar(shown, desc="report", total=len(shown), unit="sample")
    ]
    with_image = sum('class="frame"' in s for s in sections)
    rows = summarize(shown, gold, with_image)
    table = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in rows)
    legend = "".join(
        f'<span><i style="background:{c}"></i>{_esc(name)}</span>'
        for name, c in (
            ("decided by tagger", COLOURS[SOURCE_TAGGER]),
            ("decided by MLLM", COLOURS[SOURCE_MLLM]),
            ("gold (dashed)", COLOURS[SOURCE_GOLD]),
        )
    )
    more = ""
    if limit is not None and len(results) > limit:
        more = f"<p>showing the first {limit} of {len(results)} samples</p>"
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_esc(title)}</h1><table class='summary'>{table}</table>"
        f"<div class='legend'>{legend}</div>{more}"
        + _curve_block(results, gold, guarantee)
        + _filter(shown, gold)
        + "<hr><div class='samples'>"
        + "".join(sections)
        + "</div></body></html>"
    )


def _filter(shown: Sequence[SampleResult], gold: Mapping[str, Sample] | None) -> str:
    """Radio buttons that hide the other posts (CSS ``:checked``; no script)."""
    options = [("all", f"all ({len(shown)})")]
    if gold is not None:
        errors = sum(
            1
            for r in shown
            if r.id in gold and {e.key for e in r.entities} != {e.key for e in gold[r.id].entities}
        )
        options.append(("err", f"errors only ({errors})"))
    if any(r.gate is not None for r in shown):
        delegated = sum(1 for r in shown if r.gate is not None and r.gate.delegate_sample)
        options.append(("del", f"delegated only ({delegated})"))
    if len(options) == 1:
        return ""
    buttons = "".join(
        f'<input type="radio" name="show" id="show-{key}"{" checked" if key == "all" else ""}>'
        f'<label for="show-{key}">{_esc(text)}</label>'
        for key, text in options
    )
    return f"<span class='filter'>show: </span>{buttons}"


def _curve_block(
    results: Sequence[SampleResult],
    gold: Mapping[str, Sample] | None,
    guarantee: Mapping[str, Any] | None,
) -> str:
    """The gate's risk-coverage curve over all results (not only the shown ones)."""
    if gold is None:
        return ""
    from refineg_report.curve import curve_png, risk_coverage

    curve = risk_coverage(results, gold)
    if curve is None:
        return ""
    url = curve_png(curve, guarantee)
    if url is None:
        return (
            "<p class='curve'>the gate's risk-coverage curve needs matplotlib: "
            "pip install 'refineg[report]'</p>"
        )
    return f"<div class='curve'><img src='{url}' alt='gate risk-coverage curve'></div>"


def write_report(
    results: Sequence[SampleResult],
    out: Path,
    gold: Mapping[str, Sample] | None = None,
    **kwargs,
) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_report(results, gold, **kwargs), encoding="utf-8")
    return out
