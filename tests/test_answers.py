"""Extracting the JSON list from real-looking MLLM answers."""

from __future__ import annotations

import time

import pytest
from refineg_stages.answers import AnswerError, extract_json_list, parse_answer

from refineg_core.errors import DataError

OBAMA = {"name": "Obama", "type": "PER"}


#: Answers whose list is exactly [OBAMA] (also read by benchmarks/bench_answers.py).
FOUND_CASES = [
    '[{"name": "Obama", "type": "PER"}]',
    '  \n[\n  {"name": "Obama", "type": "PER"}\n]\n',
    # reasoning first, then a fenced block, then a sign-off
    "The post is about a speech. Obama is clearly a person, not an organisation.\n\n"
    '```json\n[{"name": "Obama", "type": "PER"}]\n```\nLet me know if you need more.',
    # fence without a language tag
    'Answer:\n```\n[{"name": "Obama", "type": "PER"}]\n```',
    # bare JSON after prose, prose after it
    'Final answer: [{"name": "Obama", "type": "PER"}] (Obama is the only named entity.)',
    # a reasoning model's think block that quotes a wrong draft
    '<think>First guess: [{"name": "Obama", "type": "ORG"}]. No, he is a person.</think>\n'
    '[{"name": "Obama", "type": "PER"}]',
    # an example list in the reasoning, the real answer last
    'Format is [{"name": ..., "type": ...}]. e.g. [{"name": "X", "type": "LOC"}]\n'
    'So: [{"name": "Obama", "type": "PER"}]',
    # wrapped in an object
    '{"entities": [{"name": "Obama", "type": "PER"}]}',
    # apostrophes in the prose around the JSON
    'Here\'s what I found, it\'s simple: [{"name": "Obama", "type": "PER"}] that\'s all',
]


@pytest.mark.parametrize("text", FOUND_CASES)
def test_finds_the_answer_list(text: str) -> None:
    assert extract_json_list(text) == [OBAMA]


#: Answers that need repair to give [OBAMA].
REPAIR_CASES = [
    "[{'name': 'Obama', 'type': 'PER'}]",  # Python quotes
    '[{"name": "Obama", "type": "PER"},]',  # trailing comma in the list
    '[{"name": "Obama", "type": "PER",}]',  # trailing comma in the object
    "```json\n[{'name': 'Obama', 'type': 'PER',},\n]\n```",
]


@pytest.mark.parametrize("text", REPAIR_CASES)
def test_repairs_what_is_safely_fixable(text: str) -> None:
    parsed = parse_answer(text)
    assert list(parsed.items) == [OBAMA]
    assert parsed.repaired


def test_repair_keeps_commas_and_quotes_inside_strings() -> None:
    text = "[{'name': \"Trump's wall, ]\", 'type': 'OTHER', 'ok': true, 'note': null},]"
    items = extract_json_list(text)
    assert items == [{"name": "Trump's wall, ]", "type": "OTHER", "ok": True, "note": None}]


def test_truncated_answer_keeps_complete_objects() -> None:
    text = (
        "Reasoning: several names.\n```json\n"
        '[{"name": "Obama", "type": "PER"}, {"name": "White House", "type": "LOC"}, '
        '{"name": "Cong'
    )
    parsed = parse_answer(text)
    assert parsed.truncated
    assert [i["name"] for i in parsed.items] == ["Obama", "White House"]


def test_truncated_grounding_answer_with_nested_boxes() -> None:
    text = (
        '[{"entity": "Obama", "type": "PER", "boxes": [[1, 2, 30, 40]]}, '
        '{"entity": "NBA", "boxes": [[5, 6'
    )
    parsed = parse_answer(text)
    assert parsed.truncated
    assert parsed.items == ({"entity": "Obama", "type": "PER", "boxes": [[1, 2, 30, 40]]},)


def test_empty_list_is_an_answer() -> None:
    assert extract_json_list("There are no named entities in this post.\n[]") == []
    parsed = parse_answer("```json\n[]\n```")
    assert parsed.items == () and parsed.fenced and not parsed.truncated


def test_list_of_objects_preferred_over_numbers_in_prose() -> None:
    text = '[{"entity": "Obama", "boxes": []}]\nThe face is near [10, 20, 30, 40].'
    assert extract_json_list(text) == [{"entity": "Obama", "boxes": []}]


def test_single_bare_object_is_a_one_item_list() -> None:
    assert extract_json_list('The answer is {"name": "Obama", "type": "PER"}.') == [OBAMA]


#: Answers with no usable list, and the kind of error each must give.
UNUSABLE_CASES = [
    ("", "empty"),
    ("   \n ", "empty"),
    ("I cannot identify any entities in this image.", "no_json"),
    ('[{"name": "Oba', "truncated"),
    ('```json\n[{"name": "Obama" "type": "PER"}]\n```', "invalid_json"),
    ("[Obama, PER]", "invalid_json"),
    # Python would join the two strings into one key: a missing colon is not repaired
    ('[{"name" "NBA" "type": "ORG"}]', "invalid_json"),
    ('"just a string"  and {oops', "truncated"),
]


@pytest.mark.parametrize(("text", "kind"), UNUSABLE_CASES)
def test_unusable_answers_raise_a_short_kind(text: str, kind: str) -> None:
    with pytest.raises(AnswerError) as info:
        parse_answer(text)
    assert info.value.kind == kind
    assert isinstance(info.value, DataError)
    assert "\n" not in str(info.value)


def test_none_answer_is_empty() -> None:
    with pytest.raises(AnswerError) as info:
        parse_answer(None)
    assert info.value.kind == "empty"


def test_later_fence_wins_over_earlier_draft() -> None:
    text = (
        'Draft:\n```json\n[{"name": "Obama", "type": "ORG"}]\n```\n'
        'Corrected:\n```json\n[{"name": "Obama", "type": "PER"}]\n```'
    )
    assert extract_json_list(text) == [OBAMA]


def test_deeply_nested_garbage_does_not_crash() -> None:
    with pytest.raises(AnswerError):
        parse_answer("[" * 2000)
    nested = extract_json_list("[" * 50 + "]" * 50)  # a list, though not of objects
    assert len(nested) == 1 and isinstance(nested[0], list)


@pytest.mark.parametrize(
    "text",
    [
        "[" * 200_000,  # nested, never closed
        "[" * 99_999 + "x" + "]" * 100_000,  # nested, closed, invalid at the bottom
        "['" * 100_000,  # open lists and quotes
        "[a " * 66_000,  # unclosed lists in prose
        "```" * 60_000,  # fences with no newline
    ],
    ids=["unclosed", "closed-invalid", "quotes", "prose", "fences"],
)
def test_hostile_200kb_answers_are_read_in_linear_time(text: str) -> None:
    # the old scanner was quadratic: 2-13 s at 8 KB, hours at 200 KB; this one takes
    # well under a second (benchmarks/bench_answers.py); the bound only catches a hang
    t0 = time.perf_counter()
    with pytest.raises(AnswerError):
        parse_answer(text)
    assert time.perf_counter() - t0 < 10


def test_answer_over_the_size_limit_is_not_read() -> None:
    big = '[{"name": "Obama", "type": "PER"}]' + " " * 5000
    with pytest.raises(AnswerError) as info:
        parse_answer(big, max_bytes=4096)
    assert info.value.kind == "too_large" and "4096" in str(info.value)
    assert parse_answer(big, max_bytes=None).items == (OBAMA,)
    assert parse_answer("[]" + "é" * 1000, max_bytes=2100).items == ()  # 2002 bytes
    with pytest.raises(AnswerError):
        parse_answer("[]" + "é" * 1100, max_bytes=2100)  # 2202 bytes, 1102 characters
