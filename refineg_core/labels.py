"""Entity types, tagging schemes (BIO/BIOES) and span <-> tag conversion, shared by
every reader, tagger and synthesizer so a name is tagged the same way everywhere."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

import attrs

from refineg_core.errors import DataError

SCHEMES = ("BIO", "BIOES")


@attrs.frozen
class LabelSet:
    """The entity types of a task, each with a description for LLM prompts."""

    descriptions: Mapping[str, str] = attrs.field(converter=lambda d: dict(d))

    def __attrs_post_init__(self) -> None:
        if not self.descriptions:
            raise DataError("the label set is empty")

    @property
    def types(self) -> tuple[str, ...]:
        return tuple(self.descriptions)

    def __contains__(self, item: object) -> bool:
        return item in self.descriptions

    def tags(self, scheme: str = "BIO") -> tuple[str, ...]:
        """All tags of a scheme, ``O`` first; the order is the tagger's label index."""
        if scheme not in SCHEMES:
            raise DataError(f"unknown tagging scheme {scheme!r}; use one of {SCHEMES}")
        prefixes = "BI" if scheme == "BIO" else "BIES"
        return ("O", *(f"{p}-{t}" for t in self.types for p in prefixes))

    def check_types(self, types: Iterable[str], *, where: str | None = None) -> None:
        unknown = sorted(set(types) - set(self.types))
        if unknown:
            raise DataError(
                f"entity types {unknown} are not in the label set {list(self.types)}",
                where=where,
            )


def split_tag(tag: str) -> tuple[str, str | None]:
    """``"B-PER"`` -> ``("B", "PER")``; ``"O"`` -> ``("O", None)``."""
    if tag == "O":
        return "O", None
    prefix, sep, etype = tag.partition("-")
    if not sep or prefix not in {"B", "I", "E", "S"} or not etype:
        raise DataError(f"malformed tag {tag!r}")
    return prefix, etype


@attrs.frozen
class DecodedSpans:
    """Spans read from a tag sequence and how many broken tags had to be repaired."""

    spans: tuple[tuple[int, int, str], ...]
    repairs: int


def tags_to_spans(tags: Sequence[str]) -> DecodedSpans:
    """BIO or BIOES tags as ``(start, end, type)`` spans; an ``I-``/``E-`` that does not
    continue its type's open span starts one (a repair, counted for the report)."""
    spans: list[tuple[int, int, str]] = []
    repairs = 0
    start: int | None = None
    current: str | None = None

    def close(end: int) -> None:
        nonlocal start, current
        if start is not None and current is not None:
            spans.append((start, end, current))
        start, current = None, None

    for i, tag in enumerate(tags):
        prefix, etype = split_tag(tag)
        if prefix == "O":
            close(i)
        elif prefix in {"B", "S"}:
            close(i)
            start, current = i, etype
            if prefix == "S":
                close(i + 1)
        else:  # I or E
            if current != etype:
                repairs += 1
                close(i)
                start, current = i, etype
            if prefix == "E":
                close(i + 1)
    close(len(tags))
    return DecodedSpans(tuple(spans), repairs)


def spans_to_tags(
    n_tokens: int, spans: Iterable[tuple[int, int, str]], scheme: str = "BIO"
) -> list[str]:
    """Write spans as tags; overlapping spans are an error (flat NER only)."""
    if scheme not in SCHEMES:
        raise DataError(f"unknown tagging scheme {scheme!r}; use one of {SCHEMES}")
    tags = ["O"] * n_tokens
    for start, end, etype in sorted(spans):
        if not (0 <= start < end <= n_tokens):
            raise DataError(f"span [{start}, {end}) outside a sentence of {n_tokens} tokens")
        if any(t != "O" for t in tags[start:end]):
            raise DataError(f"span [{start}, {end}) {etype} overlaps another entity")
        if scheme == "BIOES" and end - start == 1:
            tags[start] = f"S-{etype}"
            continue
        tags[start] = f"B-{etype}"
        for i in range(start + 1, end):
            tags[i] = f"I-{etype}"
        if scheme == "BIOES":
            tags[end - 1] = f"E-{etype}"
    return tags


def convert_scheme(tags: Sequence[str], scheme: str) -> list[str]:
    """BIO <-> BIOES through spans (repairing broken tags on the way)."""
    return spans_to_tags(len(tags), tags_to_spans(tags).spans, scheme)


_WORD_CHARS = re.compile(r"\w", re.UNICODE)


def find_token_spans(tokens: Sequence[str], name: str) -> list[tuple[int, int]]:
    """Every token span whose tokens spell ``name`` (ignoring spaces and case); whole
    tokens only, so "Paris" never matches inside "Parisian"."""
    target = "".join(name.split()).casefold()
    if not target or not _WORD_CHARS.search(target):
        return []
    found = []
    for start in range(len(tokens)):
        acc = ""
        for end in range(start, len(tokens)):
            acc += tokens[end].casefold()
            if not target.startswith(acc):
                break
            if acc == target:
                found.append((start, end + 1))
                break
    return found


_TOKEN_RE = re.compile(r"\w+(?:[-'’.]\w+)*|[^\w\s]", re.UNICODE)


def tokenize(text: str) -> list[str]:
    """Whitespace-and-punctuation tokenizer for text that arrives untokenized."""
    return _TOKEN_RE.findall(text)


def tag_names(
    tokens: Sequence[str],
    names: Iterable[tuple[str, str]],
    scheme: str = "BIO",
) -> tuple[list[str], list[tuple[str, str]]]:
    """Tags for ``(name, type)`` pairs (every occurrence; longer names win), and the
    names not found."""
    spans: list[tuple[int, int, str]] = []
    missing: list[tuple[str, str]] = []
    taken = [False] * len(tokens)
    for name, etype in sorted(names, key=lambda p: -len(p[0])):
        hits = [(s, e) for s, e in find_token_spans(tokens, name) if not any(taken[s:e])]
        if not hits:
            if not find_token_spans(tokens, name):
                missing.append((name, etype))
            continue
        for s, e in hits:
            spans.append((s, e, etype))
            for i in range(s, e):
                taken[i] = True
    return spans_to_tags(len(tokens), spans, scheme), missing
