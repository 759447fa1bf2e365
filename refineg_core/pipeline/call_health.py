"""What an MLLM stage learns while it calls its backend: counts, and whether to stop.

``Counters`` is bumped by many worker threads; ``CallHealth`` is the breaker
(when every call failed, a wrong URL or key, the stage stops calling instead of
failing 10,000 times); ``StageHealth`` is what every chunk of one stage run
shares: reachability (asked once) and the one breaker.
"""

from __future__ import annotations

import threading
from collections import Counter

from refineg_core.chat import ChatResponse
from refineg_core.errors import BackendUnavailable


class CallHealth:
    """Trips after ``limit`` failed calls with no success ever (then every call fails
    at once); one success disarms it for the run (a flaky server is not abandoned)."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self._lock = threading.Lock()
        self._in_a_row = 0
        self._answered = False
        self._last = ""
        self.tripped: str | None = None

    def before_call(self) -> None:
        if self.tripped:
            raise BackendUnavailable(self.tripped)

    def answered(self) -> None:
        with self._lock:
            self._answered = True
            self._in_a_row = 0

    @property
    def every_call_failed(self) -> str | None:
        """Why the stage must count as unavailable: calls were made, none answered."""
        if self.tripped:
            return self.tripped
        if self._in_a_row and not self._answered:
            return f"all {self._in_a_row} calls failed (last: {self._last})"
        return None

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            self._last = str(exc)[:200]
            self._in_a_row += 1
            if not self._answered and self._in_a_row >= self.limit and not self.tripped:
                self.tripped = (
                    f"stopped calling after the first {self._in_a_row} calls all failed "
                    f"(last: {str(exc)[:200]})"
                )


class Counters:
    def __init__(self, breaker_after: int = 8, health: CallHealth | None = None) -> None:
        self._lock = threading.Lock()
        self.counts: Counter = Counter()
        self.health = health or CallHealth(breaker_after)

    def add(self, key: str, n: int = 1) -> None:
        if n:
            with self._lock:
                self.counts[key] += n

    def update(self, counts: Counter | dict[str, int]) -> None:
        with self._lock:
            self.counts.update({k: v for k, v in counts.items() if v})

    def usage(self, response: ChatResponse) -> None:
        with self._lock:
            self.counts["calls"] += 1
            if response.cached:
                self.counts["cached_calls"] += 1
            self.counts["prompt_tokens"] += response.usage.prompt_tokens
            self.counts["completion_tokens"] += response.usage.completion_tokens


class StageHealth:
    def __init__(self) -> None:
        self.calls: CallHealth | None = None
        self._checked = False
        self._reason: str | None = None

    def unavailable(self, backend) -> str | None:
        if not self._checked:
            self._reason = backend.check_available()
            self._checked = True
        return self._reason

    def breaker(self, limit: int) -> CallHealth:
        if self.calls is None:
            self.calls = CallHealth(limit)
        return self.calls
