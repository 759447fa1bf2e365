"""The built-in format plugins: thin classes over the readers and writers."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from refineg_core.formats.base import Dataset, DatasetFormat
from refineg_core.formats.conll import read_conll, write_conll
from refineg_core.formats.native import read_jsonl, write_jsonl
from refineg_core.interfaces import PluginOptions
from refineg_core.types import Sample
from refineg_formats.ccks import read_ccks, write_ccks
from refineg_formats.twitter import read_twitter_gmner, write_twitter_gmner


class TwitterGmnerFormat(DatasetFormat):
    """Twitter-GMNER: CoNLL with ``IMGID:`` lines, VOC XML boxes in ``xml_dir``."""

    class Options(PluginOptions):
        xml_dir: Path | None = None  # default: <folder of the file>/xml
        images_dir: Path | None = None

    def read(self, path: Path) -> Dataset:
        o = self.options
        return read_twitter_gmner(path, xml_dir=o.xml_dir, images_dir=o.images_dir)

    def write(self, samples: Iterable[Sample], path: Path) -> None:
        write_twitter_gmner(samples, path)


class CcksFormat(DatasetFormat):
    """CCKS 2025 GMNER JSON: the texts file, with the entities JSON beside it."""

    class Options(PluginOptions):
        entities: Path | None = None
        images_dir: Path | None = None

    def read(self, path: Path) -> Dataset:
        return read_ccks(path, self.options.entities, images_dir=self.options.images_dir)

    def write(self, samples: Iterable[Sample], path: Path) -> None:
        write_ccks(samples, path)


class ConllFormat(DatasetFormat):
    """Plain CoNLL ``token<TAB>tag``; no images, no boxes (regions unknown)."""

    class Options(PluginOptions):
        scheme: Literal["BIO", "BIOES"] = "BIO"  # for writing; reading accepts both
        id_prefix: str | None = None  # sample ids <prefix>-<n> (default: file stem)

    def read(self, path: Path) -> Dataset:
        return read_conll(path, id_prefix=self.options.id_prefix)

    def write(self, samples: Iterable[Sample], path: Path) -> None:
        write_conll(samples, path, scheme=self.options.scheme)


class JsonlFormat(DatasetFormat):
    """refineg's native JSONL (the format of every stage's output)."""

    class Options(PluginOptions):
        images_dir: Path | None = None  # image paths must lie inside (default: the file's folder)

    def read(self, path: Path) -> Dataset:
        return read_jsonl(path, images_dir=self.options.images_dir)

    def write(self, samples: Iterable[Sample], path: Path) -> None:
        write_jsonl(samples, path)
