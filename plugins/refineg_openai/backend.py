"""OpenAI-compatible chat completions: vLLM serving Qwen2.5-VL, Ollama, hosted APIs.

The release sent one request at a time, tried twice and lost the sample on
failure. Here requests run concurrently up to ``concurrency`` (a semaphore, so
the limit holds however many threads call), transient failures (timeouts,
dropped connections, 429, 5xx) are retried with exponential backoff and
jitter, a 429's Retry-After is honoured, and a 4xx that retrying cannot fix
fails at once with the server's own message.

A server is not trusted to behave: every request has a total ``deadline``
(httpx's timeout only bounds the gap between two bytes, so a server trickling
a byte at a time would otherwise hold a worker forever), an answer over
``max_answer_bytes`` is refused unread, and every message the backend raises
is scrubbed of the configured secrets (the API key, secret-looking options),
which are registered with ``refineg_core.secrets`` so that every writer hides
them too. ``base_url`` may list several replicas (``endpoints.EndpointPool``).
When a request carries its answer's JSON schema and ``answer_schema`` is on,
it is sent as ``response_format`` (vLLM turns it into guided decoding); a
server that rejects it is asked without it, once, and never again this run.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import os
import random
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import attrs
import httpx
import pydantic

from refineg_core import secrets
from refineg_core.chat import ChatMessage, ChatRequest, ChatResponse, ImagePart, TextPart, Usage
from refineg_core.errors import BackendError, BackendUnavailable, PluginError
from refineg_core.interfaces import BoxCodec, MLLMBackend, PluginOptions
from refineg_core.registry import create_box_frame
from refineg_openai.endpoints import Endpoint, EndpointPool, join_url
from refineg_openai.images import DiskImages, image_data_url

#: Tokens per answer when neither the request nor the options say.
DEFAULT_MAX_TOKENS = 1024
#: Statuses worth retrying although they are 4xx.
_RETRYABLE_4XX = {408, 409, 425, 429}
#: A 4xx whose message says this is the server refusing the answer schema.
_SCHEMA_REJECTED = re.compile(r"response_format|json_schema|guided|grammar|structured", re.I)
#: Longest wait any timing option may ask for (seconds): timers must stay finite and
#: within what ``threading`` accepts.
_DAY = 86400.0
#: Most of an error body that is read (the message is all that is kept).
_ERROR_BODY_MAX = 65536


class OpenAIOptions(PluginOptions):
    #: One URL, or a list of replicas serving the same model (least-loaded first).
    base_url: str | list[str] = "http://127.0.0.1:8000/v1"
    model: str = "Qwen/Qwen2.5-VL-72B-Instruct"
    #: Name of the environment variable holding the key (the key itself never goes in a config).
    api_key_env: str | None = None
    #: Longest wait for the next bytes (connect, send, or read) before an attempt fails.
    timeout: float = pydantic.Field(120.0, gt=0, le=_DAY)
    #: Longest one request may take end to end, retries and waits included.
    deadline: float = pydantic.Field(600.0, gt=0, le=7 * _DAY)
    #: Larger answers (UTF-8 bytes of the message) are a failure, neither parsed nor cached.
    max_answer_bytes: int = pydantic.Field(262144, ge=1024)
    temperature: float = pydantic.Field(0.1, ge=0)
    #: The most tokens one answer may have. A stage's own limit (``[refine] max_tokens``...)
    #: is used when lower, never when higher. None: the stage decides (1024 if it does not).
    max_tokens: int | None = pydantic.Field(None, ge=1)
    seed: int | None = 0
    #: Requests in flight at once, over all endpoints together.
    concurrency: int = pydantic.Field(8, ge=1, le=512)
    #: Retries after the first attempt (so ``retries=3`` means at most 4 attempts).
    retries: int = pydantic.Field(3, ge=0, le=20)
    backoff_base: float = pydantic.Field(1.0, ge=0, le=_DAY)
    backoff_max: float = pydantic.Field(30.0, ge=0, le=_DAY)
    #: Longest Retry-After the client will wait; longer ones are cut to this.
    retry_after_max: float = pydantic.Field(120.0, ge=0, le=_DAY)
    #: Seconds an endpoint that failed (connection, timeout, 5xx) gets no new request
    #: while another endpoint is healthy.
    endpoint_rest: float = pydantic.Field(30.0, ge=0, le=_DAY)
    #: Send the stage's answer JSON schema as ``response_format`` (vLLM: guided
    #: decoding); a server that rejects it is asked without it for the rest of the run.
    answer_schema: bool = True
    #: The model's box convention, a ``refineg.box_frames`` plugin (``refineg plugins``
    #: lists them): "qwen2.5-vl" (what the paper served), "qwen2-vl", "qwen3-vl",
    #: "pixels", "normalized"...
    box_frame: str = "qwen2.5-vl"
    #: Pixel bounds of the Qwen frames; keep them within the server's own (vLLM's
    #: ``--mm-processor-kwargs``), or the server resizes again and the frame moves.
    min_pixels: int | None = pydantic.Field(None, ge=1)
    max_pixels: int | None = pydantic.Field(None, ge=1)
    #: Downscale for "pixels"/"norm1000" frames (longest side).
    max_side: int | None = pydantic.Field(None, ge=1)
    #: Any other option of the box frame (a third-party frame's own settings).
    box_frame_options: dict[str, Any] = pydantic.Field(default_factory=dict)
    image_format: Literal["jpeg", "png"] = "jpeg"
    jpeg_quality: int = pydantic.Field(90, ge=1, le=100)
    #: A folder where images prepared for the model (resized to the frame, encoded)
    #: are kept across runs, so a demonstration pool that stays the same is prepared
    #: once rather than once per run. None: in memory only, for this process.
    image_cache_dir: Path | None = None
    #: The folder's bound (MiB); the least recently written images go first.
    image_cache_mb: int = pydantic.Field(1024, ge=1)
    #: Extra server-specific request fields (vLLM's ``top_k``, ``repetition_penalty``...).
    extra_body: dict[str, Any] = pydantic.Field(default_factory=dict)
    #: Extra HTTP headers (a gateway's); values under secret-looking names are secrets.
    headers: dict[str, str] = pydantic.Field(default_factory=dict)

    @pydantic.field_validator("base_url")
    @classmethod
    def _url(cls, v: str | list[str]) -> str | list[str]:
        urls = [v] if isinstance(v, str) else v
        if not urls:
            raise ValueError("base_url needs at least one URL")
        for u in urls:
            if not u.startswith(("http://", "https://")):
                raise ValueError(f"base_url must start with http:// or https://, got {u!r}")
            _check_host(u)
        cleaned = [u.rstrip("/") for u in urls]
        if len(set(cleaned)) != len(cleaned):
            raise ValueError("base_url lists the same URL twice")
        return cleaned[0] if isinstance(v, str) else cleaned

    @property
    def urls(self) -> list[str]:
        return [self.base_url] if isinstance(self.base_url, str) else list(self.base_url)

    def frame(self) -> BoxCodec:
        """The box frame these options name, with the settings that were given for it."""
        given = {
            "min_pixels": self.min_pixels,
            "max_pixels": self.max_pixels,
            "max_side": self.max_side,
        }
        settings = {k: v for k, v in given.items() if v is not None}
        twice = sorted(settings.keys() & self.box_frame_options.keys())
        if twice:
            raise PluginError(
                f"{twice} given both directly and in box_frame_options",
                where="backend.options.box_frame_options",
            )
        return create_box_frame(
            self.box_frame,
            {**settings, **self.box_frame_options},
            config_key="backend.options.box_frame",
        )

    @pydantic.model_validator(mode="after")
    def _codec(self) -> OpenAIOptions:
        try:
            self.frame()
        except PluginError as exc:  # as a validation error, so the config path is reported
            raise ValueError(str(exc).removeprefix(f"{exc.where}: ")) from None
        return self


def _check_host(url: str) -> None:
    """A base URL names a host (``http:///v1`` does not) and a valid port, if any."""
    parts = urllib.parse.urlsplit(url)
    try:
        parts.port  # noqa: B018 - reading it validates it
    except ValueError as exc:
        raise ValueError(f"base_url has an invalid port: {exc}") from None
    if not parts.hostname:
        shown = secrets.scrub(url)
        raise ValueError(f"base_url names no host: {shown!r} (e.g. http://127.0.0.1:8000/v1)")


def _error(
    message: str, kind: str, *, retryable: bool, cls: type[BackendError] = BackendError
) -> BackendError:
    """A backend error with its failure kind, its message scrubbed of secrets."""
    exc = cls(secrets.scrub(message), retryable=retryable)
    exc.kind = kind  # type: ignore[attr-defined]  # the runner counts failures by kind
    return exc


def _server_message(body: bytes, reason: str) -> str:
    """The server's own explanation, from the usual error shapes (OpenAI, vLLM, FastAPI)."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip()[:300] or reason
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:500]
        if isinstance(err, str):
            return err[:500]
        for key in ("message", "detail"):
            if data.get(key):
                return str(data[key])[:500]
    return str(data)[:300]


def _retry_after(headers: httpx.Headers) -> float | None:
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class _DeadlinePassed(Exception):
    pass


@attrs.frozen
class _Failed:
    """An attempt that failed in a way another attempt may fix."""

    error: BackendError
    wait: float | None = None  # what the server asked for (Retry-After)
    endpoint_fault: bool = False  # connection, timeout, 5xx: rest the endpoint, try another
    refused: bool = False  # nothing listens there (connection refused)


class _TooLarge(Exception):
    def __init__(self, size: int) -> None:
        self.size = size


class _Exchange:
    """One HTTP attempt run in its own thread, so the caller can leave at the deadline.

    The caller waits for it at most until the deadline; then it cuts the socket
    (which wakes a blocked read at once) and stops waiting.
    """

    def __init__(self) -> None:
        self.done = threading.Event()
        self.cancelled = threading.Event()
        self.sock: socket.socket | None = None
        self.result: tuple[int, bytes, httpx.Headers] | None = None
        self.error: BaseException | None = None

    def run(self, fn: Callable[[_Exchange], tuple[int, bytes, httpx.Headers]]) -> None:
        try:
            self.result = fn(self)
        except BaseException as exc:  # handed to the caller
            self.error = exc
        finally:
            self.done.set()

    def cut(self) -> None:
        self.cancelled.set()
        sock = self.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class OpenAIBackend(MLLMBackend):
    """Any server (or replicas) speaking ``POST {base_url}/chat/completions``."""

    Options = OpenAIOptions
    options: OpenAIOptions

    def __init__(self, options: OpenAIOptions | None = None, labels: Any = None) -> None:
        super().__init__(options, labels)
        o = self.options
        self._codec = o.frame()
        secrets.register(secrets.secret_values(o.extra_body))
        secrets.register(secrets.secret_values(o.headers))
        secrets.register(s for u in o.urls for s in secrets.url_secrets(u))
        self._slots = threading.BoundedSemaphore(o.concurrency)
        self._disk = (
            DiskImages(o.image_cache_dir, o.image_cache_mb * 2**20)
            if o.image_cache_dir is not None
            else None
        )
        self._pool = EndpointPool(o.urls, o.endpoint_rest)
        self._client: httpx.Client | None = None
        self._client_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._rng = random.Random()
        self._key_seen: str | None = None
        #: Set when the server stopped answering at all: later calls try once, not
        #: ``retries`` times with backoff, until one gets through.
        self._down = False
        #: Set when the server refused ``response_format``: no schema for the rest of the run.
        self._schema_refused = False
        self.stats: dict[str, int] = {
            "requests": 0,
            "attempts": 0,
            "retries": 0,
            "failovers": 0,
            "failures": 0,
            "deadline_exceeded": 0,
            "answers_too_large": 0,
            "schema_fallbacks": 0,
        }

    # -- contract ----------------------------------------------------------
    @property
    def box_codec(self) -> BoxCodec:
        return self._codec

    @property
    def max_concurrency(self) -> int:
        return self.options.concurrency

    def describe(self) -> str:
        urls = ", ".join(secrets.redact_url(u) for u in self.options.urls)
        return secrets.scrub(f"openai-compatible at {urls}, model {self.options.model}")

    def cache_identity(self) -> dict:
        """Model and everything that shapes the answer; not where it is served or how fast.

        Secret-looking ``extra_body`` values are masked: a key never shapes an
        answer, and the cache key and the cached identity must not hold it.
        """
        o = self.options
        return {
            "backend": "openai",
            "model": o.model,
            "temperature": o.temperature,
            # unset keeps the identity answers were cached under before the cap existed
            "max_tokens": DEFAULT_MAX_TOKENS if o.max_tokens is None else o.max_tokens,
            **({} if o.max_tokens is None else {"max_tokens_cap": True}),
            "seed": o.seed,
            "box_frame": self._codec.describe(),
            "max_side": o.max_side,
            "image_format": o.image_format,
            "jpeg_quality": o.jpeg_quality if o.image_format == "jpeg" else None,
            "extra_body": secrets.redact(o.extra_body),
            "answer_schema": o.answer_schema,
        }

    def endpoint_stats(self) -> dict[str, dict[str, int]]:
        """Per-endpoint counts (requests, ok, failed, rested) for the run summary, each
        endpoint named by its URL without credentials."""
        return {secrets.redact_url(url): n for url, n in self._pool.stats().items()}

    def report(self) -> dict:
        return {"endpoints": self.endpoint_stats()}

    def check_available(self) -> str | None:
        o = self.options
        if o.api_key_env and not os.environ.get(o.api_key_env):
            return f"environment variable {o.api_key_env} (the API key) is not set"
        reasons = []
        for url in o.urls:
            reason = self._check_endpoint(url)
            if reason is None:
                return None
            reasons.append(reason)
        return "; ".join(reasons)

    def _check_endpoint(self, url: str) -> str | None:
        o = self.options
        try:
            resp = self.client.get(
                join_url(url, "models"), headers=self._headers(), timeout=min(3.0, o.timeout)
            )
        except httpx.HTTPError as exc:
            self._pool.mark_down(url)
            return secrets.scrub(f"nothing answers at {url} ({type(exc).__name__}: {exc})")
        if resp.status_code in (401, 403):
            message = _server_message(resp.content[:_ERROR_BODY_MAX], resp.reason_phrase)
            return secrets.scrub(f"{url} rejected the API key: {message}")
        if resp.status_code == 200:
            try:
                served = [m.get("id") for m in resp.json().get("data", [])]
            except (ValueError, AttributeError):
                return None
            if served and o.model not in served:
                return secrets.scrub(
                    f"{url} does not serve model {o.model!r} "
                    f"(it serves: {', '.join(map(str, served[:10]))})"
                )
        return None

    def complete(self, request: ChatRequest) -> ChatResponse:
        payload = self.payload(request)
        with self._stats_lock:
            self.stats["requests"] += 1
        try:
            response = self._post_with_retries(payload, request.purpose)
        except BackendError:
            with self._stats_lock:
                self.stats["failures"] += 1
            raise
        return response

    # -- building the request ---------------------------------------------
    def payload(self, request: ChatRequest) -> dict[str, Any]:
        """The JSON body for ``request`` (images loaded, resized and encoded)."""
        o = self.options
        body: dict[str, Any] = {
            "model": o.model,
            "messages": [self._message(m) for m in request.messages],
            "temperature": o.temperature if request.temperature is None else request.temperature,
            "max_tokens": request.token_limit(o.max_tokens, DEFAULT_MAX_TOKENS),
        }
        if o.seed is not None:
            body["seed"] = o.seed
        if request.answer_schema is not None and o.answer_schema and not self._schema_refused:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": f"refineg_{request.purpose}",
                    "schema": dict(request.answer_schema),
                },
            }
        body.update(o.extra_body)
        return body

    def _message(self, message: ChatMessage) -> dict[str, Any]:
        if all(isinstance(p, TextPart) for p in message.parts):
            text = "\n".join(p.text for p in message.parts if isinstance(p, TextPart))
            return {"role": message.role, "content": text}
        content: list[dict[str, Any]] = []
        for part in message.parts:
            if isinstance(part, ImagePart):
                url = image_data_url(
                    part,
                    self._codec,
                    self.options.image_format,
                    self.options.jpeg_quality,
                    self._disk,
                )
                content.append({"type": "image_url", "image_url": {"url": url}})
            else:
                content.append({"type": "text", "text": part.text})
        return {"role": message.role, "content": content}

    # -- HTTP ----------------------------------------------------------------
    @property
    def client(self) -> httpx.Client:
        with self._client_lock:
            if self._client is None:
                o = self.options
                self._client = httpx.Client(
                    timeout=httpx.Timeout(o.timeout, connect=min(10.0, o.timeout)),
                    # room beyond ``concurrency``: an attempt abandoned at its deadline
                    # may hold its connection a moment longer
                    limits=httpx.Limits(
                        max_connections=2 * o.concurrency + 4,
                        max_keepalive_connections=o.concurrency,
                    ),
                )
            return self._client

    def close(self) -> None:
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def _headers(self) -> dict[str, str]:
        headers = dict(self.options.headers)
        env = self.options.api_key_env
        key = os.environ.get(env) if env else None
        if key:
            if key != self._key_seen:
                secrets.register([key])
                self._key_seen = key
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter: half fixed, half random, capped."""
        cap = min(self.options.backoff_max, self.options.backoff_base * 2**attempt)
        return cap / 2 + self._rng.uniform(0, cap / 2)

    def _exchange(
        self, url: str, payload: dict[str, Any], deadline_at: float
    ) -> tuple[int, bytes, httpx.Headers]:
        """POST and read the whole body, back by ``deadline_at`` whatever the server does."""
        o = self.options
        headers = self._headers()
        cap = 4 * o.max_answer_bytes + 65536  # JSON escapes take up to 4x a character's bytes

        def work(ex: _Exchange) -> tuple[int, bytes, httpx.Headers]:
            left = max(0.001, deadline_at - time.monotonic())
            timeout = httpx.Timeout(min(o.timeout, left), connect=min(10.0, o.timeout, left))
            with self.client.stream(
                "POST", url, json=payload, headers=headers, timeout=timeout
            ) as resp:
                stream = resp.extensions.get("network_stream")
                if stream is not None:
                    ex.sock = stream.get_extra_info("socket")
                limit = cap if resp.status_code == 200 else _ERROR_BODY_MAX
                body = bytearray()
                for chunk in resp.iter_bytes():
                    if ex.cancelled.is_set():
                        raise _DeadlinePassed
                    body += chunk
                    if len(body) > limit:
                        if resp.status_code != 200:
                            break  # an error body: its start holds the message
                        raise _TooLarge(len(body))
                return resp.status_code, bytes(body), resp.headers

        ex = _Exchange()
        thread = threading.Thread(target=ex.run, args=(work,), daemon=True, name="refineg-http")
        thread.start()
        if not ex.done.wait(max(0.0, deadline_at - time.monotonic())):
            ex.cut()
            raise _DeadlinePassed
        if ex.error is not None:
            if ex.cancelled.is_set():
                raise _DeadlinePassed from ex.error
            raise ex.error
        assert ex.result is not None
        return ex.result

    def _post_with_retries(self, payload: dict[str, Any], purpose: str) -> ChatResponse:
        o = self.options
        deadline_at = time.monotonic() + o.deadline
        attempts = 1 if self._down else o.retries + 1
        last: BackendError | None = None
        only_connect_errors = True
        failed_at: set[str] = set()
        attempt = 0
        while attempt < attempts:
            if attempt:
                self._count("retries")
            self._count("attempts")
            endpoint_url, outcome = self._attempt(failed_at, payload, purpose, deadline_at)
            if isinstance(outcome, ChatResponse):
                return outcome
            if outcome == "schema_refused":
                payload = {k: v for k, v in payload.items() if k != "response_format"}
                continue  # the same attempt again, without the schema
            last = outcome.error
            only_connect_errors = only_connect_errors and outcome.refused
            if outcome.endpoint_fault:
                failed_at.add(endpoint_url)
                if self._pool.has_healthy(avoid=failed_at):
                    # Failing over to a healthy replica costs no retry (at most once
                    # per replica): a dead replica never fails a request on its own.
                    self._count("failovers")
                    continue
            attempt += 1
            if attempt >= attempts:
                break
            pause = self._backoff(attempt - 1) if outcome.wait is None else outcome.wait
            if time.monotonic() + pause >= deadline_at:
                self._count("deadline_exceeded")
                raise _error(
                    f"{purpose}: the deadline of {o.deadline:g}s leaves no time for another "
                    f"attempt; last: {last}",
                    "deadline",
                    retryable=True,
                )
            time.sleep(pause)
        assert last is not None
        if only_connect_errors:
            self._down = True
            raise _error(
                f"nothing answers at {', '.join(o.urls)} after {attempts} attempts: {last}",
                "unavailable",
                retryable=False,
                cls=BackendUnavailable,
            )
        raise _error(
            f"gave up after {attempts} attempts; last: {last}",
            getattr(last, "kind", "backend"),
            retryable=True,
        )

    def _attempt(
        self, avoid: set[str], payload: dict[str, Any], purpose: str, deadline_at: float
    ) -> tuple[str, ChatResponse | _Failed | Literal["schema_refused"]]:
        """One attempt on the endpoint least loaded *when a slot is free* (so a
        replica that dies only fails the requests it really had): the endpoint's
        URL and the answer, a failure worth another attempt, or ``"schema_refused"``.
        Failures no retry can fix are raised."""
        if not self._slots.acquire(timeout=max(0.0, deadline_at - time.monotonic())):
            self._count("deadline_exceeded")
            raise _error(
                f"{purpose}: no free request slot within the deadline of "
                f"{self.options.deadline:g}s",
                "deadline",
                retryable=True,
            )
        try:
            endpoint = self._pool.acquire(avoid=avoid)
            return endpoint.url, self._on_endpoint(endpoint, payload, purpose, deadline_at)
        finally:
            self._slots.release()

    def _on_endpoint(
        self, endpoint: Endpoint, payload: dict[str, Any], purpose: str, deadline_at: float
    ) -> ChatResponse | _Failed | Literal["schema_refused"]:
        o = self.options
        url = join_url(endpoint.url, "chat/completions")
        fault = False
        try:
            status, body, headers = self._exchange(url, payload, deadline_at)
        except _DeadlinePassed:
            self._pool.release(endpoint, failed=False)
            self._count("deadline_exceeded")
            raise _error(
                f"{purpose}: no complete answer from {url} within the deadline of {o.deadline:g}s",
                "deadline",
                retryable=True,
            ) from None
        except _TooLarge as exc:
            self._pool.release(endpoint, failed=False)
            raise self._too_large(purpose, url, f"over {exc.size} bytes of body") from None
        except httpx.TransportError as exc:  # timeouts included: an endpoint fault either way
            self._pool.release(endpoint, failed=True)
            if isinstance(exc, httpx.TimeoutException):
                message = f"{url} timed out after {o.timeout:g}s ({type(exc).__name__})"
                kind, refused = "timeout", isinstance(exc, httpx.ConnectTimeout)
            else:
                message = f"connection to {url} failed ({type(exc).__name__}: {exc})"
                kind, refused = "connection", isinstance(exc, httpx.ConnectError)
            err = _error(f"{purpose}: {message}", kind, retryable=True)
            return _Failed(err, endpoint_fault=True, refused=refused)
        self._down = False
        if status == 200:
            self._pool.release(endpoint, failed=False)
            try:
                response = self._parse(body, url)
            except BackendError as exc:
                return _Failed(exc)
            size = len(response.text.encode("utf-8", "surrogatepass"))
            if size > o.max_answer_bytes:
                raise self._too_large(purpose, url, f"{size} bytes")
            return response
        message = _server_message(body, f"HTTP {status}")
        if (
            status in (400, 422)
            and "response_format" in payload
            and _SCHEMA_REJECTED.search(message)
        ):
            self._pool.release(endpoint, failed=False)
            self._schema_refused = True
            self._count("schema_fallbacks")
            return "schema_refused"
        fault = status >= 500
        self._pool.release(endpoint, failed=fault)
        text = f"{purpose}: HTTP {status} from {url}: {message}"
        if status in _RETRYABLE_4XX or status >= 500:
            after = _retry_after(headers)
            wait = None if after is None else min(after, o.retry_after_max)
            return _Failed(_error(text, f"http_{status}", retryable=True), wait, fault)
        raise _error(text, f"http_{status}", retryable=False)

    def _too_large(self, purpose: str, url: str, size: str) -> BackendError:
        self._count("answers_too_large")
        return _error(
            f"{purpose}: the answer from {url} is too large ({size}; max_answer_bytes = "
            f"{self.options.max_answer_bytes}); not read, not cached",
            "answer_too_large",
            retryable=False,
        )

    def _count(self, name: str, n: int = 1) -> None:
        with self._stats_lock:
            self.stats[name] += n

    def _parse(self, body: bytes, url: str) -> ChatResponse:
        try:
            data = json.loads(body)
            message = data["choices"][0]["message"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise _error(
                f"malformed chat-completion body from {url}: {body[:200]!r}",
                "bad_response",
                retryable=True,
            ) from exc
        text = message.get("content") if isinstance(message, dict) else None
        usage = data.get("usage") if isinstance(data, dict) else None
        usage = usage if isinstance(usage, dict) else {}
        try:
            tokens = Usage(
                int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
            )
        except (TypeError, ValueError):
            tokens = Usage()
        return ChatResponse(
            # an answer quoting a key (a server echoing its input) must not carry it on
            text=secrets.scrub(text) if isinstance(text, str) else "",
            usage=tokens,
            model=data.get("model") or self.options.model,
        )
