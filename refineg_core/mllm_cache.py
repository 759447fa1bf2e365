"""An on-disk response cache that wraps any MLLM backend.

A rerun of the same job must cost nothing, and a run must be reproducible from
its cache alone. The key is the SHA-256 of the backend's ``cache_identity()``
(model, sampling options, box frame) and the request's fingerprint (messages,
parameters and image *bytes*), so a changed image, prompt or model is a miss.
One JSON file per key in 256 shard folders, written atomically (temp file +
rename), so a killed run never leaves a torn entry. Errors are never cached.
Secrets never reach the cache: the identity is ``secrets.redact``-ed before it
is hashed or stored, and every string of an entry goes through
``secrets.scrub`` (a prompt or an answer could quote a key).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from refineg_core import secrets
from refineg_core.boxcodecs import BoxCodec
from refineg_core.chat import ChatRequest, ChatResponse, Usage
from refineg_core.errors import BackendUnavailable
from refineg_core.interfaces import MLLMBackend


class CachedBackend(MLLMBackend):
    """``MLLMBackend`` that answers from ``cache_dir`` when it can, else asks ``inner``.

    Counters (``stats``): ``hits``, ``misses``, ``calls`` (inner calls made),
    ``errors`` (inner calls that raised), ``corrupt`` (unreadable entries,
    treated as misses and rewritten). Identical requests in flight at the same
    time make one inner call.

    When ``inner`` is unreachable but the cache has entries, ``check_available``
    still says yes: hits are served and misses fail at once with
    ``BackendUnavailable`` (no retries against a dead server), so a run can be
    replayed from its cache offline.
    """

    def __init__(self, inner: MLLMBackend, cache_dir: Path | str) -> None:
        super().__init__(inner.options, inner.labels)
        self.inner = inner
        self.cache_dir = Path(cache_dir)
        self.supports_images = inner.supports_images  # type: ignore[misc]
        identity = secrets.redact(inner.cache_identity())
        self._identity = json.dumps(identity, sort_keys=True, default=str)
        self._stats_lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        self._key_locks_lock = threading.Lock()
        self._unavailable: str | None = None
        self.stats: Counter = Counter(hits=0, misses=0, calls=0, errors=0, corrupt=0)
        #: Tokens spent by inner calls in this process, and tokens the cache saved.
        self.usage = Usage()
        self.saved_usage = Usage()

    # -- delegation ----------------------------------------------------------
    @property
    def box_codec(self) -> BoxCodec:
        return self.inner.box_codec

    @property
    def max_concurrency(self) -> int:
        return self.inner.max_concurrency

    def describe(self) -> str:
        return f"{self.inner.describe()} (cache: {self.cache_dir})"

    def cache_identity(self) -> dict:
        return self.inner.cache_identity()

    def check_available(self) -> str | None:
        reason = self.inner.check_available()
        self._unavailable = reason
        if reason is not None and self._has_entries():
            return None
        return reason

    def close(self) -> None:
        closer = getattr(self.inner, "close", None)
        if callable(closer):
            closer()

    # -- the cache -----------------------------------------------------------
    def key(self, request: ChatRequest) -> str:
        h = hashlib.sha256()
        h.update(self._identity.encode())
        h.update(b"\0")
        h.update(request.fingerprint().encode())
        return h.hexdigest()

    def path_for(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.json"

    def complete(self, request: ChatRequest) -> ChatResponse:
        key = self.key(request)
        hit = self._read(key, quiet=True)
        if hit is not None:
            return hit
        lock = self._lock_for(key)
        try:
            with lock:
                return self._miss(key, request)
        finally:
            with self._key_locks_lock:
                self._key_locks.pop(key, None)

    def _miss(self, key: str, request: ChatRequest) -> ChatResponse:
        hit = self._read(key)  # another thread may have just answered it
        if hit is not None:
            return hit
        self._count("misses")
        if self._unavailable is not None:
            self._count("errors")
            raise BackendUnavailable(
                f"not in the cache and the backend is unavailable: {self._unavailable}"
            )
        self._count("calls")
        try:
            response = self.inner.complete(request)
        except Exception:
            self._count("errors")
            raise
        self._write(key, request, response)
        with self._stats_lock:
            self.usage = self.usage + response.usage
        return response

    def _read(self, key: str, *, quiet: bool = False) -> ChatResponse | None:
        """The cached answer, or None; ``quiet`` skips counting a corrupt entry twice."""
        path = self.path_for(key)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            resp = data["response"]
            tokens = resp["usage"]
            usage = Usage(int(tokens["prompt_tokens"]), int(tokens["completion_tokens"]))
            hit = ChatResponse(
                text=str(resp["text"]), usage=usage, model=resp.get("model"), cached=True
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            if not quiet:
                self._count("corrupt")
            return None
        self._count("hits")
        with self._stats_lock:
            self.saved_usage = self.saved_usage + usage
        return hit

    def _write(self, key: str, request: ChatRequest, response: ChatResponse) -> None:
        path = self.path_for(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        entry: dict[str, Any] = {
            "key": key,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "purpose": request.purpose,
            "identity": json.loads(self._identity),
            "request": request._describe(),
            "images": [str(img.path) for img in request.images],
            "response": {
                "text": response.text,
                "usage": {
                    "prompt_tokens": response.usage.prompt_tokens,
                    "completion_tokens": response.usage.completion_tokens,
                },
                "model": response.model,
            },
        }
        entry = secrets.scrub_data(entry)
        fd, tmp = tempfile.mkstemp(prefix=f".{key[:8]}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(entry, fh, ensure_ascii=False)
            # no fsync: an entry torn by a power cut reads as corrupt, i.e. a miss
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _has_entries(self) -> bool:
        if not self.cache_dir.is_dir():
            return False
        shards = (d for d in self.cache_dir.iterdir() if d.is_dir())
        return any(any(shard.glob("*.json")) for shard in shards)

    def _lock_for(self, key: str) -> threading.Lock:
        with self._key_locks_lock:
            lock = self._key_locks.get(key)
            if lock is None:
                lock = self._key_locks[key] = threading.Lock()
            return lock

    def _count(self, name: str) -> None:
        with self._stats_lock:
            self.stats[name] += 1
