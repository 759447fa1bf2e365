"""Pull the JSON list out of an MLLM answer, however the model wrapped it.

Models reason before answering, wrap JSON in ```json fences, add prose after
it, use Python quotes or trailing commas, and stop mid-list when they hit the
token limit. The stages want the list (or a clear reason why there is none),
so this module tries, in order: the text after a closed ``<think>`` block,
fenced blocks (last first), then bare JSON anywhere in the text (last list of
objects wins, since reasoning often quotes examples before the final answer).
A list cut off by the token limit yields the complete objects before the cut.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

import attrs

from refineg_core.errors import DataError


class AnswerError(DataError):
    """An answer with no usable JSON list; ``kind`` is a short machine-readable reason.

    Kinds: ``empty`` (blank answer), ``no_json`` (no bracket at all),
    ``invalid_json`` (brackets that do not parse, even leniently),
    ``truncated`` (cut off before its first complete object), ``not_a_list``
    (JSON, but neither a list nor objects).
    """

    def __init__(self, kind: str, message: str, *, where: str | None = None) -> None:
        self.kind = kind
        super().__init__(message, where=where)


@attrs.frozen
class ParsedAnswer:
    """The list found in an answer and how much fixing it took."""

    items: tuple[Any, ...]
    truncated: bool = False  # cut off; ``items`` are the complete objects before the cut
    repaired: bool = False  # needed lenient parsing (quotes, trailing commas, Python literals)
    fenced: bool = False  # came from a ``` block


_FENCE_RE = re.compile(r"```[ \t]*([A-Za-z0-9_-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_THINK_END = "</think>"
_OPENERS = {"[": "]", "{": "}"}


def _match(text: str, start: int) -> int | None:
    """Index of the bracket closing ``text[start]``, skipping strings; None when unclosed."""
    stack: list[str] = []
    quote: str | None = None
    i = start
    n = len(text)
    while i < n:
        ch = text[i]
        if quote is not None:
            if ch == "\\":
                i += 2
                continue
            if ch == quote:
                quote = None
        elif ch in "\"'":
            # An apostrophe between letters is English, not a Python string.
            if ch == "'" and 0 < i < n - 1 and text[i - 1].isalnum() and text[i + 1].isalnum():
                i += 1
                continue
            quote = ch
        elif ch in _OPENERS:
            stack.append(_OPENERS[ch])
        elif ch in "]}":
            if not stack or stack[-1] != ch:
                return None  # mismatched: not a JSON structure
            stack.pop()
            if not stack:
                return i
        i += 1
    return None


def _outside_strings(text: str, fn) -> str:
    """Apply ``fn`` to each stretch of ``text`` that is not inside a string literal."""
    out: list[str] = []
    buf: list[str] = []
    quote: str | None = None
    i = 0
    while i < len(text):
        ch = text[i]
        if quote is None:
            if ch in "\"'":
                out.append(fn("".join(buf)))
                buf = []
                quote = ch
                out.append(ch)
            else:
                buf.append(ch)
        else:
            out.append(ch)
            if ch == "\\" and i + 1 < len(text):
                out.append(text[i + 1])
                i += 1
            elif ch == quote:
                quote = None
        i += 1
    out.append(fn("".join(buf)))
    return "".join(out)


_TRAILING_COMMA = re.compile(r",(\s*[\]}])")
_JSON_WORDS = re.compile(r"\b(true|false|null)\b")
_PY_WORDS = {"true": "True", "false": "False", "null": "None"}


def _lenient_loads(raw: str) -> tuple[Any, bool]:
    """``json.loads``, else with trailing commas removed, else as a Python literal."""
    try:
        return json.loads(raw), False
    except (json.JSONDecodeError, RecursionError):
        pass
    fixed = _outside_strings(raw, lambda s: _TRAILING_COMMA.sub(r"\1", s))
    try:
        return json.loads(fixed), True
    except (json.JSONDecodeError, RecursionError):
        pass
    pythonish = _outside_strings(fixed, lambda s: _JSON_WORDS.sub(lambda m: _PY_WORDS[m[1]], s))
    try:
        value = ast.literal_eval(pythonish)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise ValueError("does not parse as JSON or as a Python literal") from None
    return value, True


@attrs.frozen
class _Found:
    items: tuple[Any, ...]
    end: int
    truncated: bool
    repaired: bool


def _recover_truncated(text: str, start: int) -> tuple[list[Any], bool]:
    """Complete ``{...}`` objects after the ``[`` at ``start`` of a list that never closes."""
    items: list[Any] = []
    repaired = False
    i = start + 1
    while i < len(text):
        ch = text[i]
        if ch.isspace() or ch == ",":
            i += 1
            continue
        if ch != "{":
            break
        end = _match(text, i)
        if end is None:
            break
        try:
            value, fixed = _lenient_loads(text[i : end + 1])
        except ValueError:
            break
        items.append(value)
        repaired = repaired or fixed
        i = end + 1
    return items, repaired


def _scan(text: str) -> tuple[list[_Found], list[str]]:
    """Every top-level list (and, failing that, object) in ``text`` that parses.

    Returns what was found plus the problems met (for the error message).
    """
    found: list[_Found] = []
    problems: list[str] = []
    i = 0
    while True:
        i = text.find("[", i)
        if i < 0:
            break
        end = _match(text, i)
        if end is None:
            items, repaired = _recover_truncated(text, i)
            if items:
                found.append(_Found(tuple(items), len(text), True, repaired))
                break
            if re.match(r"\[\s*\{", text[i:]):
                problems.append("truncated")
                break
            i += 1
            continue
        try:
            value, repaired = _lenient_loads(text[i : end + 1])
        except ValueError:
            problems.append("invalid_json")
            i += 1  # maybe a valid list is nested inside (e.g. prose in brackets around it)
            continue
        if isinstance(value, list):
            found.append(_Found(tuple(value), end, False, repaired))
        i = end + 1
    if not found:
        found.extend(_scan_objects(text, problems))
    return found, problems


def _scan_objects(text: str, problems: list[str]) -> list[_Found]:
    """Top-level objects: ``{"entities": [...]}`` or a bare single ``{name, type}``."""
    objects: list[Any] = []
    repaired_any = False
    i = 0
    last = 0
    while True:
        i = text.find("{", i)
        if i < 0:
            break
        end = _match(text, i)
        if end is None:
            problems.append("truncated")
            break
        try:
            value, repaired = _lenient_loads(text[i : end + 1])
        except ValueError:
            problems.append("invalid_json")
            i += 1
            continue
        if isinstance(value, dict):
            lists = [v for v in value.values() if isinstance(v, list)]
            if len(lists) == 1 and all(isinstance(x, dict) for x in lists[0]):
                return [_Found(tuple(lists[0]), end, False, repaired)]
            objects.append(value)
            repaired_any = repaired_any or repaired
            last = end
        i = end + 1
    return [_Found(tuple(objects), last, False, repaired_any)] if objects else []


def _best(found: list[_Found]) -> _Found | None:
    """The last list of objects; else the last empty list; else the last list."""
    for pred in (
        lambda f: f.items and all(isinstance(x, dict) for x in f.items),
        lambda f: not f.items,
        lambda f: True,
    ):
        chosen = [f for f in found if pred(f)]
        if chosen:
            return max(chosen, key=lambda f: f.end)
    return None


def parse_answer(text: str | None) -> ParsedAnswer:
    """The JSON list in an MLLM answer; raises ``AnswerError`` when there is none."""
    if text is None or not text.strip():
        raise AnswerError("empty", "the answer is empty")
    regions: list[tuple[str, bool]] = []
    if _THINK_END in text:
        regions.append((text.rsplit(_THINK_END, 1)[1], False))
    fences = [m[2] for m in _FENCE_RE.finditer(text)]
    regions.extend((body, True) for body in reversed(fences))
    regions.append((text, False))
    problems: list[str] = []
    for region, fenced in regions:
        found, met = _scan(region)
        problems.extend(met)
        best = _best(found)
        if best is not None:
            return ParsedAnswer(best.items, best.truncated, best.repaired, fenced)
    snippet = " ".join(text.split())[:80]
    if "truncated" in problems:
        raise AnswerError(
            "truncated", f"the JSON list is cut off before its first item: {snippet!r}"
        )
    if "invalid_json" in problems:
        raise AnswerError("invalid_json", f"the answer's JSON does not parse: {snippet!r}")
    if "[" in text or "{" in text:
        raise AnswerError("not_a_list", f"no JSON list of objects in the answer: {snippet!r}")
    raise AnswerError("no_json", f"no JSON in the answer: {snippet!r}")


def extract_json_list(text: str | None) -> list[Any]:
    """Just the items of ``parse_answer`` (a truncated answer gives its complete objects)."""
    return list(parse_answer(text).items)
