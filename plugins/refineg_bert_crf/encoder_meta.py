"""What predicting from a cached ONNX export needs of transformers, cached without it.

Why: with the encoder in ONNX Runtime, transformers is still imported at load
for the tokenizer and two config numbers, and that import (it indexes every
model family it ships) was the largest part of loading a tagger. The fast
tokenizer transformers builds is a wrapper around a ``tokenizers.Tokenizer``
(Rust); its whole state serialises to JSON. Written once by a process that
built the real transformers tokenizer, and read back with ``tokenizers``
alone, it tokenises exactly as the wrapper does: the wrapper's batch call is
the backend's ``encode_batch`` with truncation and padding off.

The cache file (``inference/encoder-meta.<key>.json``) is named by the
digests of the saved ``encoder/`` files (as the manifest lists them) and the
transformers version that built it, so new tokenizer files or another
transformers version never reuse it. A missing or unreadable file only means
importing transformers as before.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

import attrs

from refineg_core.runstore import atomic_write

log = logging.getLogger(__name__)

META_VERSION = 1
PREFIX = "encoder-meta"


def transformers_version() -> str:
    try:
        return metadata.version("transformers")
    except metadata.PackageNotFoundError:
        return "none"


def meta_name(files: Mapping[str, Mapping]) -> str:
    """File name for the ``encoder/`` entries of a tagger manifest (``files``)."""
    parts = sorted(
        (rel, info["sha256"]) for rel, info in files.items() if rel.startswith("encoder/")
    )
    key = hashlib.sha256(
        json.dumps([META_VERSION, transformers_version(), parts]).encode()
    ).hexdigest()
    return f"{PREFIX}.{key[:20]}.json"


@attrs.frozen
class EncoderMeta:
    """Tokenizer backend (JSON) and the config numbers the head and windows need."""

    tokenizer_json: str
    unk_token_id: int | None
    pad_token_id: int | None
    split_special_tokens: bool
    hidden_size: int
    max_position_embeddings: int | None


def from_transformers(tokenizer, config) -> EncoderMeta:
    """Capture what a real transformers tokenizer and encoder config hold."""
    return EncoderMeta(
        tokenizer_json=tokenizer.backend_tokenizer.to_str(),
        unk_token_id=tokenizer.unk_token_id,
        pad_token_id=tokenizer.pad_token_id,
        split_special_tokens=bool(getattr(tokenizer, "split_special_tokens", False)),
        hidden_size=int(config.hidden_size),
        max_position_embeddings=getattr(config, "max_position_embeddings", None),
    )


def write(path: Path, meta: EncoderMeta) -> None:
    """Atomic write; a folder we cannot write to only costs the transformers import later."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as fh:
            json.dump({"version": META_VERSION, **attrs.asdict(meta)}, fh)
        for old in path.parent.glob(f"{PREFIX}.*.json"):  # older tokenizer files' caches
            if old.name != path.name:
                old.unlink(missing_ok=True)
    except OSError as exc:
        log.debug("cannot write %s (%s)", path, exc)


def read(path: Path) -> EncoderMeta | None:
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.pop("version") != META_VERSION:
            return None
        return EncoderMeta(**doc)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        log.warning("ignoring the unreadable tokenizer cache %s (%s)", path, exc)
        return None


class _Batch(dict):
    """The slice of transformers' ``BatchEncoding`` that ``SentenceEncoder`` reads."""

    def __init__(self, encodings, single: bool):
        ids = [e.ids for e in encodings]
        super().__init__(input_ids=ids[0] if single else ids)
        self._encodings = encodings

    def word_ids(self, k: int = 0) -> list[int | None]:
        return self._encodings[k].word_ids


class RustTokenizer:
    """The transformers fast tokenizer's backend, called as ``SentenceEncoder`` calls it."""

    is_fast = True

    def __init__(self, meta: EncoderMeta):
        from tokenizers import Tokenizer

        self._tk = Tokenizer.from_str(meta.tokenizer_json)
        self._tk.no_truncation()
        self._tk.no_padding()
        self._tk.encode_special_tokens = meta.split_special_tokens
        self.unk_token_id = meta.unk_token_id
        self.pad_token_id = meta.pad_token_id

    def __call__(
        self, text, *, add_special_tokens: bool = True, is_split_into_words: bool = False
    ) -> _Batch:
        single = isinstance(text, str) or (
            is_split_into_words and bool(text) and isinstance(text[0], str)
        )
        batch = [text] if single else list(text)
        encodings = self._tk.encode_batch(
            batch, add_special_tokens=add_special_tokens, is_pretokenized=is_split_into_words
        )
        return _Batch(encodings, single)
