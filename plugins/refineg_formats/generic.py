"""The generic built-in formats: plain CoNLL and refineg's native JSONL.

Each format plugin lives in its own module so that loading one imports only
its own reader.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

from refineg_core.formats.base import Dataset, DatasetFormat, first_line
from refineg_core.formats.native import iter_jsonl_samples, read_jsonl, write_jsonl
from refineg_core.interfaces import PluginOptions
from refineg_core.types import Sample
from refineg_formats.conll_read import read_conll
from refineg_formats.conll_write import conll_problem, write_conll

#: File names a CoNLL file usually has.
_CONLL_SUFFIXES = (".conll", ".bio", ".iob", ".tsv", ".txt")
#: A CoNLL tag in the last column.
_TAG = re.compile(r"O|[BIES]-\S+")


class ConllFormat(DatasetFormat):
    """Plain CoNLL ``token<TAB>tag``; no images, no boxes (regions unknown)."""

    checks_samples = True

    class Options(PluginOptions):
        scheme: Literal["BIO", "BIOES"] = "BIO"  # for writing; reading accepts both
        id_prefix: str | None = None  # sample ids <prefix>-<n> (default: file stem)

    @classmethod
    def recognises(cls, path: Path) -> bool:
        """A ``.conll``/``.bio``/``.iob``/``.tsv``/``.txt`` file, or one whose first
        line ends in a tag (``O``, ``B-PER``); never a Twitter-GMNER file (``IMGID:``)."""
        line = first_line(path)
        if line.startswith("IMGID:") or Path(path).suffix in (".json", ".jsonl"):
            return False
        fields = line.split()
        tagged = len(fields) >= 2 and _TAG.fullmatch(fields[-1]) is not None
        return Path(path).suffix.lower() in _CONLL_SUFFIXES or tagged

    reads_limit = True  # read() stops after ``limit`` samples

    @classmethod
    def unwritable(cls, sample: Sample) -> str | None:
        return conll_problem(sample)

    def read(self, path: Path, limit: int | None = None) -> Dataset:
        return read_conll(path, id_prefix=self.options.id_prefix, limit=limit)

    def write(self, samples: Iterable[Sample], path: Path) -> None:
        write_conll(samples, path, scheme=self.options.scheme)


class JsonlFormat(DatasetFormat):
    """refineg's native JSONL (the format of every stage's output); it can write any
    sample (``unwritable`` is None), but its reader refuses what another output
    format of the run could not write."""

    checks_samples = True
    output_file = "final.jsonl"

    class Options(PluginOptions):
        images_dir: Path | None = None  # image paths must lie inside (default: the file's folder)

    @classmethod
    def recognises(cls, path: Path) -> bool:
        return Path(path).suffix == ".jsonl"

    reads_limit = True  # read() stops after ``limit`` samples

    def read(self, path: Path, limit: int | None = None) -> Dataset:
        return read_jsonl(path, images_dir=self.options.images_dir, limit=limit)

    def iter_read(
        self, path: Path, warnings: list[str], limit: int | None = None
    ) -> Iterator[Sample]:
        samples = iter_jsonl_samples(path, warnings, images_dir=self.options.images_dir)
        return itertools.islice(samples, limit)

    def write(self, samples: Iterable[Sample], path: Path) -> None:
        write_jsonl(samples, path)
