"""A content-keyed embedding store on disk, so a pool is embedded once across runs.

Vectors live under ``<cache_dir>/<namespace>/<model identity>/`` in immutable
``chunk-*.npz`` files (keys + matrix). Every ``index()`` that embeds something
new adds one chunk; nothing is ever rewritten, so two runs sharing a cache can
never corrupt each other (a chunk is written to a temp file, then renamed).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from refineg_core.runstore import atomic_write

log = logging.getLogger(__name__)


def content_key(data: bytes | str) -> str:
    """The sha256 of a string (UTF-8) or of raw bytes: the cache key of one item."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()


class EmbeddingStore:
    """key -> float32 vector, loaded lazily from a folder of chunks.

    Query vectors (``remember``) live in a bounded in-memory LRU beside the pool
    vectors, so selecting for millions of queries does not keep them all.
    """

    def __init__(
        self, root: Path | None, namespace: str, identity: str, *, max_recent: int = 200_000
    ) -> None:
        self.folder = Path(root) / namespace / identity if root is not None else None
        self._vectors: dict[str, np.ndarray] = {}
        self._recent: OrderedDict[str, np.ndarray] = OrderedDict()
        self._recent_lock = threading.Lock()
        self.max_recent = max_recent
        self._loaded = False

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if self.folder is None or not self.folder.is_dir():
            return
        for chunk in sorted(self.folder.glob("chunk-*.npz")):
            try:
                with np.load(chunk, allow_pickle=False) as data:
                    keys, vecs = data["keys"], data["vectors"]
            except (OSError, ValueError, KeyError) as exc:
                # A damaged chunk costs a re-embedding, never a crash.
                log.warning("embedding cache chunk %s unreadable (%s); ignored", chunk, exc)
                continue
            for key, vec in zip(keys.tolist(), vecs, strict=True):
                self._vectors[key] = vec

    def missing(self, keys: Iterable[str]) -> list[str]:
        self._load()
        seen: set[str] = set()
        out = []
        for k in keys:
            if k not in self and k not in seen:
                seen.add(k)
                out.append(k)
        return out

    def add(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Remember new vectors and persist them as one new chunk."""
        self._load()
        vectors = np.asarray(vectors, dtype=np.float32)
        for key, vec in zip(keys, vectors, strict=True):
            self._vectors[key] = vec
        if self.folder is None or not keys:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"chunk-{content_key(''.join(keys))[:16]}.npz"
        try:
            with atomic_write(self.folder / name, binary=True) as fh:
                np.savez(fh, keys=np.asarray(keys, dtype=str), vectors=vectors)
        except OSError as exc:
            log.warning("could not write embedding cache %s: %s", self.folder / name, exc)

    def remember(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Keep vectors in memory only (query embeddings: not worth a file each)."""
        self._load()
        with self._recent_lock:
            for key, vec in zip(keys, np.asarray(vectors, dtype=np.float32), strict=True):
                self._recent[key] = vec
                self._recent.move_to_end(key)
            while len(self._recent) > self.max_recent:
                self._recent.popitem(last=False)

    def get(self, keys: Sequence[str], dim: int) -> np.ndarray:
        self._load()
        out = np.zeros((len(keys), dim), dtype=np.float32)
        with self._recent_lock:
            for i, key in enumerate(keys):
                vec = self._vectors.get(key)
                out[i] = vec if vec is not None else self._recent[key]
        return out

    def __contains__(self, key: str) -> bool:
        self._load()
        return key in self._vectors or key in self._recent
