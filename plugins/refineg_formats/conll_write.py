"""Plain CoNLL writing (``token<TAB>tag`` lines) and what it cannot hold
(``conll_problem``), which every CoNLL reader asks so that what is read can be
written back."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from refineg_core.errors import DataError
from refineg_core.labels import spans_to_tags
from refineg_core.runstore import atomic_write
from refineg_core.types import Sample

#: Lines the reader takes for something else than a token (a new tweet, a header).
CONTROL_PREFIXES = ("IMGID:", "-DOCSTART-")


#: An empty or whitespace-only line of "\\n".join(tokens), framed by "\\n".
_BLANK_TOKEN = re.compile(r"\n[^\S\n]*\n")


def token_problem(token: str) -> str | None:
    """Why ``token`` cannot be one ``token<TAB>tag`` line that reads back as itself."""
    if not token.strip():
        return "is empty or only whitespace"
    if "\t" in token:
        return "holds a tab"
    if "\n" in token or "\r" in token:
        return "holds a line break (\\n or \\r)"
    for prefix in CONTROL_PREFIXES:
        if token.startswith(prefix):
            return f"starts with {prefix!r}, which CoNLL reads as a control line"
    return None


def conll_problem(sample: Sample) -> str | None:
    """Why a CoNLL writer could not write ``sample`` faithfully, or None (a sample
    without tokens is left out; overlaps are resolved by the output writer)."""
    # cheap scans of the joined tokens find every sample that needs a closer look
    joined = "\n" + "\n".join(sample.tokens) + "\n"
    if (
        joined.count("\n") != len(sample.tokens) + 1  # a line break inside a token
        or "\t" in joined
        or "\r" in joined
        or "IMGID:" in joined
        or "-DOCSTART-" in joined
        or _BLANK_TOKEN.search(joined)
    ):
        for i, tok in enumerate(sample.tokens):
            if problem := token_problem(tok):
                return f"token {i} {tok[:40]!r} {problem}"
    for i, e in enumerate(sample.entities):
        if not e.type.strip() or e.type != e.type.strip():
            return f"entity {i} type {e.type!r} is empty or has whitespace at its ends"
        if any(c in e.type for c in "\t\r\n"):
            return f"entity {i} type {e.type!r} holds a tab or line break"
    return None


def conll_lines(samples: Iterable[Sample], *, scheme: str = "BIO", image_ids: bool = False):
    """The lines of a CoNLL file; a sample CoNLL cannot hold (``conll_problem``) is an
    error; a sample without tokens is left out (CoNLL has no empty sentence)."""
    for s in samples:
        if not s.tokens:
            continue
        problem = conll_problem(s)
        if problem is not None:
            raise DataError(f"{problem}; CoNLL cannot represent it", where=f"sample {s.id!r}")
        if image_ids:
            yield f"IMGID:{s.image.image_id if s.image else s.id}"
        tags = spans_to_tags(len(s.tokens), (e.key for e in s.entities), scheme)
        for tok, tag in zip(s.tokens, tags, strict=True):
            yield f"{tok}\t{tag}"
        yield ""


def write_conll(samples: Iterable[Sample], path: Path | str, *, scheme: str = "BIO") -> None:
    """Write CoNLL; a first token that starts with U+FEFF gets a byte-order mark in
    front, which the reader drops (instead of the token's own)."""
    text = "\n".join(conll_lines(samples, scheme=scheme))
    with atomic_write(path) as fh:  # a sample CoNLL cannot hold leaves the old file
        fh.write(("\ufeff" if text.startswith("\ufeff") else "") + text)
