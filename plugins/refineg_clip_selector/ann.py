"""Approximate nearest neighbours for pools past what a dense product serves fast.

An HNSW graph from ``usearch`` (inner product on the L2-normalised vectors)
proposes candidates; the selector then scores only those exactly. The graph
is saved next to the embedding cache, keyed by the vectors' content, so a pool
is indexed once across runs. ``usearch`` was chosen by measurement against
``hnswlib`` and ``faiss-cpu`` (benchmarks/RESULTS.md, "Batched selection").
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from refineg_core.errors import PluginError

log = logging.getLogger(__name__)

#: HNSW build and search settings (connectivity 16, wide beams: recall over speed).
CONNECTIVITY = 16
EXPANSION_ADD = 128
EXPANSION_SEARCH = 128


class AnnIndex:
    """Row ids of the (approximately) ``count`` best inner products per query."""

    def __init__(self, vectors: np.ndarray, *, cache_dir: Path | None, name: str) -> None:
        try:
            from usearch.index import Index
        except ImportError:
            raise PluginError(
                "index = 'ann' needs usearch: pip install 'refineg[ann]' (or usearch)",
                where="selector.options.index",
            ) from None
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.size = len(vectors)
        self._vectors = vectors  # a reference: asked for all of it, rank it exactly
        digest = hashlib.sha256(vectors.tobytes()).hexdigest()[:16]
        path = cache_dir / "ann" / f"{name}-{digest}.usearch" if cache_dir else None
        self._index = Index(
            ndim=vectors.shape[1],
            metric="ip",
            dtype="f32",
            connectivity=CONNECTIVITY,
            expansion_add=EXPANSION_ADD,
            expansion_search=EXPANSION_SEARCH,
        )
        self.loaded = False
        if path is not None and path.is_file():
            try:
                self._index.load(str(path))
                self.loaded = len(self._index) == self.size
            except (OSError, RuntimeError, ValueError) as exc:
                log.warning("ANN index %s unreadable (%s); rebuilding", path, exc)
        if not self.loaded:
            self._index.reset()
            if self.size:
                self._index.add(np.arange(self.size), vectors)
            if path is not None:
                self._save(path)

    def _save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        try:
            self._index.save(tmp)
            os.replace(tmp, path)
        except (OSError, RuntimeError) as exc:
            log.warning("could not save ANN index %s: %s", path, exc)
            Path(tmp).unlink(missing_ok=True)

    def search(self, queries: np.ndarray, count: int) -> list[np.ndarray]:
        """Per query, the ids found (at most ``count``, best first)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if len(queries) == 0 or self.size == 0:
            return [np.zeros(0, dtype=np.int64) for _ in queries]
        if count >= self.size:  # HNSW need not reach every node; the whole pool is exact
            scores = queries @ self._vectors.T
            return list(np.argsort(-scores, axis=1, kind="stable").astype(np.int64))
        found = self._index.search(queries, count)
        if not hasattr(found, "counts"):  # usearch answers one query with a flat Matches
            return [np.asarray(found.keys, dtype=np.int64).reshape(-1)]
        keys = np.asarray(found.keys, dtype=np.int64).reshape(len(queries), -1)
        counts = np.asarray(found.counts).reshape(len(queries))
        return [keys[i, : counts[i]] for i in range(len(queries))]
