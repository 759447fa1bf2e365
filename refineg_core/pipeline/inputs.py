"""A run's data: the configured splits, loaded or streamed, and their warnings.

One object owns every read of ``[data]``: a split is loaded once, a corpus
streams, each digest comes from one validating pass, and every warning lands
in ``data-warnings.log``. The ``Worker`` holds it (a Ray actor builds its own).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from refineg_core.config import Config, DataSource
from refineg_core.errors import ConfigError
from refineg_core.formats import Dataset, iter_source, load_source
from refineg_core.pipeline.fingerprint import samples_digest
from refineg_core.runstore import write_text
from refineg_core.types import Sample

#: A split that is another one's data when it is not configured itself.
FALLBACK = {"pool": "train", "gold": "predict"}


class Inputs:
    """The configured splits of one run, each loaded at most once."""

    def __init__(self, config: Config, *, log: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.log = log or (lambda msg: None)
        self.warnings: list[str] = []
        self.warnings_file: Path | None = None  # set once the run directory exists
        self._datasets: dict[str, Dataset | None] = {}
        self._stats: dict[str, tuple[str, int]] = {}

    def source(self, key: str) -> DataSource | None:
        source: DataSource | None = getattr(self.config.data, key)
        fallback = FALLBACK.get(key)
        return self.source(fallback) if source is None and fallback else source

    def dataset(self, key: str) -> Dataset | None:
        """A configured split by name (train, dev, predict, gold, pool), loaded once."""
        if key not in self._datasets:
            source: DataSource | None = getattr(self.config.data, key)
            fallback = FALLBACK.get(key)
            if source is None and fallback:  # the same data, read once
                self._datasets[key] = self.dataset(fallback)
            else:
                self._datasets[key] = self.load(source, f"data.{key}") if source else None
        return self._datasets[key]

    def require(self, key: str) -> Dataset:
        ds = self.dataset(key)
        if ds is None:
            raise ConfigError(f"this stage needs data.{key}", where=f"data.{key}")
        return ds

    def load(self, source: DataSource, config_key: str = "data") -> Dataset:
        ds = load_source(source, config_key=config_key)
        self.note(source, ds.warnings)
        return ds

    def iter_samples(self, key: str) -> Iterator[Sample]:
        """A split streamed (its warnings were recorded by ``source_stats``)."""
        return iter_source(self._required_source(key), [], config_key=f"data.{key}")

    def source_stats(self, key: str) -> tuple[str, int]:
        """(digest, count) of a split, from one validating pass (once per run)."""
        if key not in self._stats:
            source = self._required_source(key)
            warnings: list[str] = []
            count = 0

            def counted() -> Iterator[Sample]:
                nonlocal count
                for sample in iter_source(source, warnings, config_key=f"data.{key}"):
                    count += 1
                    yield sample

            digest = samples_digest(counted())
            self.note(source, warnings)
            self._stats[key] = (digest, count)
        return self._stats[key]

    def _required_source(self, key: str) -> DataSource:
        source = self.source(key)
        if source is None:
            raise ConfigError(f"this stage needs data.{key}", where=f"data.{key}")
        return source

    def note(self, source: DataSource, warnings: Sequence[str]) -> None:
        if warnings:
            self.warnings.extend(warnings)
            self.write_warnings()
            where = Path(self.config.run_dir) / "data-warnings.log"
            self.log(f"{source.path}: {len(warnings)} data warnings (see {where})")

    def write_warnings(self) -> None:
        """Rewritten, not appended: it describes this run's data only."""
        if self.warnings_file is not None and self.warnings:
            write_text(self.warnings_file, "\n".join(self.warnings) + "\n")
