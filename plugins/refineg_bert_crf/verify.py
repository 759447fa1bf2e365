"""Check a saved tagger's files against its manifest without re-hashing unchanged files.

Why: every load used to SHA-256 every file, the weights included (91 MB for
MiniLM, 438 MB for MPNet), to catch a swapped or truncated file. The digest
of a file that has not changed since it was last hashed is already known, so
a stamp beside the tagger (``inference/verified.json``, a cache like the ONNX
export) remembers, per file, the stat identity it had when its content was
last hashed (size, mtime, ctime, inode, device) and the digest found. A file
whose stat identity still matches its stamp is taken at the stamped digest;
anything else (a new copy, a rewrite, a ``touch``) is hashed again. ``ctime``
is set by the kernel on every write and cannot be set back by a user, so a
changed file always misses the stamp (git decides "unchanged" the same way).

A missing, unreadable or foreign stamp just means hashing everything, as
before; a read-only folder means hashing on every load.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from refineg_core.runstore import atomic_write

log = logging.getLogger(__name__)

STAMP = "verified.json"
STAMP_VERSION = 1
#: Files changed this close before the stamp was written are hashed again next time.
RACY_NS = 2_000_000_000


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def identity(st: os.stat_result) -> list[int]:
    """What changes whenever a file's content may have changed."""
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def read_stamp(path: Path) -> tuple[dict[str, dict], int]:
    """The stamp's entries and when it was written (ns); nothing when unreadable."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}, 0
    if not isinstance(doc, dict) or doc.get("version") != STAMP_VERSION:
        return {}, 0
    files, written = doc.get("files"), doc.get("written_ns")
    if not isinstance(files, dict) or not isinstance(written, int):
        return {}, 0
    return files, written


def write_stamp(path: Path, files: Mapping[str, dict]) -> None:
    """Write the stamp atomically; a folder we cannot write to only costs hashing later."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as fh:
            json.dump(
                {"version": STAMP_VERSION, "written_ns": time.time_ns(), "files": dict(files)}, fh
            )
    except OSError as exc:
        log.debug("cannot write %s (%s): files are hashed on every load", path, exc)


def _trusted(entry: object, ident: list[int], written_ns: int) -> str | None:
    """The stamped digest when ``entry`` still describes the file, else None.

    A file changed within ``RACY_NS`` before the stamp was written could change
    again within the same timestamp tick without its stat moving ("racy git"),
    so it is hashed once more and trusted only from a later stamp on.
    """
    if not isinstance(entry, dict) or entry.get("stat") != ident:
        return None
    digest = entry.get("sha256")
    if not isinstance(digest, str) or ident[2] >= written_ns - RACY_NS:
        return None
    return digest


def digests(directory: Path, names: Iterable[str], stamp: Path) -> dict[str, str]:
    """SHA-256 of each file in ``names`` (relative to ``directory``), hashing only
    the files whose stat identity differs from ``stamp``; the stamp is refreshed
    when anything had to be hashed (other files' entries are kept).

    Missing files are left out of the result (the caller reports them).
    """
    old, written_ns = read_stamp(stamp)
    out: dict[str, str] = {}
    fresh: dict[str, dict] = {}
    hashed = False
    for rel in names:
        path = directory / rel
        try:
            st = path.stat()
        except OSError:
            continue
        ident = identity(st)
        digest = _trusted(old.get(rel), ident, written_ns)
        if digest is None:
            hashed = True
            digest = sha256_file(path)
            if identity(path.stat()) != ident:  # written while we read it: no stamp
                out[rel] = digest
                continue
        out[rel] = digest
        fresh[rel] = {"stat": ident, "sha256": digest}
    if hashed:
        write_stamp(stamp, {**old, **fresh})
    return out


def remember(directory: Path, digests_: Mapping[str, str], stamp: Path) -> None:
    """Stamp files just hashed by their writer (``save``), so later loads skip them."""
    fresh = {}
    for rel, digest in digests_.items():
        try:
            fresh[rel] = {"stat": identity((directory / rel).stat()), "sha256": digest}
        except OSError:
            continue
    write_stamp(stamp, fresh)
