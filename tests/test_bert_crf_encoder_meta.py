"""The tokenizer cached for fast loads tokenises exactly as transformers' fast tokenizer."""

from __future__ import annotations

import pytest
from refineg_bert_crf import encoder_meta
from refineg_bert_crf.model import SentenceEncoder

from refineg_core.formats import load_dataset


def test_cached_backend_tokenises_real_tweets_as_transformers(minilm_path, twitter_dir):
    from transformers import AutoConfig, AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(minilm_path))
    meta = encoder_meta.from_transformers(hf, AutoConfig.from_pretrained(str(minilm_path)))
    rust = encoder_meta.RustTokenizer(meta)
    sentences = [s.tokens for s in load_dataset(twitter_dir / "dev.txt").samples]
    sentences += [
        ["\u200b", "x"],  # a word the tokenizer maps to nothing
        ["[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]"],  # special tokens as words
        ["Ünïcödé", "😀", "北京", "ÉCOLE"],
        [],
    ]
    for max_length in (128, 12):  # 12: long tweets split into several windows
        want = SentenceEncoder(hf, max_length, meta.max_position_embeddings)
        got = SentenceEncoder(rust, max_length, meta.max_position_embeddings)
        assert (got.prefix, got.suffix, got.unk, got.pad) == (
            want.prefix,
            want.suffix,
            want.unk,
            want.pad,
        )
        assert got.encode(sentences) == want.encode(sentences)
    assert meta.hidden_size == 384 and meta.max_position_embeddings == 512


def test_the_cache_name_follows_the_encoder_files_and_transformers_version(monkeypatch):
    files = {
        "encoder/tokenizer.json": {"sha256": "a"},
        "encoder/config.json": {"sha256": "b"},
        "weights.safetensors": {"sha256": "c"},
    }
    name = encoder_meta.meta_name(files)
    assert encoder_meta.meta_name({**files, "weights.safetensors": {"sha256": "d"}}) == name
    assert encoder_meta.meta_name({**files, "encoder/tokenizer.json": {"sha256": "x"}}) != name
    monkeypatch.setattr(encoder_meta, "transformers_version", lambda: "0.0.1")
    assert encoder_meta.meta_name(files) != name


@pytest.mark.parametrize("text", ["", "{", '{"version": 99}', '{"version": 1, "oops": 1}'])
def test_an_unreadable_cache_is_ignored(tmp_path, text):
    path = tmp_path / "encoder-meta.x.json"
    path.write_text(text)
    assert encoder_meta.read(path) is None
    assert encoder_meta.read(tmp_path / "missing.json") is None
