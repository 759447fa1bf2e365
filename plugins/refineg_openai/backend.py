"""OpenAI-compatible chat completions: vLLM serving Qwen2.5-VL, Ollama, hosted APIs.

The release sent one request at a time, tried twice and lost the sample on
failure. Here requests run concurrently up to ``concurrency`` (a semaphore, so
the limit holds however many threads call), transient failures (timeouts,
dropped connections, 429, 5xx) are retried with exponential backoff and
jitter, a 429's Retry-After is honoured, and a 4xx that retrying cannot fix
fails at once with the server's own message. The API key is read from the
environment at call time and appears nowhere else.
"""

from __future__ import annotations

import email.utils
import os
import random
import threading
import time
from typing import Any, Literal

import httpx
import pydantic

from refineg_core.boxcodecs import BoxCodec
from refineg_core.chat import ChatMessage, ChatRequest, ChatResponse, ImagePart, TextPart, Usage
from refineg_core.errors import BackendError, BackendUnavailable, PluginError
from refineg_core.interfaces import MLLMBackend, PluginOptions
from refineg_core.registry import create_box_frame
from refineg_openai.images import image_data_url

#: Tokens per answer when neither the request nor the options say.
DEFAULT_MAX_TOKENS = 1024
#: Statuses worth retrying although they are 4xx.
_RETRYABLE_4XX = {408, 409, 425, 429}


class OpenAIOptions(PluginOptions):
    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = "Qwen/Qwen2.5-VL-72B-Instruct"
    #: Name of the environment variable holding the key (the key itself never goes in a config).
    api_key_env: str | None = None
    timeout: float = pydantic.Field(120.0, gt=0)
    temperature: float = pydantic.Field(0.1, ge=0)
    #: The most tokens one answer may have. A stage's own limit (``[refine] max_tokens``...)
    #: is used when lower, never when higher. None: the stage decides (1024 if it does not).
    max_tokens: int | None = pydantic.Field(None, ge=1)
    seed: int | None = 0
    concurrency: int = pydantic.Field(8, ge=1, le=512)
    #: Retries after the first attempt (so ``retries=3`` means at most 4 attempts).
    retries: int = pydantic.Field(3, ge=0, le=20)
    backoff_base: float = pydantic.Field(1.0, ge=0)
    backoff_max: float = pydantic.Field(30.0, ge=0)
    #: Longest Retry-After the client will wait; longer ones are cut to this.
    retry_after_max: float = pydantic.Field(120.0, ge=0)
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
    #: Extra server-specific request fields (vLLM's ``top_k``, ``repetition_penalty``...).
    extra_body: dict[str, Any] = pydantic.Field(default_factory=dict)

    @pydantic.field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {v!r}")
        return v.rstrip("/")

    def frame(self) -> BoxCodec:
        """The box frame these options name, with the settings that were given for it."""
        given = {"min_pixels": self.min_pixels, "max_pixels": self.max_pixels,
                 "max_side": self.max_side}
        settings = {k: v for k, v in given.items() if v is not None}
        twice = sorted(settings.keys() & self.box_frame_options.keys())
        if twice:
            raise PluginError(f"{twice} given both directly and in box_frame_options",
                              where="backend.options.box_frame_options")
        return create_box_frame(
            self.box_frame, {**settings, **self.box_frame_options},
            config_key="backend.options.box_frame",
        )

    @pydantic.model_validator(mode="after")
    def _codec(self) -> OpenAIOptions:
        try:
            self.frame()
        except PluginError as exc:  # as a validation error, so the config path is reported
            raise ValueError(str(exc).removeprefix(f"{exc.where}: ")) from None
        return self


def _error_kind(exc: BackendError, kind: str) -> BackendError:
    exc.kind = kind  # type: ignore[attr-defined]  # the runner counts failures by kind
    return exc


def _server_message(resp: httpx.Response) -> str:
    """The server's own explanation, from the usual error shapes (OpenAI, vLLM, FastAPI)."""
    try:
        body = resp.json()
    except ValueError:
        return resp.text.strip()[:300] or resp.reason_phrase
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:500]
        if isinstance(err, str):
            return err[:500]
        for key in ("message", "detail"):
            if body.get(key):
                return str(body[key])[:500]
    return str(body)[:300]


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after")
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


class OpenAIBackend(MLLMBackend):
    """Any server speaking ``POST {base_url}/chat/completions``."""

    Options = OpenAIOptions
    options: OpenAIOptions

    def __init__(self, options: OpenAIOptions | None = None, labels: Any = None) -> None:
        super().__init__(options, labels)
        o = self.options
        self._codec = o.frame()
        self._slots = threading.BoundedSemaphore(o.concurrency)
        self._client: httpx.Client | None = None
        self._client_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._rng = random.Random()
        #: Set when the server stopped answering at all: later calls try once, not
        #: ``retries`` times with backoff, until one gets through.
        self._down = False
        self.usage = Usage()
        self.stats: dict[str, int] = {"requests": 0, "attempts": 0, "retries": 0, "failures": 0}

    # -- contract ----------------------------------------------------------
    @property
    def box_codec(self) -> BoxCodec:
        return self._codec

    @property
    def max_concurrency(self) -> int:
        return self.options.concurrency

    def describe(self) -> str:
        return f"openai-compatible at {self.options.base_url}, model {self.options.model}"

    def cache_identity(self) -> dict:
        """Model and everything that shapes the answer; not where it is served or how fast."""
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
            "extra_body": o.extra_body,
        }

    def check_available(self) -> str | None:
        o = self.options
        if o.api_key_env and not os.environ.get(o.api_key_env):
            return f"environment variable {o.api_key_env} (the API key) is not set"
        try:
            resp = self.client.get(
                f"{o.base_url}/models", headers=self._headers(), timeout=min(3.0, o.timeout)
            )
        except httpx.HTTPError as exc:
            return f"nothing answers at {o.base_url} ({type(exc).__name__}: {exc})"
        if resp.status_code in (401, 403):
            return f"{o.base_url} rejected the API key: {_server_message(resp)}"
        if resp.status_code == 200:
            try:
                served = [m.get("id") for m in resp.json().get("data", [])]
            except (ValueError, AttributeError):
                return None
            if served and o.model not in served:
                return (
                    f"{o.base_url} does not serve model {o.model!r} "
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
        with self._stats_lock:
            self.usage = self.usage + response.usage
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
                    part, self._codec, self.options.image_format, self.options.jpeg_quality
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
                    limits=httpx.Limits(
                        max_connections=o.concurrency, max_keepalive_connections=o.concurrency
                    ),
                )
            return self._client

    def close(self) -> None:
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def _headers(self) -> dict[str, str]:
        key = os.environ.get(self.options.api_key_env) if self.options.api_key_env else None
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter: half fixed, half random, capped."""
        cap = min(self.options.backoff_max, self.options.backoff_base * 2**attempt)
        return cap / 2 + self._rng.uniform(0, cap / 2)

    def _post_with_retries(self, payload: dict[str, Any], purpose: str) -> ChatResponse:
        o = self.options
        url = f"{o.base_url}/chat/completions"
        attempts = 1 if self._down else o.retries + 1
        last: BackendError | None = None
        only_connect_errors = True
        for attempt in range(attempts):
            if attempt:
                with self._stats_lock:
                    self.stats["retries"] += 1
            with self._stats_lock:
                self.stats["attempts"] += 1
            wait: float | None = None
            try:
                with self._slots:
                    resp = self.client.post(url, json=payload, headers=self._headers())
            except httpx.TimeoutException as exc:
                only_connect_errors = only_connect_errors and isinstance(exc, httpx.ConnectTimeout)
                last = _error_kind(
                    BackendError(f"{purpose}: {url} timed out after {o.timeout:g}s "
                                 f"({type(exc).__name__})", retryable=True), "timeout")
            except httpx.TransportError as exc:
                only_connect_errors = only_connect_errors and isinstance(exc, httpx.ConnectError)
                last = _error_kind(
                    BackendError(f"{purpose}: connection to {url} failed "
                                 f"({type(exc).__name__}: {exc})", retryable=True), "connection")
            else:
                only_connect_errors = False
                status = resp.status_code
                self._down = False
                if status == 200:
                    try:
                        return self._parse(resp)
                    except BackendError as exc:
                        last = exc
                elif status in _RETRYABLE_4XX or status >= 500:
                    last = _error_kind(
                        BackendError(f"{purpose}: HTTP {status} from {url}: "
                                     f"{_server_message(resp)}", retryable=True), f"http_{status}")
                    after = _retry_after(resp)
                    if after is not None:
                        wait = min(after, o.retry_after_max)
                else:
                    raise _error_kind(
                        BackendError(f"{purpose}: HTTP {status} from {url}: "
                                     f"{_server_message(resp)}", retryable=False), f"http_{status}")
            if attempt + 1 < attempts:
                time.sleep(self._backoff(attempt) if wait is None else wait)
        assert last is not None
        if only_connect_errors:
            self._down = True
            raise _error_kind(
                BackendUnavailable(f"nothing answers at {o.base_url} after {attempts} attempts: "
                                   f"{last}", retryable=False), "unavailable")
        raise _error_kind(
            BackendError(f"gave up after {attempts} attempts; last: {last}", retryable=True),
            getattr(last, "kind", "backend"),
        )

    def _parse(self, resp: httpx.Response) -> ChatResponse:
        try:
            body = resp.json()
            message = body["choices"][0]["message"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise _error_kind(
                BackendError(f"malformed chat-completion body from {resp.url}: "
                             f"{resp.text[:200]!r}", retryable=True), "bad_response") from exc
        text = message.get("content") if isinstance(message, dict) else None
        usage = body.get("usage") or {}
        return ChatResponse(
            text=text if isinstance(text, str) else "",
            usage=Usage(int(usage.get("prompt_tokens") or 0),
                        int(usage.get("completion_tokens") or 0)),
            model=body.get("model") or self.options.model,
        )
