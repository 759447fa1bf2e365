"""Several OpenAI-compatible endpoints (vLLM replicas) behind one backend.

Each request goes to the least-loaded healthy endpoint (fewest requests in
flight, then fewest sent). An endpoint that fails in a way another replica
would not (connection error, timeout, 5xx) is *rested* for ``rest`` seconds:
it gets no new request while another endpoint is healthy, so a replica that
died mid-run costs one failed attempt per request in flight, not one per
request. When every endpoint is resting, the one back soonest is used (a run
never stalls on its own bookkeeping). Counters per endpoint feed the summary.
"""

from __future__ import annotations

import threading
import time
import urllib.parse
from collections.abc import Callable, Collection, Sequence

import attrs


def join_url(base: str, path: str) -> str:
    """``path`` appended to ``base``'s path, its query kept after it: Azure's
    ``.../deployments/d?api-version=...`` + ``chat/completions`` stays a valid URL."""
    parts = urllib.parse.urlsplit(base)
    joined = parts.path.rstrip("/") + "/" + path.lstrip("/")
    return urllib.parse.urlunsplit(parts._replace(path=joined))


@attrs.define
class Endpoint:
    """One base URL and what happened there."""

    url: str
    in_flight: int = 0
    requests: int = 0  # attempts sent
    ok: int = 0  # attempts answered (any HTTP status that is not the endpoint's fault)
    failed: int = 0  # connection errors, timeouts, 5xx
    rested: int = 0  # times it was put to rest
    rest_until: float = 0.0

    def as_dict(self) -> dict[str, int]:
        return {
            "requests": self.requests,
            "ok": self.ok,
            "failed": self.failed,
            "rested": self.rested,
        }


class EndpointPool:
    """Thread-safe choice of endpoint; ``acquire``/``release`` around each attempt."""

    def __init__(
        self,
        urls: Sequence[str],
        rest: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not urls:
            raise ValueError("at least one endpoint is needed")
        self.endpoints = [Endpoint(u) for u in urls]
        self.rest = rest
        self._clock = clock
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.endpoints)

    def acquire(self, avoid: Collection[str] = ()) -> Endpoint:
        """The endpoint for the next attempt; ``avoid`` lists those that failed it already."""
        with self._lock:
            now = self._clock()
            candidates = [e for e in self.endpoints if e.url not in avoid] or self.endpoints
            healthy = [e for e in candidates if e.rest_until <= now]
            if healthy:
                chosen = min(healthy, key=lambda e: (e.in_flight, e.requests))
            else:
                chosen = min(candidates, key=lambda e: e.rest_until)
            chosen.in_flight += 1
            chosen.requests += 1
            return chosen

    def release(self, endpoint: Endpoint, *, failed: bool) -> None:
        """End an attempt; a failed one rests the endpoint, an answered one ends its rest."""
        with self._lock:
            endpoint.in_flight -= 1
            if failed:
                self._rest(endpoint)
            else:
                endpoint.ok += 1
                endpoint.rest_until = 0.0

    def mark_down(self, url: str) -> None:
        """Rest an endpoint found dead outside a request (the availability check)."""
        with self._lock:
            for e in self.endpoints:
                if e.url == url:
                    self._rest(e)

    def _rest(self, endpoint: Endpoint) -> None:
        endpoint.failed += 1
        endpoint.rested += 1
        endpoint.rest_until = self._clock() + self.rest

    def has_healthy(self, avoid: Collection[str] = ()) -> bool:
        with self._lock:
            now = self._clock()
            return any(e.rest_until <= now and e.url not in avoid for e in self.endpoints)

    def stats(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {e.url: e.as_dict() for e in self.endpoints}
