"""What one stage spent, from counters that outlive it (a backend's meter, shared
by both MLLM stages): after - before, and summed over Ray actors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def delta(after: Mapping[str, Any], before: Mapping[str, Any]) -> dict[str, Any]:
    """``after - before`` for every number, recursively (a new key counts whole)."""
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
    """``total + more`` for every number, recursively."""
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
