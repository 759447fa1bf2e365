"""Pick a reader by format name; the pipeline and CLI load every dataset through here."""

from __future__ import annotations

from pathlib import Path

from refineg_core.errors import DataError
from refineg_core.formats.base import Dataset
from refineg_core.formats.ccks import read_ccks
from refineg_core.formats.conll import read_conll
from refineg_core.formats.native import read_jsonl
from refineg_core.formats.twitter import read_twitter_gmner

FORMATS = ("twitter-gmner", "conll", "ccks", "jsonl")


def guess_format(path: Path) -> str:
    if path.suffix == ".jsonl":
        return "jsonl"
    if path.suffix == ".json":
        return "ccks"
    head = path.read_text(encoding="utf-8", errors="replace")[:200] if path.is_file() else ""
    return "twitter-gmner" if head.startswith("IMGID:") else "conll"


def load_dataset(
    path: Path | str,
    format: str | None = None,
    *,
    xml_dir: Path | str | None = None,
    images_dir: Path | str | None = None,
    entities: Path | str | None = None,
    limit: int | None = None,
) -> Dataset:
    path = Path(path)
    if not path.exists():
        raise DataError("file not found", where=str(path))
    fmt = format or guess_format(path)
    if fmt == "twitter-gmner":
        ds = read_twitter_gmner(path, xml_dir=xml_dir, images_dir=images_dir)
    elif fmt == "conll":
        ds = read_conll(path)
    elif fmt == "ccks":
        ds = read_ccks(path, entities, images_dir=images_dir)
    elif fmt == "jsonl":
        ds = read_jsonl(path)
    else:
        raise DataError(f"unknown data format {fmt!r}; known: {', '.join(FORMATS)}")
    if limit is not None:
        ds = Dataset(ds.samples[:limit], ds.warnings, ds.source)
    return ds
