"""Plain CoNLL: ``token<TAB>tag`` per line, blank line between sentences.

Twitter-GMNER adds an ``IMGID:<id>`` line before each sentence; this reader
hands those ids to the caller, so the Twitter reader is a thin layer on top.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import attrs

from refineg_core.errors import DataError
from refineg_core.formats.base import Dataset, text_lines
from refineg_core.labels import spans_to_tags, split_tag, tags_to_spans
from refineg_core.runstore import atomic_write
from refineg_core.types import Entity, Sample
from refineg_core.validity import check_sample


@attrs.frozen
class RawSentence:
    tokens: tuple[str, ...]
    tags: tuple[str, ...]
    image_id: str | None
    line: int  # 1-based line of the first token (for messages)


def parse_conll(path: Path) -> list[RawSentence]:
    """Split a CoNLL file into sentences; a malformed line is an error with file:line."""
    return list(iter_conll(path))


def iter_conll(path: Path) -> Iterator[RawSentence]:
    """``parse_conll`` one sentence at a time (a corpus larger than memory streams)."""
    tokens: list[str] = []
    tags: list[str] = []
    image_id: str | None = None
    first_line = 0

    def flush() -> RawSentence | None:
        nonlocal tokens, tags, image_id
        sent = None
        if tokens:
            sent = RawSentence(tuple(tokens), tuple(tags), image_id, first_line)
        elif image_id is not None:
            raise DataError(f"IMGID:{image_id} has no tokens", where=f"{path}:{first_line}")
        tokens, tags, image_id = [], [], None
        return sent

    for lineno, line in text_lines(path):
        if "\r" in line:
            raise DataError(
                "carriage return (\\r) inside a line: lines end with \\n or \\r\\n "
                "(convert old Mac line ends), and a token cannot hold a line break",
                where=f"{path}:{lineno}",
            )
        if not line.strip():
            if sent := flush():
                yield sent
            continue
        if line.startswith("IMGID:"):
            if sent := flush():
                yield sent
            image_id = line[len("IMGID:") :].strip()
            first_line = lineno
            continue
        if line.startswith("-DOCSTART-"):
            continue
        if "\t" not in line:
            raise DataError(
                f"expected 'token<TAB>tag', found no tab in {line[:60]!r}", where=f"{path}:{lineno}"
            )
        if line.count("\t") > 1:
            raise DataError(
                f"expected 'token<TAB>tag', found {line.count(chr(9))} tabs in {line[:60]!r} "
                "(a token cannot hold a tab; multi-column CoNLL is not read)",
                where=f"{path}:{lineno}",
            )
        token, _, tag = line.partition("\t")
        tag = tag.strip()
        if not token.strip():
            raise DataError("empty token before the tab", where=f"{path}:{lineno}")
        if problem := token_problem(token):
            raise DataError(f"token {token[:60]!r} {problem}", where=f"{path}:{lineno}")
        try:
            split_tag(tag)
        except DataError as exc:
            raise DataError(str(exc), where=f"{path}:{lineno}") from None
        if not tokens:
            first_line = first_line if image_id is not None else lineno
        tokens.append(token)
        tags.append(tag)
    if sent := flush():
        yield sent


def sentence_to_sample(
    sent: RawSentence,
    sample_id: str,
    image=None,
    warnings: list[str] | None = None,
    where: str = "",
) -> Sample:
    decoded = tags_to_spans(sent.tags)
    if decoded.repairs and warnings is not None:
        warnings.append(f"{where}: repaired {decoded.repairs} I- tag(s) without a B-")
    entities = tuple(Entity(s, e, t, " ".join(sent.tokens[s:e])) for s, e, t in decoded.spans)
    return Sample(
        id=sample_id,
        tokens=sent.tokens,
        text=" ".join(sent.tokens),
        image=image,
        entities=entities,
        meta={"tag_repairs": decoded.repairs} if decoded.repairs else {},
    )


def read_conll(
    path: Path | str, *, id_prefix: str | None = None, limit: int | None = None
) -> Dataset:
    """Read plain CoNLL BIO/BIOES; sample ids are ``<file stem>-<n>``."""
    path = Path(path)
    prefix = id_prefix if id_prefix is not None else path.stem
    warnings: list[str] = []
    samples = [
        check_sample(
            sentence_to_sample(s, f"{prefix}-{i}", warnings=warnings, where=f"{path}:{s.line}"),
            where=f"{path}:{s.line}",
        )
        for i, s in enumerate(itertools.islice(iter_conll(path), limit))
    ]
    return Dataset(tuple(samples), tuple(warnings), str(path))


#: Lines the reader takes for something else than a token (a new tweet, a header).
CONTROL_PREFIXES = ("IMGID:", "-DOCSTART-")


#: An empty or whitespace-only line of "\\n".join(tokens), framed by "\\n".
_BLANK_TOKEN = re.compile(r"\n[^\S\n]*\n")


def token_problem(token: str) -> str | None:
    """Why ``token`` cannot be one ``token<TAB>tag`` line that reads back as itself.

    Any other character is text: U+2028, U+0085, a form feed or NUL inside a
    token are written and read as they are (lines end at ``\\n`` only).
    """
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
    """Why a CoNLL writer could not write ``sample`` faithfully, or None.

    A sample without tokens is not a problem: it has no line to write, so the
    CoNLL writers leave it out (it has no entity either). Overlapping spans are
    resolved by the run's output writer (``pipeline.outputs``), not refused.
    """
    # cheap scans of the joined tokens find every sample that needs a closer look
    # (a line break inside a token only adds a false alarm): readers check each sample
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
