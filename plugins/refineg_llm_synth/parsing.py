"""Reading an LLM's JSON list of ``{"text", "entity": [{"name", "type"}]}`` robustly.

Models wrap JSON in code fences, add prose, stop mid-list at the token limit,
or nest the list in an object. The stages' answer reader finds the list (a
truncated one yields its finished items); this module keeps every object in it
that looks like a sample. Structurally odd entities are
kept with empty fields (the core's validation counts them), not silently lost.
"""

from __future__ import annotations

from typing import Any

from refineg_stages.answers import AnswerError, parse_answer

from refineg_core.errors import BackendError

_ENTITY_KEYS = ("entity", "entities")
_TEXT_KEYS = ("text", "sentence")


class UnparsableAnswer(BackendError):
    """The answer holds no sample object at all (retrying may give a parsable one)."""

    kind = "unparsable"

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=True)


def _entity(item: Any) -> tuple[str, str]:
    if isinstance(item, dict):
        name = item.get("name", item.get("entity", ""))
        etype = item.get("type", item.get("label", ""))
        return (
            name.strip() if isinstance(name, str) else "",
            etype.strip() if isinstance(etype, str) else "",
        )
    if isinstance(item, (list, tuple)) and len(item) == 2 and all(isinstance(x, str) for x in item):
        return item[0].strip(), item[1].strip()
    return "", ""


def _as_sample(obj: dict) -> tuple[str, tuple[tuple[str, str], ...]] | None:
    text = next((obj[k] for k in _TEXT_KEYS if isinstance(obj.get(k), str)), None)
    if text is None:
        return None
    ents = next((obj[k] for k in _ENTITY_KEYS if k in obj), [])
    if isinstance(ents, dict):
        ents = [ents]
    if not isinstance(ents, list):
        ents = [ents]
    return text.strip(), tuple(_entity(e) for e in ents)


def _collect(value: Any, out: list) -> None:
    """Samples inside a decoded value: the value itself, or lists/objects that hold them."""
    if isinstance(value, dict):
        sample = _as_sample(value)
        if sample is not None:
            out.append(sample)
            return
        for v in value.values():
            if isinstance(v, (list, dict)):
                _collect(v, out)
    elif isinstance(value, list):
        for v in value:
            _collect(v, out)


def parse_samples(answer: str) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    """Every complete sample object in ``answer``, in order; raise when there is none.

    Finding the JSON (fences, prose, a cut-off list) is refineg_stages'
    ``parse_answer``, the same reader the MLLM stages use; this only maps what
    it finds to samples.
    """
    found: list = []
    try:
        _collect(list(parse_answer(answer).items), found)
    except AnswerError as exc:
        reason = exc.kind
    else:
        reason = "no object with a text"
    if not found:
        snippet = " ".join((answer or "").split())[:120]
        raise UnparsableAnswer(f"no JSON sample object in the answer ({reason}): {snippet!r}")
    return found
