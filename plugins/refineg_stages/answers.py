"""Pull the JSON list out of an MLLM answer, however the model wrapped it.

Models reason before answering, wrap JSON in ```json fences, add prose after
it, use Python quotes or trailing commas, and stop mid-list when they hit the
token limit. The stages want the list (or a clear reason why there is none),
so this module tries, in order: the text after a closed ``<think>`` block,
fenced blocks (last first), then bare JSON anywhere in the text (last list of
objects wins, since reasoning often quotes examples before the final answer).
A list cut off by the token limit yields the complete objects before the cut.
The built-in stages read answers with it in their ``judge``; a failure is the
core contract's ``AnswerError``, which the frame records with its ``kind``.

Answers come from a server the project does not control, so reading one is
linear in its length: brackets are matched in one pass (``_Brackets``), the
parse attempts share a budget proportional to the text, and an answer larger
than ``max_bytes`` is refused before any of it is read.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

import attrs

from refineg_core.pipeline.stage_contract import AnswerError

__all__ = ["AnswerError", "ParsedAnswer", "extract_json_list", "parse_answer"]

#: Answers larger than this (UTF-8 bytes) are refused unread by default; backends
#: that read answers off the network bound them earlier (``max_answer_bytes``).
DEFAULT_MAX_ANSWER_BYTES = 1 << 20


@attrs.frozen
class ParsedAnswer:
    """The list found in an answer and how much fixing it took."""

    items: tuple[Any, ...]
    truncated: bool = False  # cut off; ``items`` are the complete objects before the cut
    repaired: bool = False  # needed lenient parsing (quotes, trailing commas, Python literals)
    fenced: bool = False  # came from a ``` block


_THINK_END = "</think>"
_FENCE = "```"
_OPENERS = {"[": "]", "{": "}"}
_SIGNIFICANT = re.compile(r"[\[\]{}\"'\\]")
_LIST_OF_OBJECTS_START = re.compile(r"\[\s*\{")


class _Brackets:
    """Every bracket pair of a text, found in one left-to-right pass.

    Quotes only count inside brackets (prose around JSON is full of
    apostrophes); an apostrophe between letters is English, not a Python
    string. A closer that does not match the innermost opener makes every open
    bracket unmatched (none of them is a JSON structure) and starts afresh.
    ``pairs`` maps an opener's index to its closer's; unclosed or mismatched
    openers are absent. ``openers[c]`` lists the openers of kind ``c`` that are
    outside strings, in order.
    """

    def __init__(self, text: str) -> None:
        self.pairs: dict[int, int] = {}
        self.openers: dict[str, list[int]] = {"[": [], "{": []}
        stack: list[int] = []
        quote: str | None = None
        skip_to = -1
        n = len(text)
        for m in _SIGNIFICANT.finditer(text):
            i = m.start()
            if i < skip_to:
                continue  # the character after a backslash inside a string
            ch = text[i]
            if quote is not None:
                if ch == "\\":
                    skip_to = i + 2
                elif ch == quote:
                    quote = None
                continue
            if ch in _OPENERS:
                stack.append(i)
                self.openers[ch].append(i)
            elif ch in "]}":
                if not stack:
                    continue  # a closer in prose
                if _OPENERS[text[stack[-1]]] != ch:
                    stack.clear()  # mismatched: no open bracket is a JSON structure
                    continue
                self.pairs[stack.pop()] = i
            elif stack and ch in "\"'":
                if ch == "'" and 0 < i < n - 1 and text[i - 1].isalnum() and text[i + 1].isalnum():
                    continue
                quote = ch


class _Budget:
    """Caps the characters handed to the parsers, so nested garbage stays linear."""

    def __init__(self, text: str) -> None:
        self.left = 8 * len(text) + 65536

    def spend(self, n: int) -> bool:
        self.left -= n
        return self.left >= 0


def _adjacent_strings(text: str) -> bool:
    """Two string literals with only space between them: Python would join them
    (``"name" "NBA"`` -> ``"nameNBA"``), JSON would not; a missing comma or colon."""
    quote: str | None = None
    last_end = -1
    skip_to = -1
    for m in _SIGNIFICANT.finditer(text):
        i = m.start()
        ch = text[i]
        if i < skip_to or ch not in "\"'\\":
            continue
        if quote is None:
            if ch != "\\":
                if last_end >= 0 and not text[last_end:i].strip():
                    return True
                quote = ch
        elif ch == "\\":
            skip_to = i + 2
        elif ch == quote:
            quote = None
            last_end = i + 1
    return False


def _outside_strings(text: str, fn) -> str:
    """Apply ``fn`` to each stretch of ``text`` that is not inside a string literal."""
    out: list[str] = []
    start = 0  # start of the current stretch outside strings
    quote: str | None = None
    skip_to = -1
    for m in _SIGNIFICANT.finditer(text):
        i = m.start()
        ch = text[i]
        if i < skip_to or ch not in "\"'\\":
            continue
        if quote is None:
            if ch != "\\":
                out.append(fn(text[start:i]))
                start = i
                quote = ch
        elif ch == "\\":
            skip_to = i + 2
        elif ch == quote:
            out.append(text[start : i + 1])
            start = i + 1
            quote = None
    tail = text[start:]
    out.append(tail if quote is not None else fn(tail))
    return "".join(out)


_TRAILING_COMMA = re.compile(r",(\s*[\]}])")
_JSON_WORDS = re.compile(r"\b(true|false|null)\b")
_PY_WORDS = {"true": "True", "false": "False", "null": "None"}


class _OutOfBudget(Exception):
    pass


def _lenient_loads(raw: str, budget: _Budget) -> tuple[Any, bool]:
    """``json.loads``, else with trailing commas removed, else as a Python literal."""
    if not budget.spend(3 * len(raw)):
        raise _OutOfBudget
    try:
        return json.loads(raw), False
    except (json.JSONDecodeError, RecursionError):
        pass
    fixed = _outside_strings(raw, lambda s: _TRAILING_COMMA.sub(r"\1", s))
    try:
        return json.loads(fixed), True
    except (json.JSONDecodeError, RecursionError):
        pass
    if _adjacent_strings(fixed):
        raise ValueError("two strings side by side (a missing comma or colon)")
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


def _recover_truncated(
    text: str, start: int, br: _Brackets, budget: _Budget
) -> tuple[list[Any], bool]:
    """Complete ``{...}`` objects after the ``[`` at ``start`` of a list that never closes."""
    items: list[Any] = []
    repaired = False
    i = start + 1
    n = len(text)
    while i < n:
        ch = text[i]
        if ch.isspace() or ch == ",":
            i += 1
            continue
        if ch != "{":
            break
        end = br.pairs.get(i)
        if end is None:
            break
        try:
            value, fixed = _lenient_loads(text[i : end + 1], budget)
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
    br = _Brackets(text)
    budget = _Budget(text)
    after = 0  # openers before this index are inside something already read
    try:
        for i in br.openers["["]:
            if i < after:
                continue
            end = br.pairs.get(i)
            if end is None:
                items, repaired = _recover_truncated(text, i, br, budget)
                if items:
                    found.append(_Found(tuple(items), len(text), True, repaired))
                    break
                if _LIST_OF_OBJECTS_START.match(text, i):
                    problems.append("truncated")
                    break
                continue
            try:
                value, repaired = _lenient_loads(text[i : end + 1], budget)
            except ValueError:
                problems.append("invalid_json")
                continue  # maybe a valid list is nested inside (e.g. prose in brackets around it)
            if isinstance(value, list):
                found.append(_Found(tuple(value), end, False, repaired))
            after = end + 1
        if not found:
            found.extend(_scan_objects(text, br, budget, problems))
    except _OutOfBudget:
        problems.append("invalid_json")
    return found, problems


def _scan_objects(text: str, br: _Brackets, budget: _Budget, problems: list[str]) -> list[_Found]:
    """Top-level objects: ``{"entities": [...]}`` or a bare single ``{name, type}``."""
    objects: list[Any] = []
    repaired_any = False
    last = 0
    after = 0
    for i in br.openers["{"]:
        if i < after:
            continue
        end = br.pairs.get(i)
        if end is None:
            problems.append("truncated")
            break
        try:
            value, repaired = _lenient_loads(text[i : end + 1], budget)
        except ValueError:
            problems.append("invalid_json")
            continue
        if isinstance(value, dict):
            lists = [v for v in value.values() if isinstance(v, list)]
            if len(lists) == 1 and all(isinstance(x, dict) for x in lists[0]):
                return [_Found(tuple(lists[0]), end, False, repaired)]
            objects.append(value)
            repaired_any = repaired_any or repaired
            last = end
        after = end + 1
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


def fenced_blocks(text: str) -> list[str]:
    """The bodies of ``` blocks in order; an unclosed last block runs to the end.

    A fence opens at ``` (an info string may follow on the same line) and its
    body starts on the next line. Each search moves forward, so this is linear.
    """
    bodies: list[str] = []
    pos = 0
    while True:
        start = text.find(_FENCE, pos)
        if start < 0:
            return bodies
        newline = text.find("\n", start + len(_FENCE))
        if newline < 0:
            return bodies
        close = text.find(_FENCE, newline + 1)
        if close < 0:
            bodies.append(text[newline + 1 :])
            return bodies
        bodies.append(text[newline + 1 : close])
        pos = close + len(_FENCE)


def check_size(text: str, max_bytes: int | None) -> None:
    """Refuse an answer over ``max_bytes`` UTF-8 bytes (``AnswerError`` ``too_large``)."""
    if max_bytes is None or len(text) * 4 <= max_bytes:
        return  # no character takes more than 4 bytes
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise AnswerError(
            "too_large", f"the answer is {size} bytes, over the limit of {max_bytes}; not read"
        )


def parse_answer(
    text: str | None, *, max_bytes: int | None = DEFAULT_MAX_ANSWER_BYTES
) -> ParsedAnswer:
    """The JSON list in an MLLM answer; raises ``AnswerError`` when there is none."""
    if text is None or not text.strip():
        raise AnswerError("empty", "the answer is empty")
    check_size(text, max_bytes)
    regions: list[tuple[str, bool]] = []
    if _THINK_END in text:
        regions.append((text.rsplit(_THINK_END, 1)[1], False))
    regions.extend((body, True) for body in reversed(fenced_blocks(text)))
    regions.append((text, False))
    problems: list[str] = []
    for region, fenced in regions:
        found, met = _scan(region)
        problems.extend(met)
        best = _best(found)
        if best is not None:
            return ParsedAnswer(best.items, best.truncated, best.repaired, fenced)
    snippet = " ".join(text[:400].split())[:80]
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
