"""What one stage spent, from counters that live longer than the stage.

A backend's counters (its usage meter, an OpenAI backend's per-endpoint
requests) count for the whole run, and both MLLM stages share one backend:
the numbers a stage reports are the difference between after and before it.
On the Ray engine each actor has its own backend, so each batch sends its own
difference and the driver adds them up. Both work on nested dicts of numbers
(``{"endpoints": {url: {"requests": 3, ...}}}``); other leaves are kept as the
later value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def delta(after: Mapping[str, Any], before: Mapping[str, Any]) -> dict[str, Any]:
    """``after - before`` for every number, recursively (a key new in ``after`` counts whole)."""
    out: dict[str, Any] = {}
    for key, value in after.items():
        old = before.get(key)
        if isinstance(value, Mapping):
            out[key] = delta(value, old if isinstance(old, Mapping) else {})
        elif _number(value) and _number(old):
            out[key] = value - old
        else:
            out[key] = value
    return out


def add(total: Mapping[str, Any], more: Mapping[str, Any]) -> dict[str, Any]:
    """``total + more`` for every number, recursively (keys of either side kept)."""
    out: dict[str, Any] = dict(total)
    for key, value in more.items():
        old = out.get(key)
        if isinstance(value, Mapping):
            out[key] = add(old if isinstance(old, Mapping) else {}, value)
        elif _number(value) and _number(old):
            out[key] = old + value
        else:
            out[key] = value
    return out
