"""An on-disk response cache around any MLLM backend, so a rerun costs nothing and
a run is reproducible from its cache alone.

The key hashes the backend's ``cache_identity()`` and the request's fingerprint
(image *bytes* included), so any change is a miss. Only answers that pass the
stage's ``check`` are stored: a failure is asked again by the next run, never
replayed forever. Secrets are redacted/scrubbed before anything is hashed or stored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from refineg_core import secrets
from refineg_core.backend_wrapper import BackendWrapper
from refineg_core.chat import ChatRequest, ChatResponse, Usage
from refineg_core.interfaces import MLLMBackend
from refineg_core.runstore import atomic_write
from refineg_core.usage import UsageMeter

T = TypeVar("T")
log = logging.getLogger(__name__)


class _BadEntry(Exception):
    """A cache entry that does not parse or validate: a miss, never a failure."""


def _token_count(usage: Any, name: str) -> int:
    """A usage number as stored: a finite, non-negative int (not a bool, not 2.5)."""
    value = usage.get(name) if isinstance(usage, dict) else None
    if type(value) is not int or value < 0:
        raise _BadEntry(f"usage.{name} is {value!r}, not a non-negative integer")
    return value


def parse_entry(raw: bytes) -> ChatResponse:
    """The answer of an entry file, fully checked (a hit feeds token counts and the
    stages): a torn or hostile entry raises ``_BadEntry``, a miss, never a crash or a lie."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise _BadEntry(f"does not parse ({type(exc).__name__})") from None
    resp = data.get("response") if isinstance(data, dict) else None
    if not isinstance(resp, dict):
        raise _BadEntry("has no response object")
    text, model = resp.get("text"), resp.get("model")
    if not isinstance(text, str):
        raise _BadEntry(f"response.text is {type(text).__name__}, not a string")
    if model is not None and not isinstance(model, str):
        raise _BadEntry(f"response.model is {type(model).__name__}, not a string")
    tokens = resp.get("usage")
    usage = Usage(_token_count(tokens, "prompt_tokens"), _token_count(tokens, "completion_tokens"))
    return ChatResponse(text=text, usage=usage, model=model, cached=True)


class CachedBackend(BackendWrapper):
    """Answers from ``cache_dir`` when it can, else asks ``inner`` (identical requests
    in flight make one call). ``stats`` counts hits, misses, calls, errors, unusable
    answers, rejected hits and corrupt entries. Availability is ``inner``'s alone:
    old entries never make a dead server look alive."""

    def __init__(self, inner: MLLMBackend, cache_dir: Path | str) -> None:
        super().__init__(inner)
        self.cache_dir = Path(cache_dir)
        identity = secrets.redact(inner.cache_identity())
        self._identity = json.dumps(identity, sort_keys=True, default=str)
        self._stats_lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        self._key_locks_lock = threading.Lock()
        self.stats: Counter = Counter(
            hits=0, misses=0, calls=0, errors=0, unusable=0, rejected_hits=0, corrupt=0
        )
        #: The run's one usage meter: calls and tokens spent, and what the cache saved.
        self.meter = UsageMeter()

    def describe(self) -> str:
        return f"{self.inner.describe()} (cache: {self.cache_dir})"

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
        return self.complete_checked(request, lambda response: response)[0]

    def complete_checked(
        self, request: ChatRequest, check: Callable[[ChatResponse], T]
    ) -> tuple[ChatResponse, T]:
        """The answer and what ``check`` made of it; an answer ``check`` refuses is not
        cached (and a cached one it refuses is asked again)."""
        key = self.key(request)
        found = self._checked_hit(key, check, quiet=True)
        if found is not None:
            return found
        lock = self._lock_for(key)
        try:
            with lock:
                return self._miss(key, request, check)
        finally:
            with self._key_locks_lock:
                self._key_locks.pop(key, None)

    def _checked_hit(
        self, key: str, check: Callable[[ChatResponse], T], *, quiet: bool = False
    ) -> tuple[ChatResponse, T] | None:
        hit = self._read(key, quiet=quiet)
        if hit is None:
            return None
        try:
            value = check(hit)
        except Exception:
            if not quiet:  # every rejected hit passes here once more, under the key's lock
                self._count("rejected_hits")
            return None
        self._count("hits")
        self.meter.answered(hit)
        return hit, value

    def _miss(
        self, key: str, request: ChatRequest, check: Callable[[ChatResponse], T]
    ) -> tuple[ChatResponse, T]:
        found = self._checked_hit(key, check)  # another thread may have just answered it
        if found is not None:
            return found
        self._count("misses")
        self._count("calls")
        try:
            response = self.inner.complete(request)
        except Exception:
            self._count("errors")
            self.meter.failed()
            raise
        self.meter.answered(response)
        try:
            value = check(response)
        except Exception:
            self._count("unusable")
            raise
        self._write(key, request, response)
        return response, value

    def _read(self, key: str, *, quiet: bool = False) -> ChatResponse | None:
        """The cached answer, or None; a bad entry is a warned miss (``quiet``: the
        lock-free first look, repeated under the lock, neither counts nor warns)."""
        path = self.path_for(key)
        try:
            return parse_entry(path.read_bytes())
        except FileNotFoundError:
            return None
        except IsADirectoryError:
            problem = "is a directory, not an entry file"
        except OSError as exc:
            problem = f"cannot be read ({exc.strerror or type(exc).__name__})"
        except _BadEntry as exc:
            problem = str(exc)
        if not quiet:
            self._count("corrupt")
            log.warning(
                "%s: cache entry %s; treated as a miss, asked again and rewritten",
                secrets.scrub(str(path)),
                problem,
            )
        return None

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
        if path.is_dir() and not path.is_symlink():  # see _read: it was a miss
            shutil.rmtree(path)
        # no fsync: an entry torn by a power cut reads as corrupt, i.e. a miss
        with atomic_write(path) as fh:
            json.dump(entry, fh, ensure_ascii=False)

    def _lock_for(self, key: str) -> threading.Lock:
        with self._key_locks_lock:
            return self._key_locks.setdefault(key, threading.Lock())

    def _count(self, name: str) -> None:
        with self._stats_lock:
            self.stats[name] += 1


def complete_checked(
    backend: MLLMBackend, request: ChatRequest, check: Callable[[ChatResponse], T]
) -> tuple[ChatResponse, T]:
    """Call ``backend`` and apply ``check`` (through a cache, when it is one)."""
    if isinstance(backend, CachedBackend):
        return backend.complete_checked(request, check)
    response = backend.complete(request)
    return response, check(response)
