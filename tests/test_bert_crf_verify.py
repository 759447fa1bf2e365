"""The manifest check's stat stamp: unchanged files are not re-hashed, changed ones always are."""

from __future__ import annotations

import hashlib
import os
import time

import pytest
from refineg_bert_crf import verify


@pytest.fixture
def counted(monkeypatch):
    """Every file ``verify`` hashes, in order."""
    seen: list[str] = []
    real = verify.sha256_file

    def sha(path):
        seen.append(path.name)
        return real(path)

    monkeypatch.setattr(verify, "sha256_file", sha)
    return seen


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_unchanged_files_are_taken_from_the_stamp(tmp_path, counted, monkeypatch):
    monkeypatch.setattr(verify, "RACY_NS", 0)  # no timestamp-tick guard in this test
    (tmp_path / "a.bin").write_bytes(b"alpha")
    (tmp_path / "b.bin").write_bytes(b"beta")
    stamp = tmp_path / "cache" / verify.STAMP
    first = verify.digests(tmp_path, ["a.bin", "b.bin"], stamp)
    assert first == {"a.bin": _sha(b"alpha"), "b.bin": _sha(b"beta")}
    assert counted == ["a.bin", "b.bin"] and stamp.is_file()
    counted.clear()
    assert verify.digests(tmp_path, ["a.bin", "b.bin"], stamp) == first
    assert counted == []  # nothing re-hashed


def test_a_rewrite_with_the_same_size_and_mtime_is_hashed_again(tmp_path, counted, monkeypatch):
    monkeypatch.setattr(verify, "RACY_NS", 0)
    path = tmp_path / "w.bin"
    path.write_bytes(b"0123456789")
    stamp = tmp_path / verify.STAMP
    verify.digests(tmp_path, ["w.bin"], stamp)
    st = path.stat()
    time.sleep(0.05)  # past the file system's timestamp tick (RACY_NS guards within a tick)
    path.write_bytes(b"9876543210")  # same size ...
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # ... and the old mtime put back
    counted.clear()
    assert verify.digests(tmp_path, ["w.bin"], stamp) == {"w.bin": _sha(b"9876543210")}
    assert counted == ["w.bin"]  # ctime moved: the stamp no longer vouches for it


def test_files_changed_just_before_the_stamp_are_not_trusted_yet(tmp_path, counted):
    """Racy files (changed within RACY_NS of the stamp) are hashed on the next check too."""
    (tmp_path / "a.bin").write_bytes(b"alpha")
    stamp = tmp_path / verify.STAMP
    verify.digests(tmp_path, ["a.bin"], stamp)
    verify.digests(tmp_path, ["a.bin"], stamp)
    assert counted == ["a.bin", "a.bin"]


def test_a_damaged_or_foreign_stamp_means_hashing_everything(tmp_path, counted, monkeypatch):
    monkeypatch.setattr(verify, "RACY_NS", 0)
    (tmp_path / "a.bin").write_bytes(b"alpha")
    stamp = tmp_path / verify.STAMP
    verify.digests(tmp_path, ["a.bin"], stamp)
    for text in ("{not json", '{"version": 99, "files": {}}', '{"version": 1, "files": []}'):
        stamp.write_text(text)
        counted.clear()
        assert verify.digests(tmp_path, ["a.bin"], stamp) == {"a.bin": _sha(b"alpha")}
        assert counted == ["a.bin"]
    # A stamp copied along with the folder describes other inodes: hashed again.
    other = tmp_path / "copy"
    other.mkdir()
    (other / "a.bin").write_bytes(b"alpha")
    (other / verify.STAMP).write_bytes(stamp.read_bytes())
    counted.clear()
    verify.digests(other, ["a.bin"], other / verify.STAMP)
    assert counted == ["a.bin"]


def test_missing_files_are_left_out_and_an_unwritable_stamp_is_harmless(tmp_path, counted):
    (tmp_path / "a.bin").write_bytes(b"alpha")
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the stamp's folder should be")
    out = verify.digests(tmp_path, ["a.bin", "gone.bin"], blocked / verify.STAMP)
    assert out == {"a.bin": _sha(b"alpha")}
