"""The one usage meter (calls and tokens an MLLM backend spent), owned by the response
cache; stages and the summary read deltas of it instead of counting themselves."""

from __future__ import annotations

import threading

import attrs

from refineg_core.chat import ChatResponse


@attrs.frozen
class UsageSnapshot:
    """Counts at one moment; ``later - earlier`` is what happened in between."""

    calls: int = 0
    cached_calls: int = 0
    failed_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    saved_prompt_tokens: int = 0
    saved_completion_tokens: int = 0

    def __sub__(self, other: UsageSnapshot) -> UsageSnapshot:
        return UsageSnapshot(
            *(a - b for a, b in zip(attrs.astuple(self), attrs.astuple(other), strict=True))
        )

    def as_dict(self) -> dict[str, int]:
        return attrs.asdict(self)


class UsageMeter:
    """Thread-safe counts of answered, cached and failed calls and their tokens."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(attrs.fields_dict(UsageSnapshot), 0)

    def answered(self, response: ChatResponse) -> None:
        """A call the backend answered (tokens spent) or the cache answered (saved)."""
        with self._lock:
            if response.cached:
                self._counts["cached_calls"] += 1
                self._counts["saved_prompt_tokens"] += response.usage.prompt_tokens
                self._counts["saved_completion_tokens"] += response.usage.completion_tokens
            else:
                self._counts["calls"] += 1
                self._counts["prompt_tokens"] += response.usage.prompt_tokens
                self._counts["completion_tokens"] += response.usage.completion_tokens

    def failed(self) -> None:
        with self._lock:
            self._counts["failed_calls"] += 1

    def snapshot(self) -> UsageSnapshot:
        with self._lock:
            return UsageSnapshot(**self._counts)
