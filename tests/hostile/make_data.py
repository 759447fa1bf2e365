"""Write the files of tests/hostile/data/ (run once; the files are committed).

Each case is a folder named by its id; ``cases.toml`` says what is done with
it and what must happen. Files too big to commit (a 2 MB line, deep nesting)
are produced by the test at run time instead (``generate`` in cases.toml).
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
from tests.imagefiles import png_bomb_bytes  # noqa: E402

DATA = HERE / "data"
TWEET = "Obama\tB-PER\nvisits\tO\nParis\tB-LOC\n"
SIZE = "<size><width>100</width><height>80</height><depth>3</depth></size>"


def obj(name: str, x1, y1, x2, y2) -> str:
    return (
        f"<object><name>{name}</name><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
        f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
    )


def voc(body: str, size: str = SIZE) -> str:
    return f"<annotation>{size}{body}</annotation>"


def jsonl(*records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


GOOD = {"id": "s1", "tokens": ["Obama", "visits", "Paris"], "entities": []}


def ent(**kw):
    return {"start": 0, "end": 1, "type": "PER", "text": "Obama", "boxes": [], **kw}


FILES: dict[str, dict[str, str | bytes]] = {
    "conll-empty": {"data.conll": ""},
    "conll-bom-crlf": {"data.conll": "\ufeffObama\tB-PER\r\nvisits\tO\r\n\r\nParis\tB-LOC\r\n"},
    "conll-no-tab": {"data.conll": "Obama\tB-PER\nvisits O\n"},
    "conll-unknown-tag": {"data.conll": "Obama\tB-PER\nvisits\tX-PER\n"},
    "conll-i-without-b": {"data.conll": "visits\tO\nObama\tI-PER\n"},
    "conll-non-utf8": {"data.conll": "Obama\tB-PER\nM\xfcnchen\tB-LOC\n".encode("latin-1")},
    "conll-empty-token": {"data.conll": "Obama\tB-PER\n\tB-LOC\n"},
    "conll-nul-bytes": {"data.conll": "Oba\x00ma\tB-PER\n"},
    "twitter-no-imgid": {"split.txt": TWEET, "xml/.keep": ""},
    "twitter-empty-imgid": {"split.txt": "IMGID:\n" + TWEET, "xml/.keep": ""},
    "twitter-imgid-no-tokens": {"split.txt": "IMGID:1\nIMGID:2\n" + TWEET, "xml/.keep": ""},
    "twitter-imgid-absolute": {
        "split.txt": "IMGID:/tmp/somewhere/x\n" + TWEET,
        "images/keep.txt": "",
        "xml/.keep": "",
    },
    "twitter-imgid-dotdot": {
        "split.txt": "IMGID:../outside/secret\n" + TWEET,
        "images/keep.txt": "",
        "outside/secret.xml": voc(obj("Obama", 1, 1, 9, 9)),
        "xml/.keep": "",
    },
    "twitter-duplicate-imgid": {
        "split.txt": f"IMGID:7\n{TWEET}\nIMGID:7\n{TWEET}",
        "xml/.keep": "",
    },
    "twitter-no-xml-folder": {"split.txt": "IMGID:7\n" + TWEET},
    "twitter-xml-dir-missing": {"split.txt": "IMGID:7\n" + TWEET},
    "twitter-xml-bomb": {
        "split.txt": "IMGID:7\n" + TWEET,
        "xml/7.xml": '<?xml version="1.0"?>\n<!DOCTYPE lolz [\n <!ENTITY lol "lol">\n'
        + "".join(
            f' <!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10 if i > 1 else "&lol;" * 10}">\n'
            for i in range(1, 10)
        )
        + "]>\n"
        + voc(obj("&lol9;", 1, 1, 9, 9)),
    },
    "twitter-xml-external-entity": {
        "split.txt": "IMGID:7\n" + TWEET,
        "xml/7.xml": '<?xml version="1.0"?>\n<!DOCTYPE a [<!ENTITY xxe SYSTEM '
        '"file:///etc/passwd">]>\n' + voc(obj("&xxe;", 1, 1, 9, 9)),
    },
    "twitter-xml-not-xml": {"split.txt": "IMGID:7\n" + TWEET, "xml/7.xml": "{not: xml} <<"},
    "twitter-box-outside-image": {
        "split.txt": "IMGID:7\n" + TWEET,
        "xml/7.xml": voc(obj("Obama", 90, 70, 150, 120) + obj("Paris", 200, 200, 300, 300)),
    },
    "twitter-negative-size": {
        "split.txt": "IMGID:7\n" + TWEET,
        "xml/7.xml": voc(
            obj("Obama", 1, 1, 9, 9), "<size><width>-100</width><height>80</height></size>"
        ),
    },
    "twitter-inverted-box": {
        "split.txt": "IMGID:7\n" + TWEET,
        "xml/7.xml": voc(obj("Obama", 50, 10, 40, 20) + obj("Paris", "a", "b", "c", "d")),
    },
    "twitter-xml-unknown-object": {
        "split.txt": "IMGID:7\n" + TWEET,
        "xml/7.xml": voc(obj("Merkel", 1, 1, 9, 9)),
    },
    "jsonl-entities-null": {"data.jsonl": jsonl(GOOD, {**GOOD, "id": "s2", "entities": None})},
    "jsonl-string-box": {
        "data.jsonl": jsonl({**GOOD, "entities": [ent(boxes=[["1", "2", "30", "40"]])]})
    },
    "jsonl-start-zero": {"data.jsonl": jsonl({**GOOD, "entities": [ent(start="zero")]})},
    "jsonl-nan-box": {
        "data.jsonl": '{"id": "s1", "tokens": ["Obama"], "entities": [{"start": 0, "end": 1, '
        '"type": "PER", "boxes": [[NaN, 0, 5, 5]]}]}\n'
    },
    "jsonl-negative-box": {"data.jsonl": jsonl({**GOOD, "entities": [ent(boxes=[[9, 9, 1, 1]])]})},
    "jsonl-span-past-tokens": {"data.jsonl": jsonl({**GOOD, "entities": [ent(start=2, end=9)]})},
    "jsonl-duplicate-id": {"data.jsonl": jsonl(GOOD, GOOD)},
    "jsonl-not-object": {"data.jsonl": '["s1", "Obama"]\n'},
    "jsonl-bad-json": {"data.jsonl": jsonl(GOOD) + '{"id": "s2", "tokens": [\n'},
    "jsonl-negative-image-size": {
        "data.jsonl": jsonl({**GOOD, "image": {"id": "s1", "width": -5, "height": 10}})
    },
    "jsonl-image-absolute-path": {
        "data.jsonl": jsonl({**GOOD, "image": {"id": "s1", "path": "/etc/passwd"}}),
        "images/keep.txt": "",
    },
    "ccks-entities-wrong-shape": {
        "texts.json": json.dumps({"1": {"text": "Obama visits Paris"}, "2": {"text": "Hi"}}),
        "entities.json": '{\n "1": [{"name": "Obama", "label": "PER", "bnd": null}],\n'
        ' "2": "oops"\n}\n',
    },
    "ccks-item-wrong-shape": {
        "texts.json": json.dumps({"1": {"text": "Obama visits Paris"}}),
        "entities.json": json.dumps({"1": [["Obama", "PER"]]}),
    },
    "ccks-duplicate-key": {
        "texts.json": '{"1": {"text": "Obama visits"}, "1": {"text": "Paris"}}',
    },
    "ccks-not-object": {"texts.json": json.dumps([{"text": "Obama"}])},
    "ccks-bad-bnd": {
        "texts.json": json.dumps({"1": {"text": "Obama visits Paris"}}),
        "entities.json": json.dumps(
            {"1": [{"name": "Obama", "label": "PER", "bnd": {"xmin": "a", "ymin": 0}}]}
        ),
    },
    "ccks-name-not-in-text": {
        "texts.json": json.dumps({"1": {"text": "Obama visits Paris"}}),
        "entities.json": json.dumps({"1": [{"name": "Merkel", "label": "PER", "bnd": None}]}),
    },
    "ccks-entities-unknown-id": {
        "texts.json": json.dumps({"1": {"text": "Obama visits Paris"}}),
        "entities.json": json.dumps({"9": [{"name": "Obama", "label": "PER", "bnd": None}]}),
    },
    "image-decompression-bomb": {
        "split.txt": "IMGID:7\n" + TWEET,
        "xml/.keep": "",
        "images/7.png": png_bomb_bytes(),
    },
    "image-corrupt": {
        "split.txt": "IMGID:7\n" + TWEET,
        "xml/.keep": "",
        "images/7.jpg": b"\xff\xd8\xff\xe0 truncated",
    },
    "image-empty-file": {"split.txt": "IMGID:7\n" + TWEET, "xml/.keep": "", "images/7.png": b""},
    "eval-pred-entities-null": {
        "gold.jsonl": jsonl(GOOD),
        "pred.jsonl": jsonl({**GOOD, "entities": None}),
    },
    "eval-pred-string-box": {
        "gold.jsonl": jsonl(GOOD),
        "pred.jsonl": jsonl({**GOOD, "entities": [ent(boxes=[["x", "y", "z", "w"]])]}),
    },
    "eval-pred-start-zero": {
        "gold.jsonl": jsonl(GOOD),
        "pred.jsonl": jsonl({**GOOD, "entities": [ent(start="zero")]}),
    },
    "eval-pred-unknown-id": {"gold.jsonl": jsonl(GOOD), "pred.jsonl": jsonl({**GOOD, "id": "zz"})},
    "image-missing": {
        "split.txt": "IMGID:7\n" + TWEET,
        "xml/.keep": "",
        "images/6.png": b"",
    },
    "eval-gold-regions-unknown": {
        "gold.conll": "Obama\tB-PER\nvisits\tO\n",
        "pred.jsonl": jsonl({"id": "gold-0", "tokens": ["Obama", "visits"], "entities": []}),
    },
    "eval-empty-pred": {"gold.jsonl": jsonl({**GOOD, "entities": [ent()]}), "pred.jsonl": ""},
    "eval-unknown-format": {"gold.jsonl": jsonl(GOOD), "pred.jsonl": jsonl(GOOD)},
    "eval-tokens-differ": {
        "gold.jsonl": jsonl(GOOD),
        "pred.jsonl": jsonl({**GOOD, "tokens": ["Obama", "visits", "Paris", "!"]}),
    },
}


def image_bytes(mode: str, fmt: str, **save) -> bytes:
    """A small real image of ``mode`` saved as ``fmt`` (CMYK JPEG, 16-bit PNG...)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, (8, 6)).save(buf, format=fmt, **save)
    return buf.getvalue()


def animated_gif() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    frames = [Image.new("P", (8, 6), i) for i in range(3)]
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    return buf.getvalue()


def exif_rotated_jpeg() -> bytes:
    """8x6 stored pixels whose EXIF says: display rotated 90 degrees (6x8)."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6
    return image_bytes("RGB", "JPEG", exif=exif.tobytes())


WITH_IMAGE = {"split.txt": "IMGID:7\n" + TWEET, "xml/.keep": ""}

# Added for issue 19 (case 5 and the new hostile kinds): what is read can be written.
FILES.update(
    {
        "twitter-token-tab": {"split.txt": "IMGID:7\nObama\tB-PER\nvis\tits\tO\n", "xml/.keep": ""},
        "twitter-token-u2028": {
            "split.txt": "IMGID:7\nOba\u2028ma\tB-PER\nvisits\tO\n",
            "xml/.keep": "",
        },
        "twitter-token-nel": {
            "split.txt": "IMGID:7\nOba\x85ma\tB-PER\nvisits\tO\n",
            "xml/.keep": "",
        },
        "twitter-token-formfeed": {
            "split.txt": "IMGID:7\nOba\x0cma\tB-PER\nvisits\tO\n",
            "xml/.keep": "",
        },
        "twitter-multi-column": {"split.txt": "IMGID:7\nObama\tNNP\tB-PER\n", "xml/.keep": ""},
        "twitter-imgid-control-char": {"split.txt": "IMGID:7\t8\n" + TWEET, "xml/.keep": ""},
        "twitter-imgid-collide-after-strip": {
            "split.txt": f"IMGID:7\n{TWEET}\nIMGID: 7 \n{TWEET}",
            "xml/.keep": "",
        },
        "twitter-xml-is-directory": {"split.txt": "IMGID:7\n" + TWEET, "xml/7.xml/.keep": ""},
        "twitter-xml-utf16": {
            "split.txt": "IMGID:7\n" + TWEET,
            "xml/7.xml": voc(obj("Obama", 1, 1, 9, 9)).encode("utf-16"),
        },
        "conll-lone-cr": {"data.conll": "Obama\tB-PER\rvisits\tO\r"},
        "conll-zero-width-joiner": {
            "data.conll": "\U0001f468\u200d\U0001f469\tO\nBar\u200dack\tB-PER\n"
        },
        "conll-lowercase-tag": {"data.conll": "Obama\tb-per\n"},
        "conll-docstart": {"data.conll": "-DOCSTART-\tO\n\nObama\tB-PER\nvisits\tO\n"},
        "jsonl-token-tab": {
            "data.jsonl": jsonl(GOOD, {**GOOD, "id": "s2", "tokens": ["New\tYork"]})
        },
        "jsonl-lone-surrogate": {"data.jsonl": '{"id": "s1", "tokens": ["Oba\\ud800ma"]}\n'},
        "jsonl-id-path-separator": {"data.jsonl": jsonl({**GOOD, "id": "train/s1"})},
        "jsonl-ids-collide-int-str": {"data.jsonl": jsonl({**GOOD, "id": 1}, {**GOOD, "id": "1"})},
        "jsonl-bom-crlf-u2028": {
            "data.jsonl": "\ufeff"
            + json.dumps(GOOD)
            + "\r\n\r\n"
            + json.dumps({"id": "s2", "text": "Obama\u2028visits"}, ensure_ascii=False)
            + "\r\n"
        },
        "jsonl-utf16": {"data.jsonl": jsonl(GOOD).encode("utf-16")},
        "jsonl-huge-int-box": {
            "data.jsonl": '{"id": "s1", "tokens": ["Obama"], "entities": [{"start": 0, "end": 1, '
            '"type": "PER", "boxes": [[0, 0, 1' + "0" * 400 + ", 5]]}]}\n"
        },
        "jsonl-infinity-box": {
            "data.jsonl": '{"id": "s1", "tokens": ["Obama"], "entities": [{"start": 0, "end": 1, '
            '"type": "PER", "boxes": [[0, 0, Infinity, 5]]}]}\n'
        },
        "jsonl-huge-image-size": {
            "data.jsonl": jsonl({**GOOD, "image": {"id": "s1", "width": 10**30, "height": 5}})
        },
        "jsonl-entity-end-before-start": {
            "data.jsonl": jsonl({**GOOD, "entities": [ent(start=2, end=1)]})
        },
        "jsonl-empty-tokens": {"data.jsonl": jsonl({"id": "s1", "tokens": [], "text": ""})},
        "jsonl-token-imgid": {"data.jsonl": jsonl({**GOOD, "tokens": ["IMGID:9", "visits"]})},
        "jsonl-type-whitespace": {"data.jsonl": jsonl({**GOOD, "entities": [ent(type="PER ")]})},
        "ccks-empty-text": {"texts.json": json.dumps({"1": {"text": ""}, "2": {"text": "Obama"}})},
        "ccks-id-path-separator": {
            "texts.json": '{\n "1": {"text": "Obama"},\n "a/b": {"text": "Paris"}\n}\n'
        },
        "ccks-bom": {"texts.json": "\ufeff" + json.dumps({"1": {"text": "Obama visits"}})},
        "ccks-huge-int-bnd": {
            "texts.json": json.dumps({"1": {"text": "Obama visits Paris"}}),
            "entities.json": '{"1": [{"name": "Obama", "label": "PER", "bnd": {"xmin": 0, '
            '"ymin": 0, "xmax": 1' + "0" * 400 + ', "ymax": 5}}]}',
        },
        "image-is-directory": {**WITH_IMAGE, "images/7.png/.keep": ""},
        "image-cmyk-jpeg": {**WITH_IMAGE, "images/7.jpg": image_bytes("CMYK", "JPEG")},
        "image-16bit-png": {**WITH_IMAGE, "images/7.png": image_bytes("I;16", "PNG")},
        "image-palette-png": {**WITH_IMAGE, "images/7.png": image_bytes("P", "PNG")},
        "image-animated-gif": {**WITH_IMAGE, "images/7.gif": animated_gif()},
        "image-exif-rotated": {**WITH_IMAGE, "images/7.jpg": exif_rotated_jpeg()},
        "image-wrong-extension": {**WITH_IMAGE, "images/7.jpg": image_bytes("RGB", "PNG")},
        "eval-pred-duplicate-id": {"gold.jsonl": jsonl(GOOD), "pred.jsonl": jsonl(GOOD, GOOD)},
        "jsonl-box-outside-image": {
            "data.jsonl": jsonl(
                {
                    **GOOD,
                    "image": {"id": "s1", "width": 100, "height": 80},
                    "entities": [ent(boxes=[[-5, -5, 10, 10], [200, 200, 300, 300]])],
                }
            )
        },
        "image-png-50k-header": {**WITH_IMAGE, "images/7.png": png_bomb_bytes(50000, 50000)},
    }
)


def main() -> None:
    for case, files in FILES.items():
        for name, content in files.items():
            path = DATA / case / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_bytes(content.encode("utf-8"))
    print(f"{len(FILES)} cases written to {DATA}")


if __name__ == "__main__":
    main()
