"""Duplicate sample ids in a stream, in about 12 bytes per id (a dict of ids would
take ~130): a 64-bit hash and line per id, recent ones in a dict merged every 4,096
ids into sorted numpy arrays."""

from __future__ import annotations

import hashlib

import numpy as np

_BATCH = 1 << 12


def _hash64(sample_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(sample_id.encode(), digest_size=8).digest(), "little")


class SeenIds:
    """``add(id, line)`` returns the line where ``id`` was seen before, or None."""

    def __init__(self) -> None:
        self._recent: dict[int, int] = {}
        self._hashes = np.zeros(0, dtype=np.uint64)
        self._lines = np.zeros(0, dtype=np.uint32)

    def add(self, sample_id: str, line: int) -> int | None:
        h = _hash64(sample_id)
        before = self._recent.get(h)
        if before is not None:
            return before
        if self._hashes.size:
            i = int(np.searchsorted(self._hashes, np.uint64(h)))
            if i < self._hashes.size and int(self._hashes[i]) == h:
                return int(self._lines[i])
        self._recent[h] = line
        if len(self._recent) >= _BATCH:
            self._merge()
        return None

    def _merge(self) -> None:
        """Insert the recent batch into the sorted arrays (no sort of the whole)."""
        n = len(self._recent)
        hashes = np.fromiter(self._recent.keys(), np.uint64, n)
        lines = np.fromiter(self._recent.values(), np.uint32, n)
        order = np.argsort(hashes)
        at = np.searchsorted(self._hashes, hashes[order])
        self._hashes = np.insert(self._hashes, at, hashes[order])
        self._lines = np.insert(self._lines, at, lines[order])
        self._recent = {}
