"""One validity check for samples: what is read can be written. A sample an output
writer cannot write would pass reading and every paid MLLM call, then kill the run
at the end; so readers refuse it at its file and line, asking every installed
output format (``DatasetFormat.unwritable``) and what every writer shares.
"""

from __future__ import annotations

import functools
import json

from refineg_core.errors import DataError, PluginError
from refineg_core.types import Entity, Sample


@functools.cache
def _writers() -> tuple[tuple[str, type], ...]:
    """Every installed format that can be an output (looked up once; a broken one is
    left out here and reported at config load when ``[outputs]`` names it)."""
    from refineg_core import registry  # registry imports the formats package

    found = []
    for name in registry.available_names(registry.slot_group("format")):
        try:
            cls = registry.load_class("format", name)
        except PluginError:
            continue
        if getattr(cls, "output_file", None) is not None:
            found.append((name, cls))
    return tuple(found)


def _surrogate(text: str) -> bool:
    """A lone surrogate (``"\\ud800"`` escaped in JSON) cannot be encoded as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _shared_problem(sample: Sample) -> str | None:
    """What no writer can write: text UTF-8 cannot encode, spans outside the tokens."""
    texts = [sample.id, sample.text, *sample.tokens]
    for e in sample.entities:
        texts += (e.type, e.text)
    if sample.image is not None:
        texts.append(sample.image.image_id)
    try:  # one encode of everything: the common case costs one C call
        "".join(texts).encode("utf-8")
    except UnicodeEncodeError:
        return _surrogate_problem(sample)
    if sample.meta:
        try:
            json.dumps(dict(sample.meta), ensure_ascii=False, default=str).encode("utf-8")
        except (UnicodeEncodeError, ValueError, TypeError, RecursionError) as exc:
            return f"meta cannot be written as UTF-8 JSON ({type(exc).__name__})"
    for i, e in enumerate(sample.entities):
        if e.end > len(sample.tokens):
            return f"entity {i} span [{e.start}, {e.end}) runs past the {len(sample.tokens)} tokens"
    return None


def _surrogate_problem(sample: Sample) -> str:
    """Which string holds the lone surrogate (only asked once one was found)."""
    strings = [
        ("id", sample.id),
        ("text", sample.text),
        *((f"token {i}", t) for i, t in enumerate(sample.tokens)),
        *((f"entity {i} type", e.type) for i, e in enumerate(sample.entities)),
        *((f"entity {i} text", e.text) for i, e in enumerate(sample.entities)),
    ]
    if sample.image is not None:
        strings.append(("image id", sample.image.image_id))
    what, value = next((w, v) for w, v in strings if _surrogate(v))
    return f"{what} {value[:40]!r} holds a lone surrogate, which UTF-8 cannot encode"


def sample_problem(sample: Sample) -> str | None:
    """Why one of the run's output writers could not write ``sample``, or None."""
    problem = _shared_problem(sample)
    if problem is not None:
        return problem
    for name, cls in _writers():
        problem = cls.unwritable(sample)
        if problem is not None:
            return f"{problem}; the {name} writer cannot write it"
    return None


def check_sample(sample: Sample, *, where: str | None = None) -> Sample:
    """``sample`` unchanged, or a DataError at ``where`` saying why it cannot be written."""
    problem = sample_problem(sample)
    if problem is not None:
        raise DataError(f"sample {sample.id[:80]!r}: {problem}", where=where)
    return sample


def label_problem(etype: str) -> str | None:
    """Why entities of type ``etype`` could not be written (``"PER "``, ``"A\\tB"``), or
    None: the label set is checked when it is made, so predictions of a paid run
    never carry a type the output writers refuse."""
    probe = Sample("labels", ("x",), "x", entities=(Entity(0, 1, etype, "x"),))
    problem = sample_problem(probe)
    return None if problem is None else "entity " + problem.removeprefix("entity 0 ")
