"""Testing helpers of the ``openai`` backend: a fake OpenAI-compatible
chat-completions server on loopback (real HTTP), and ``backend_for``, the real
backend pointed at it.

They live with the plugin they test (the core imports no plugin). Tests of MLLM
backends and stages talk to the server over a real socket, so timeouts,
dropped connections, status codes and concurrency behave as with vLLM.

Usage::

    from refineg_openai.testing import FakeOpenAIServer, backend_for, ok, error, drop, garbage

    @pytest.fixture
    def server():
        with FakeOpenAIServer() as srv:
            yield srv

    def test_x(server):
        server.script(error(429, retry_after=0.2), ok('[{"entity": "Obama"}]'))
        backend = OpenAIBackend(OpenAIBackend.Options(base_url=server.base_url, model="m"))
        ...
        assert len(server.chat_requests) == 2
        assert server.chat_requests[0].image_urls[0].startswith("data:image/")

What each chat request gets, in this order:

1. the next scripted reply (``server.script(...)`` appends to a FIFO queue);
2. else ``server.responder(request) -> Reply | str`` when one is set (a
   callable, e.g. to answer from the prompt, to inject failures at random, or
   to count per-sample attempts);
3. else ``server.default`` (``ok("[]")`` unless changed).

A plain ``str`` anywhere a ``Reply`` is expected means ``ok(str)``.

Replies (all take ``latency=`` seconds, slept before answering):

- ``ok(text, prompt_tokens=11, completion_tokens=7)``: 200 with a normal
  chat-completion body (``usage`` included). Fenced JSON with prose, garbage or
  truncated JSON are just texts: ``ok("Sure!\\n```json\\n[...]\\n```")``,
  ``garbage()``, ``ok('[{"entity": "Oba')``.
- ``error(status, message="...", retry_after=None)``: an OpenAI-style error
  body ``{"error": {"message", "type", "code"}}`` with that status, and a
  ``Retry-After`` header when given (seconds).
- ``drop()``: closes the connection without sending anything.
- ``reset()``: aborts the connection with a TCP RST (connection reset by peer).
- ``trickle(text, interval=0.5)``: a correct 200 whose body goes out one byte
  every ``interval`` seconds (a client timeout between bytes never fires).
- ``stall(text, seconds)``: sends the status line and headers, then nothing
  for ``seconds`` before the body.
- ``ok(text, latency=5)`` with a client timeout below 5 s: a slow answer.

A request's ``path`` keeps its query string (``/v1/chat/completions?api-version=1``),
so a responder can refuse a call without it, as Azure does; routing ignores it.
``server.latency`` adds a fixed delay to every chat reply (e.g. 0.2 for the
benchmark). Every request is recorded in ``server.requests`` (chat ones also in
``server.chat_requests``) as a ``RecordedRequest`` with ``path``, ``headers``
(lower-case keys), ``body`` (parsed JSON), ``text`` (all text parts joined),
``image_urls``, ``started``/``finished`` (perf_counter) and ``reply``.
``server.max_in_flight`` is the high-water mark of concurrent chat requests.

``gold_responder(samples)`` is a responder that answers like a perfect model:
a refine request with the gold entities of the sample whose text the request
names (its last ``Text:`` line), a ground request with the gold boxes of the
entities it asks about, written in the backend's box frame (``codec=``; pixels
of the original by default). Benchmarks and tests use it instead of each
writing its own "fake MLLM that answers with gold".
``GET .../models`` lists ``server.model_ids``. ``server.reset()`` forgets
requests, queue and high-water mark. ``server.stop()`` (or leaving the
``with``) also cuts open keep-alive connections, like a server that went away;
``base_url`` stays readable afterwards, so a test can point a client at it.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = [
    "FakeOpenAIServer",
    "RecordedRequest",
    "Reply",
    "drop",
    "error",
    "garbage",
    "gold_items",
    "gold_responder",
    "ok",
    "reset",
    "stall",
    "trickle",
]


@dataclass(frozen=True)
class Reply:
    """One scripted answer; build it with ``ok``/``error``/``drop``/``garbage``."""

    status: int = 200
    text: str | None = None
    message: str | None = None
    retry_after: float | None = None
    drop: bool = False
    latency: float = 0.0
    prompt_tokens: int = 11
    completion_tokens: int = 7
    raw_body: bytes | None = None
    reset: bool = False
    trickle: float = 0.0  # seconds between body bytes
    stall: float = 0.0  # seconds between headers and body


def ok(
    text: str, *, latency: float = 0.0, prompt_tokens: int = 11, completion_tokens: int = 7
) -> Reply:
    return Reply(
        text=text, latency=latency, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
    )


def error(
    status: int,
    message: str | None = None,
    *,
    retry_after: float | None = None,
    latency: float = 0.0,
) -> Reply:
    return Reply(
        status=status,
        message=message or f"fake server error {status}",
        retry_after=retry_after,
        latency=latency,
    )


def drop(*, latency: float = 0.0) -> Reply:
    return Reply(drop=True, latency=latency)


def reset(*, latency: float = 0.0) -> Reply:
    return Reply(reset=True, latency=latency)


def trickle(text: str, interval: float = 0.5) -> Reply:
    return Reply(text=text, trickle=interval)


def stall(text: str, seconds: float) -> Reply:
    return Reply(text=text, stall=seconds)


def garbage(*, latency: float = 0.0) -> Reply:
    """A 200 whose body is not JSON at all (a broken proxy)."""
    return Reply(raw_body=b"<html>502 Bad Gateway</html>", latency=latency)


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    started: float
    finished: float | None = None
    reply: Reply | None = None

    @property
    def _parts(self) -> list[dict]:
        parts: list[dict] = []
        if not isinstance(self.body, dict):
            return parts
        for msg in self.body.get("messages", []):
            content = msg.get("content")
            if isinstance(content, str):
                parts.append({"type": "text", "text": content})
            elif isinstance(content, list):
                parts.extend(p for p in content if isinstance(p, dict))
        return parts

    @property
    def text(self) -> str:
        """All text parts of all messages, joined by newlines."""
        return "\n".join(p.get("text", "") for p in self._parts if p.get("type") == "text")

    @property
    def image_urls(self) -> list[str]:
        return [
            p["image_url"]["url"]
            for p in self._parts
            if p.get("type") == "image_url" and isinstance(p.get("image_url"), dict)
        ]


@dataclass
class _State:
    queue: deque = field(default_factory=deque)
    requests: list[RecordedRequest] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0


class FakeOpenAIServer:
    """ThreadingHTTPServer on 127.0.0.1 at a random port; a context manager."""

    def __init__(
        self,
        responder: Callable[[RecordedRequest], Reply | str] | None = None,
        *,
        latency: float = 0.0,
        default: Reply | str | None = None,
        model_ids: tuple[str, ...] = ("fake-model",),
    ) -> None:
        self.responder = responder
        self.latency = latency
        self.default: Reply | str = default if default is not None else ok("[]")
        self.model_ids = model_ids
        self._state = _State()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._port: int | None = None
        self._connections: set[socket.socket] = set()
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> FakeOpenAIServer:
        self._stopping.clear()
        handler = _make_handler(self)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._httpd.request_queue_size = 128
        self._port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut open keep-alive connections (a server that went away)."""
        self._stopping.set()
        with self._lock:  # idempotent, also when two threads stop it at once
            httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        with self._lock:
            conns, self._connections = list(self._connections), set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The port; still known after ``stop()`` (to test a server that went away)."""
        assert self._port is not None, "server not started"
        return self._port

    @property
    def base_url(self) -> str:
        """What an OpenAI client takes as base URL (ends in ``/v1``)."""
        return f"http://127.0.0.1:{self.port}/v1"

    # -- scripting ---------------------------------------------------------
    def script(self, *replies: Reply | str) -> None:
        """Queue replies for the next chat requests, in order."""
        with self._lock:
            self._state.queue.extend(replies)

    @property
    def pending(self) -> int:
        """Scripted replies not yet used."""
        with self._lock:
            return len(self._state.queue)

    def reset(self) -> None:
        """Forget recorded requests, the queue and the high-water mark."""
        with self._lock:
            self._state = _State()

    # -- what happened -----------------------------------------------------
    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._state.requests)

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if _route(r.path).endswith("/chat/completions")]

    @property
    def max_in_flight(self) -> int:
        with self._lock:
            return self._state.max_in_flight

    # -- internals used by the handler ------------------------------------
    def _record(self, req: RecordedRequest, chat: bool) -> None:
        with self._lock:
            self._state.requests.append(req)
            if chat:
                self._state.in_flight += 1
                self._state.max_in_flight = max(self._state.max_in_flight, self._state.in_flight)

    def _done(self, req: RecordedRequest, chat: bool) -> None:
        with self._lock:
            req.finished = time.perf_counter()
            if chat:
                self._state.in_flight -= 1

    def _choose(self, req: RecordedRequest) -> Reply:
        with self._lock:
            scripted = self._state.queue.popleft() if self._state.queue else None
        reply: Reply | str
        if scripted is not None:
            reply = scripted
        elif self.responder is not None:
            reply = self.responder(req)
        else:
            reply = self.default
        return ok(reply) if isinstance(reply, str) else reply

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)


def _route(path: str) -> str:
    """A request path without its query string (``/v1/models?api-version=...``)."""
    return urllib.parse.urlsplit(path).path.rstrip("/")


def _completion_body(reply: Reply, model: str) -> bytes:
    body = {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.text},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
            "total_tokens": reply.prompt_tokens + reply.completion_tokens,
        },
    }
    return json.dumps(body).encode()


def _make_handler(server: FakeOpenAIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like a real server
        # headers and body go out in separate writes; with Nagle on, the client's
        # delayed ACK would add ~40 ms to every keep-alive request
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            return

        def setup(self) -> None:
            super().setup()
            with server._lock:
                server._connections.add(self.connection)

        def finish(self) -> None:
            with server._lock:
                server._connections.discard(self.connection)
            with contextlib.suppress(OSError):
                super().finish()

        def _send(
            self,
            status: int,
            payload: bytes,
            headers: dict[str, str] | None = None,
            content_type: str = "application/json",
            reply: Reply | None = None,
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if reply is not None and (reply.stall or reply.trickle):
                self.wfile.flush()
                server._sleep(reply.stall)
                if reply.trickle:
                    for i in range(len(payload)):
                        if server._stopping.is_set():
                            return
                        self.wfile.write(payload[i : i + 1])
                        self.wfile.flush()
                        server._sleep(reply.trickle)
                    return
            self.wfile.write(payload)
            self.wfile.flush()

        def _not_found(self) -> None:
            payload = {"error": {"message": f"no route {self.path}"}}
            self._send(404, json.dumps(payload).encode())

        def _read_body(self) -> Any:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                return json.loads(raw) if raw else None
            except ValueError:
                return raw.decode("utf-8", "replace")

        def do_GET(self) -> None:
            req = RecordedRequest(
                "GET",
                self.path,
                {k.lower(): v for k, v in self.headers.items()},
                None,
                time.perf_counter(),
            )
            server._record(req, chat=False)
            try:
                if _route(self.path).endswith("/models"):
                    data = [
                        {"id": m, "object": "model", "owned_by": "fake"} for m in server.model_ids
                    ]
                    self._send(200, json.dumps({"object": "list", "data": data}).encode())
                else:
                    self._not_found()
            finally:
                server._done(req, chat=False)

        def do_POST(self) -> None:
            headers = {k.lower(): v for k, v in self.headers.items()}
            body = self._read_body()
            chat = _route(self.path).endswith("/chat/completions")
            req = RecordedRequest("POST", self.path, headers, body, time.perf_counter())
            server._record(req, chat=chat)
            finished = False

            def mark_done() -> None:
                nonlocal finished
                if not finished:
                    finished = True
                    server._done(req, chat=chat)

            try:
                if not chat:
                    self._not_found()
                    return
                reply = server._choose(req)
                req.reply = reply
                server._sleep(server.latency + reply.latency)
                if reply.reset:
                    self.close_connection = True
                    mark_done()
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    self.connection.close()
                    return
                if reply.drop:
                    self.close_connection = True
                    mark_done()
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)
                    return
                mark_done()  # before the reply is sent: the client may fire its next request
                if reply.raw_body is not None:
                    self._send(reply.status, reply.raw_body, content_type="text/html")
                elif reply.status == 200:
                    model = body.get("model", "fake-model") if isinstance(body, dict) else "?"
                    self._send(200, _completion_body(reply, model), reply=reply)
                else:
                    extra = {}
                    if reply.retry_after is not None:
                        extra["Retry-After"] = f"{reply.retry_after:g}"
                    payload = {
                        "error": {
                            "message": reply.message,
                            "type": "fake_error",
                            "code": reply.status,
                        }
                    }
                    self._send(reply.status, json.dumps(payload).encode(), extra)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client gave up (timeout): fine
            finally:
                mark_done()

    return Handler


def backend_for(server: FakeOpenAIServer, box_frame: str = "pixels", **kw: Any):
    """The real ``openai`` backend pointed at a fake server, with fast test retries."""
    from refineg_openai.backend import OpenAIBackend

    opts = dict(
        base_url=server.base_url,
        model="fake-model",
        box_frame=box_frame,
        retries=1,
        backoff_base=0.01,
        timeout=5.0,
        concurrency=4,
    )
    opts.update(kw)
    return OpenAIBackend(OpenAIBackend.Options(**opts))


# -- a perfect model -----------------------------------------------------------


def _query_field(text: str, field: str) -> str | None:
    """The value of the last ``field: ...`` line of a prompt (the query comes last)."""
    marker = f"{field}: "
    if marker not in text:
        return None
    return text.rsplit(marker, 1)[1].split("\n", 1)[0]


def _stage_of(req: RecordedRequest) -> str:
    """``"ground"`` or ``"refine"``: from the answer schema when one was sent (its
    items have ``boxes``), else from the prompt (only grounding asks for boxes)."""
    body = req.body if isinstance(req.body, dict) else {}
    fmt = body.get("response_format")
    if isinstance(fmt, dict):
        schema = (fmt.get("json_schema") or {}).get("schema") or {}
        props = (schema.get("items") or {}).get("properties") or {}
        if props:
            return "ground" if "boxes" in props else "refine"
    return "ground" if "boxes" in req.text else "refine"


def gold_items(
    sample: Any,
    stage: str,
    *,
    codec: Any = None,
    asked: list[dict] | None = None,
) -> list[dict]:
    """What a perfect model answers for ``sample``.

    ``refine``: ``[{"name", "type"}]`` for every gold entity. ``ground``:
    ``[{"entity", "type", "boxes"}]`` for each entity in ``asked`` (all gold
    entities when None), with the gold boxes of the gold entity of that name
    and type (``[]`` for an entity gold does not have), encoded by ``codec``
    (a ``BoxCodec``; None: integer pixels of the original image).
    """
    if stage == "refine":
        return [{"name": e.text, "type": e.type} for e in sample.entities]
    if stage != "ground":
        raise ValueError(f"stage must be 'refine' or 'ground', got {stage!r}")
    size = sample.image.size if sample.image is not None else None
    boxes = {(e.text, e.type): tuple(e.boxes or ()) for e in sample.entities}

    def encode(box: Any) -> list:
        if codec is None or size is None:
            return [round(v) for v in box.as_list()]
        return list(codec.encode(box, size))

    wanted = (
        asked
        if asked is not None
        else [{"entity": e.text, "type": e.type} for e in sample.entities]
    )
    return [
        {
            "entity": a.get("entity"),
            "type": a.get("type"),
            "boxes": [encode(b) for b in boxes.get((a.get("entity"), a.get("type")), ())],
        }
        for a in wanted
        if isinstance(a, dict)
    ]


def gold_responder(
    samples: Any,
    *,
    codec: Any = None,
    key: Callable[[str], str] | None = None,
    prose: bool = False,
    prompt_tokens: int = 11,
    completion_tokens: int = 7,
) -> Callable[[RecordedRequest], Reply]:
    """A responder that answers refine and ground requests with gold (see :func:`gold_items`).

    The sample is the one whose text is the request's last ``Text:`` line
    (``key`` maps that line first, e.g. to strip a suffix a benchmark added);
    a request naming no known sample gets ``[]``. ``prose`` wraps the JSON in
    a sentence and a fenced block, as chatty models answer. Token counts go
    into the reply's ``usage``.
    """
    by_text = {s.text: s for s in samples}

    def respond(req: RecordedRequest) -> Reply:
        text = _query_field(req.text, "Text")
        sample = by_text.get(key(text) if key and text is not None else text)
        if sample is None:
            return ok("[]", prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        stage = _stage_of(req)
        asked = None
        if stage == "ground":
            line = _query_field(req.text, "Entities")
            try:
                parsed = json.loads(line) if line is not None else None
            except ValueError:
                parsed = None
            asked = parsed if isinstance(parsed, list) else None
        answer = json.dumps(gold_items(sample, stage, codec=codec, asked=asked))
        if prose:
            answer = f"Here is my answer.\n```json\n{answer}\n```"
        return ok(answer, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)

    return respond
