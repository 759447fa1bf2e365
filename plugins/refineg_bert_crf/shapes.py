"""Word shapes: the casing (and tweet-syntax) signal an uncased encoder cannot see.

MiniLM lower-cases everything, so "Apple" and "apple" reach it as the same
sub-words. A handful of shape classes, embedded and concatenated to each
word's first-sub-word vector, gives the emission layer that cue back.
"""

from __future__ import annotations

import functools
import re

SHAPES = (
    "<pad>",
    "lower",
    "init-cap",
    "all-caps",
    "mixed-case",
    "number",
    "alnum",
    "punct",
    "mention",
    "hashtag",
    "url",
    "other",
)
SHAPE_INDEX = {name: i for i, name in enumerate(SHAPES)}

_NUMBER = re.compile(r"^[+-]?\d[\d.,:/-]*%?$")
_URL = re.compile(r"^(https?://|www\.)", re.IGNORECASE)


@functools.lru_cache(maxsize=1 << 16)
def word_shape(token: str) -> int:
    """Index of ``token``'s shape class in :data:`SHAPES`.

    Cached: tweets repeat their words, and the character tests cost ~15 us a
    word, about 4% of a 1-thread ``pipe`` before the cache (issue 20 profile).
    """
    if len(token) > 1 and token[0] == "@":
        return SHAPE_INDEX["mention"]
    if len(token) > 1 and token[0] == "#":
        return SHAPE_INDEX["hashtag"]
    if _URL.match(token):
        return SHAPE_INDEX["url"]
    if _NUMBER.match(token):
        return SHAPE_INDEX["number"]
    if not any(ch.isalnum() for ch in token):
        return SHAPE_INDEX["punct"]
    letters = [ch for ch in token if ch.isalpha()]
    if any(ch.isdigit() for ch in token) and letters:
        return SHAPE_INDEX["alnum"]
    cased = [ch for ch in letters if ch.isupper() or ch.islower()]
    if not cased:
        return SHAPE_INDEX["other"]
    if all(ch.islower() for ch in cased):
        return SHAPE_INDEX["lower"]
    if len(cased) > 1 and all(ch.isupper() for ch in cased):
        return SHAPE_INDEX["all-caps"]
    if cased[0].isupper() and all(ch.islower() for ch in cased[1:]):
        return SHAPE_INDEX["init-cap"]
    return SHAPE_INDEX["mixed-case"]
