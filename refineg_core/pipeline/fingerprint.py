"""Stage fingerprints: a record of exactly what made a stage's output.

A stage reuses its output only while every input that shapes it is unchanged
(data digests, plugins and options, settings and prompts, the backend's
identity, the upstream output); otherwise it recomputes and the log says why
("uncertainty.options.threshold changed 0.4 -> 0.99"). The records
(``stages/<stage>.json``) are the run store's, re-exported here.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from refineg_core.formats.base import Dataset
from refineg_core.formats.native import sample_to_dict
from refineg_core.runstore import (
    StageRecord,
    StageStore,
    file_digest,
    read_record,
    write_record,
)
from refineg_core.types import Sample

__all__ = [
    "Fingerprint",
    "Freshness",
    "StageRecord",
    "StageStore",
    "dataset_digest",
    "digest_of",
    "file_digest",
    "flatten",
    "freshness",
    "read_record",
    "samples_digest",
    "tree_digest",
    "write_record",
]

#: Parts whose values are digests: a change is reported without the values.
_DIGEST_PREFIXES = ("data.", "upstream.", "tagger.saved")


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys with JSON-able leaves (lists kept whole)."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k in sorted(value, key=str):
            key = f"{prefix}.{k}" if prefix else str(k)
            out.update(flatten(value[k], key))
        return out
    return {prefix: json.loads(json.dumps(value, default=str))}


def digest_of(value: Any) -> str:
    return hashlib.sha256(
        json.dumps(value, sort_keys=True, default=str, ensure_ascii=False).encode()
    ).hexdigest()


def dataset_digest(dataset: Dataset | None) -> str | None:
    """Digest of the samples as read (covers XML box files and ``limit``, unlike the
    file's bytes); an image counts by path, size and modification time."""
    return None if dataset is None else samples_digest(dataset.samples)


def samples_digest(samples: Iterable[Sample]) -> str:
    h = hashlib.sha256()
    for sample in samples:
        h.update(json.dumps(sample_to_dict(sample), sort_keys=True, default=str).encode())
        img = sample.image
        if img is not None and img.path is not None:
            try:
                st = os.stat(img.path)
                h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
            except OSError:
                h.update(b"missing")
        h.update(b"\n")
    return h.hexdigest()


def tree_digest(directory: Path, *, skip: Iterable[str] = ()) -> str | None:
    """Digest of every file under ``directory`` but the top-level folders ``skip``."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    skipped = set(skip)
    h = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        relative = path.relative_to(directory)
        if relative.parts[0] in skipped:
            continue
        h.update(str(relative).encode() + b"\0")
        h.update((file_digest(path) or "").encode() + b"\n")
    return h.hexdigest()


@attrs.frozen
class Fingerprint:
    """The flat inputs of one stage and their digest."""

    stage: str
    parts: Mapping[str, Any] = attrs.field(converter=lambda p: dict(sorted(p.items())))

    @property
    def digest(self) -> str:
        return digest_of(self.parts)

    def changes(self, old: Mapping[str, Any]) -> list[str]:
        """Human-readable differences from an earlier record's parts."""
        out = []
        for key in sorted(set(self.parts) | set(old)):
            if key not in old:
                out.append(f"{key} is new")
            elif key not in self.parts:
                out.append(f"{key} was removed")
            elif self.parts[key] != old[key]:
                if key.startswith(_DIGEST_PREFIXES):
                    out.append(f"{key} changed")
                else:
                    out.append(f"{key} changed {_short(old[key])} -> {_short(self.parts[key])}")
        return out


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


@attrs.frozen
class Freshness:
    """Whether a stage's output on disk may be reused, and if not, why."""

    state: str  # "fresh", "stale", "partial" (same inputs, unfinished) or "missing"
    reasons: tuple[str, ...] = ()

    def why(self, limit: int = 4) -> str:
        more = f" (+{len(self.reasons) - limit} more)" if len(self.reasons) > limit else ""
        return "; ".join(self.reasons[:limit]) + more


def freshness(fp: Fingerprint, record: StageRecord | None) -> Freshness:
    if record is None:
        return Freshness("missing")
    if record.digest != fp.digest:
        return Freshness("stale", tuple(fp.changes(record.parts)) or ("inputs changed",))
    if record.pending:
        return Freshness(
            "partial", (f"{record.pending} samples failed or were skipped; a rerun retries them",)
        )
    if not record.complete:
        return Freshness("partial", ("interrupted or not finished",))
    return Freshness("fresh")
