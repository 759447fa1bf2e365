"""Saved files get the umask's mode, not the 0600 of mkstemp or safetensors."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from refineg_core.filemodes import current_umask, respect_umask
from refineg_core.types import Entity, Sample


@pytest.fixture
def umask_002():
    old = os.umask(0o002)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_current_umask_reads_without_changing_it(umask_002):
    assert current_umask() == 0o002
    assert current_umask() == 0o002


def test_safetensors_file_gets_the_umask_mode(tmp_path: Path, umask_002):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(2)}, str(path))
    assert mode(path) == 0o600  # the cause: safetensors ignores the umask
    respect_umask(path)
    assert mode(path) == 0o664


@pytest.mark.slow
def test_saved_bert_crf_tagger_is_readable_like_its_folder(minilm_path, tmp_path, umask_002):
    torch = pytest.importorskip("torch")
    from refineg_bert_crf.tagger import BertCrfTagger

    from refineg_core.labels import LabelSet

    torch.set_num_threads(2)
    labels = LabelSet({"PER": "person", "LOC": "place"})
    texts = [
        ("Obama visits Paris", 0, 2),
        ("Merkel left Berlin", 0, 2),
        ("Paris greets Obama", 2, 0),
    ]
    train = []
    for i, (text, per, loc) in enumerate(texts):
        tokens = tuple(text.split())
        ents = (Entity(per, per + 1, "PER", tokens[per]), Entity(loc, loc + 1, "LOC", tokens[loc]))
        train.append(Sample(f"s{i}", tokens, text, entities=ents))
    options = BertCrfTagger.Options(
        encoder=str(minilm_path), epochs=1, batch_size=4, max_length=16, device="cpu"
    )
    tagger = BertCrfTagger(options, labels)
    tagger.fit(train)
    tagger.save(tmp_path / "tagger")
    files = [p for p in (tmp_path / "tagger").rglob("*") if p.is_file()]
    assert any(p.name.endswith(".safetensors") for p in files)
    assert {p.name: mode(p) for p in files} == {p.name: 0o664 for p in files}
