"""Encoder + first-sub-word pooling + optional word-shape embedding + emission + CRF.

The model works on *sentences of words*: it splits them into encoder windows
(``windows.py``), encodes all windows of a batch at once, takes each word's
vector from its most central window, and scores the whole sentence with one CRF.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

import attrs
import torch
from torch import nn

from refineg_bert_crf.crf import CRF, allowed_transitions
from refineg_bert_crf.inference import EncoderRunner
from refineg_bert_crf.shapes import SHAPES, word_shape
from refineg_bert_crf.windows import Window, owner_of_words, plan_windows

# Config attributes that hold dropout probabilities in common encoder families.
_DROPOUT_KEYS = (
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "dropout",
    "attention_dropout",
    "hidden_dropout",
)


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' load report (e.g. the unused pooler) for one call."""
    import transformers

    level = transformers.logging.get_verbosity()
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(level)
        if bars:
            transformers.utils.logging.enable_progress_bar()


def encoder_config(path: str | Path, dropout: float):
    """The encoder's config with every dropout probability set to ``dropout``."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(path))
    for key in _DROPOUT_KEYS:
        if isinstance(getattr(config, key, None), float):
            setattr(config, key, dropout)
    return config


def build_encoder(path: str | Path, config, *, pretrained: bool) -> nn.Module:
    """Pretrained weights from ``path``, or just the architecture (weights loaded later).

    transformers' model classes are imported here, not at module import: a tagger
    whose encoder runs from a cached ONNX export never needs them (seconds saved).
    """
    from transformers import AutoModel

    with quiet_transformers():
        if pretrained:
            try:
                return AutoModel.from_pretrained(str(path), config=config, add_pooling_layer=False)
            except TypeError:
                return AutoModel.from_pretrained(str(path), config=config)
        try:
            return AutoModel.from_config(config, add_pooling_layer=False)
        except TypeError:
            return AutoModel.from_config(config)


@attrs.frozen
class EncodedSentence:
    """A sentence as sub-word ids per word, its word shapes and its windows."""

    pieces: tuple[tuple[int, ...], ...]
    shapes: tuple[int, ...]
    windows: tuple[Window, ...]

    @property
    def n_words(self) -> int:
        return len(self.pieces)


class SentenceEncoder:
    """Turns word lists into :class:`EncodedSentence` for one tokenizer and length limit."""

    def __init__(self, tokenizer, max_length: int, max_positions: int | None):
        self.tokenizer = tokenizer
        with_special = tokenizer("a")["input_ids"]
        plain = tokenizer("a", add_special_tokens=False)["input_ids"]
        i = next(k for k in range(len(with_special)) if with_special[k : k + len(plain)] == plain)
        self.prefix = list(with_special[:i])
        self.suffix = list(with_special[i + len(plain) :])
        limit = max_length
        if max_positions:
            limit = min(limit, max_positions)
        self.budget = limit - len(self.prefix) - len(self.suffix)
        if self.budget < 1:
            raise ValueError(f"max_length {max_length} leaves no room for words")
        self.unk = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else 0
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def encode(self, sentences: Sequence[Sequence[str]]) -> list[EncodedSentence]:
        out: list[EncodedSentence] = []
        nonempty = [list(s) for s in sentences if len(s)]
        enc = (
            self.tokenizer(nonempty, is_split_into_words=True, add_special_tokens=False)
            if nonempty
            else None
        )
        k = 0
        for words in sentences:
            if not len(words):
                out.append(EncodedSentence((), (), ()))
                continue
            ids = enc["input_ids"][k]
            word_ids = enc.word_ids(k)
            k += 1
            per_word: list[list[int]] = [[] for _ in words]
            for tok_id, w in zip(ids, word_ids, strict=True):
                if w is not None:
                    per_word[w].append(tok_id)
            # A word the tokenizer maps to nothing (zero-width space...) still gets a slot.
            pieces = tuple(tuple(p) if p else (self.unk,) for p in per_word)
            windows = plan_windows([len(p) for p in pieces], self.budget)
            out.append(EncodedSentence(pieces, tuple(word_shape(w) for w in words), tuple(windows)))
        return out


#: State-dict prefix of the encoder's weights; everything else is the head.
ENCODER_PREFIX = "encoder."


class BertCrfModel(nn.Module):
    """Emission scores for words, and a CRF on top.

    ``encoder=None`` builds the head alone (shape features, emissions, CRF) for
    a tagger whose encoder runs elsewhere (a cached ONNX export); ``hidden_size``
    is then required, and :meth:`attach_encoder` adds the PyTorch encoder later.
    """

    def __init__(
        self,
        encoder: nn.Module | None,
        num_tags: int,
        *,
        hidden_size: int | None = None,
        constraints=None,
        dropout: float = 0.1,
        use_shape_features: bool = True,
        shape_dim: int = 16,
    ):
        super().__init__()
        self.encoder = encoder
        hidden = encoder.config.hidden_size if encoder is not None else hidden_size
        if hidden is None:
            raise ValueError("a head without an encoder needs hidden_size")
        self.use_shape_features = use_shape_features
        self.shape_embedding = (
            nn.Embedding(len(SHAPES), shape_dim, padding_idx=0) if use_shape_features else None
        )
        self.dropout = nn.Dropout(dropout)
        self.emission = nn.Linear(hidden + (shape_dim if use_shape_features else 0), num_tags)
        self.crf = CRF(num_tags, constraints)

    @staticmethod
    def constraints_for(label_names: Sequence[str], scheme: str):
        return allowed_transitions(label_names, scheme)

    def attach_encoder(self, encoder: nn.Module) -> None:
        """Give a head-only model its PyTorch encoder (same device and train/eval mode)."""
        self.encoder = encoder.to(self.device).train(self.training)

    @property
    def device(self) -> torch.device:
        return self.emission.weight.device

    def word_vectors(
        self,
        batch: Sequence[EncodedSentence],
        prefix: Sequence[int],
        suffix: Sequence[int],
        pad_id: int,
        encode: EncoderRunner | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode every window of the batch; return word vectors [B, N, H] and mask [B, N].

        ``encode(input_ids, attention_mask)`` replaces the PyTorch encoder at
        inference (``inference.py``: int8, ONNX Runtime); training never passes it.
        """
        device = self.device
        rows: list[list[int]] = []
        firsts: list[list[int]] = []
        for sent in batch:
            for win in sent.windows:
                ids = list(prefix)
                first = []
                for word in range(win.start, win.end):
                    first.append(len(ids))
                    ids.extend(sent.pieces[word][: win.pieces[word - win.start]])
                ids.extend(suffix)
                rows.append(ids)
                firsts.append(first)
        seq = max(len(r) for r in rows)
        # Padded Python lists -> one tensor each (per-row tensor writes cost more than
        # the CRF at inference speed).
        input_ids = torch.tensor([r + [pad_id] * (seq - len(r)) for r in rows], dtype=torch.long)
        attn = torch.tensor([[1] * len(r) + [0] * (seq - len(r)) for r in rows], dtype=torch.long)
        if encode is None:
            if self.encoder is None:
                raise RuntimeError("this model holds no PyTorch encoder: pass encode=")
            hidden = self.encoder(
                input_ids=input_ids.to(device), attention_mask=attn.to(device)
            ).last_hidden_state  # [W, S, H]
        else:
            hidden = encode(input_ids.to(device), attn.to(device)).to(device)
        flat = hidden.reshape(-1, hidden.shape[-1])
        n_max = max(s.n_words for s in batch)
        index: list[list[int]] = []
        w_base = 0
        for sent in batch:
            owners = owner_of_words(sent.windows, sent.n_words)
            row = [(w_base + w) * seq + firsts[w_base + w][pos] for w, pos in owners]
            index.append(row + [0] * (n_max - len(row)))
            w_base += len(sent.windows)
        mask = torch.tensor([[True] * s.n_words + [False] * (n_max - s.n_words) for s in batch])
        vectors = flat[torch.tensor(index, dtype=torch.long).to(device)]
        return vectors, mask.to(device)

    def emissions(
        self,
        batch: Sequence[EncodedSentence],
        prefix,
        suffix,
        pad_id: int,
        encode: EncoderRunner | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        vectors, mask = self.word_vectors(batch, prefix, suffix, pad_id, encode)
        if self.shape_embedding is not None:
            n_max = vectors.shape[1]
            shapes = torch.tensor(
                [list(s.shapes) + [0] * (n_max - s.n_words) for s in batch], dtype=torch.long
            )
            vectors = torch.cat([vectors, self.shape_embedding(shapes.to(vectors.device))], dim=-1)
        return self.emission(self.dropout(vectors)), mask
