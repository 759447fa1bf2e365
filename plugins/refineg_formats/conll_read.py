"""Plain CoNLL reading: ``token<TAB>tag`` per line, blank line between sentences.

Twitter-GMNER adds an ``IMGID:<id>`` line before each sentence; this reader
hands those ids to the caller, so the Twitter reader is a thin layer on top.
Writing is ``conll_write``; every reader asks the writer's ``conll_problem``, so
what is read can be written back.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import attrs

from refineg_core.errors import DataError
from refineg_core.formats.base import Dataset, text_lines
from refineg_core.labels import split_tag, tags_to_spans
from refineg_core.types import Entity, Sample
from refineg_core.validity import check_sample
from refineg_formats.conll_write import token_problem


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
