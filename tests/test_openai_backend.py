"""The OpenAI-compatible backend against a real HTTP server on loopback."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time

import pydantic
import pytest
from PIL import Image
from refineg_frames.qwen import Qwen2VLCodec, Qwen25VLCodec
from refineg_openai.backend import OpenAIBackend
from refineg_openai.testing import FakeOpenAIServer, drop, error, garbage, ok

from refineg_core.chat import ChatMessage, ChatRequest, ImagePart, TextPart, Usage
from refineg_core.errors import BackendError, BackendUnavailable
from refineg_core.mllm_cache import CachedBackend
from refineg_core.registry import load_class


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "odd.png"
    Image.new("RGB", (333, 517), (200, 30, 30)).save(path)
    return path


def backend(server, **kw) -> OpenAIBackend:
    opts = {
        "base_url": server.base_url,
        "model": "fake-model",
        "backoff_base": 0.01,
        "backoff_max": 0.05,
        **kw,
    }
    return OpenAIBackend(OpenAIBackend.Options(**opts))


def text_request(text: str = "hello") -> ChatRequest:
    return ChatRequest((ChatMessage.text("user", text),), purpose="test")


def test_registered_as_plugin():
    assert load_class("backend", "openai") is OpenAIBackend


def test_request_shape_with_resized_image(server, image):
    server.script(ok("an answer"))
    b = backend(server, temperature=0.3, max_tokens=77, seed=5)
    req = ChatRequest(
        (
            ChatMessage.text("system", "you ground entities"),
            ChatMessage("user", (ImagePart(image), TextPart("Who is here?"))),
        ),
        purpose="grounding",
    )
    resp = b.complete(req)
    assert resp.text == "an answer" and not resp.cached
    (rec,) = server.chat_requests
    body = rec.body
    assert body["model"] == "fake-model"
    assert (body["temperature"], body["max_tokens"], body["seed"]) == (0.3, 77, 5)
    assert body["messages"][0] == {"role": "system", "content": "you ground entities"}
    assert "Who is here?" in rec.text
    (url,) = rec.image_urls
    assert url.startswith("data:image/jpeg;base64,")
    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    # the image goes at the size the box codec says (Qwen2.5-VL's 28-px grid)
    assert sent.size == Qwen25VLCodec().model_size((333, 517)) == (336, 504)


def test_request_parameters_override_options(server):
    b = backend(server, temperature=0.3, max_tokens=77)
    b.complete(ChatRequest((ChatMessage.text("user", "x"),), max_tokens=5, temperature=0.0))
    body = server.chat_requests[0].body
    assert (body["temperature"], body["max_tokens"]) == (0.0, 5)


def test_a_frames_own_options_pass_through(server):
    from refineg_frames.generic import NormalizedCodec

    b = backend(server, box_frame="normalized", max_side=640, box_frame_options={"scale": 100})
    assert isinstance(b.box_codec, NormalizedCodec)
    assert (b.box_codec.scale, b.box_codec.model_size((1280, 960))) == (100, (640, 480))
    with pytest.raises(pydantic.ValidationError, match="its options: max_side, scale"):
        OpenAIBackend.Options(box_frame="normalized", box_frame_options={"scael": 10})
    with pytest.raises(pydantic.ValidationError, match="given both"):
        OpenAIBackend.Options(box_frame="pixels", max_side=5, box_frame_options={"max_side": 9})


def test_a_stage_limit_never_raises_the_backends_max_tokens(server):
    capped = backend(server, max_tokens=77)
    capped.complete(ChatRequest((ChatMessage.text("user", "x"),), max_tokens=2000))
    uncapped = backend(server)
    uncapped.complete(ChatRequest((ChatMessage.text("user", "x"),), max_tokens=2000))
    uncapped.complete(text_request())
    sent = [r.body["max_tokens"] for r in server.chat_requests]
    assert sent == [77, 2000, 1024]  # the lower of the two; the stage's; the default
    # a cap is part of what shapes an answer, so it is part of the cache identity
    assert capped.cache_identity() != backend(server, max_tokens=2000).cache_identity()
    assert uncapped.cache_identity()["max_tokens"] == 1024  # caches made before stay valid


def test_box_frame_option_picks_codec_and_pixel_bounds(server, image):
    b = backend(server, box_frame="qwen2-vl", max_pixels=200_000, image_format="png")
    assert isinstance(b.box_codec, Qwen2VLCodec)
    b.complete(ChatRequest((ChatMessage("user", (ImagePart(image, size=(333, 517)),)),)))
    (url,) = server.chat_requests[0].image_urls
    assert url.startswith("data:image/png;base64,")
    # near the 28-px grid, a PNG asked as PNG: the original goes, and the model's own
    # resize of it is the frame the boxes are written in
    assert base64.b64decode(url.split(",", 1)[1]) == image.read_bytes()
    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert b.box_codec.model_size(sent.size) == b.box_codec.model_size((333, 517))


def test_transient_failures_are_retried_until_success(server):
    server.script(error(500), drop(), error(503), ok("finally"))
    b = backend(server, retries=3)
    assert b.complete(text_request()).text == "finally"
    assert len(server.chat_requests) == 4
    assert b.stats["retries"] == 3 and b.stats["failures"] == 0


def test_retries_stop_as_configured(server):
    server.script(*[error(500, "overloaded")] * 10)
    b = backend(server, retries=2)
    with pytest.raises(BackendError) as info:
        b.complete(text_request())
    assert len(server.chat_requests) == 3
    assert info.value.retryable
    assert "3 attempts" in str(info.value) and "overloaded" in str(info.value)
    assert b.stats["failures"] == 1


def test_retry_after_is_honoured(server):
    server.script(error(429, "slow down", retry_after=0.6), ok("ok"))
    b = backend(server, retries=1, backoff_base=0.001, backoff_max=0.001)
    assert b.complete(text_request()).text == "ok"
    first, second = server.chat_requests
    assert second.started - first.finished >= 0.55


def test_backoff_grows_without_retry_after(server):
    server.script(error(502), error(502), ok("ok"))
    b = backend(server, retries=2, backoff_base=0.2, backoff_max=5)
    b.complete(text_request())
    r = server.chat_requests
    gap1, gap2 = r[1].started - r[0].finished, r[2].started - r[1].finished
    # attempt n waits between base*2^n/2 and base*2^n
    assert 0.1 <= gap1 < 0.35 and 0.2 <= gap2 < 0.6


def test_client_error_fails_at_once_with_server_message(server):
    server.script(error(400, "image exceeds the context length of 32768 tokens"), ok("never"))
    b = backend(server, retries=5)
    with pytest.raises(BackendError) as info:
        b.complete(text_request())
    assert not info.value.retryable
    assert "exceeds the context length" in str(info.value) and "400" in str(info.value)
    assert len(server.chat_requests) == 1
    assert server.pending == 1


def test_timeout_is_retried(server):
    server.script(ok("too late", latency=1.5), ok("in time"))
    b = backend(server, timeout=0.3, retries=1)
    t0 = time.perf_counter()
    assert b.complete(text_request()).text == "in time"
    assert time.perf_counter() - t0 < 1.4
    assert len(server.chat_requests) == 2


def test_garbage_body_is_retried_then_reported(server):
    server.script(garbage(), garbage(), garbage())
    b = backend(server, retries=2)
    with pytest.raises(BackendError, match="malformed"):
        b.complete(text_request())
    assert len(server.chat_requests) == 3


def test_concurrency_limit_holds_from_many_threads(server):
    server.latency = 0.1
    b = backend(server, concurrency=3)
    assert b.max_concurrency == 3
    results: list[str] = []
    lock = threading.Lock()

    def call(i: int) -> None:
        text = b.complete(text_request(f"q{i}")).text
        with lock:
            results.append(text)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(18)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 18
    assert server.max_in_flight == 3  # reached, never exceeded


def test_api_key_sent_but_never_shown(server, monkeypatch):
    secret = "sk-very-secret-4242"
    monkeypatch.setenv("REFINEG_TEST_KEY", secret)
    server.script(ok("fine"), error(401, "bad key"))
    b = backend(server, api_key_env="REFINEG_TEST_KEY")
    b.complete(text_request())
    assert server.chat_requests[0].headers["authorization"] == f"Bearer {secret}"
    with pytest.raises(BackendError) as info:
        b.complete(text_request())
    shown = [
        b.describe(),
        json.dumps(b.cache_identity()),
        b.options.model_dump_json(),
        repr(b.options),
        str(info.value),
    ]
    assert all(secret not in s for s in shown)
    assert "REFINEG_TEST_KEY" in b.options.model_dump_json()


def test_missing_key_variable_is_reported(server, monkeypatch):
    monkeypatch.delenv("REFINEG_TEST_KEY", raising=False)
    reason = backend(server, api_key_env="REFINEG_TEST_KEY").check_available()
    assert reason is not None and "REFINEG_TEST_KEY" in reason


def test_usage_is_read_from_the_answer_and_metered_once_by_the_run(server, tmp_path):
    server.script(
        ok("a", prompt_tokens=100, completion_tokens=20),
        ok("b", prompt_tokens=50, completion_tokens=5),
    )
    b = CachedBackend(backend(server), tmp_path / "cache")
    r1 = b.complete(text_request("1"))
    b.complete(text_request("2"))
    assert r1.usage == Usage(100, 20)
    spent = b.meter.snapshot()
    assert (spent.calls, spent.prompt_tokens, spent.completion_tokens) == (2, 150, 25)


def test_check_available(server):
    assert backend(server).check_available() is None
    reason = backend(server, model="other-model").check_available()
    assert reason is not None and "other-model" in reason and "fake-model" in reason
    assert any(r.path.endswith("/models") for r in server.requests)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_nothing_listening_is_fast_and_clear():
    b = OpenAIBackend(
        OpenAIBackend.Options(
            base_url=f"http://127.0.0.1:{_free_port()}/v1", retries=2, backoff_base=0.01
        )
    )
    t0 = time.perf_counter()
    reason = b.check_available()
    assert reason is not None and "nothing answers" in reason
    with pytest.raises(BackendUnavailable):
        b.complete(text_request())
    assert time.perf_counter() - t0 < 5
    assert "openai-compatible at http://127.0.0.1" in b.describe()


def test_dead_server_is_tried_once_per_call_until_it_answers():
    with FakeOpenAIServer() as srv:
        url = srv.base_url
        b = OpenAIBackend(
            OpenAIBackend.Options(base_url=url, model="fake-model", retries=3, backoff_base=0.01)
        )
        assert b.complete(text_request()).text == "[]"
    # the server is gone: the first call retries, later ones fail after one attempt
    with pytest.raises(BackendUnavailable):
        b.complete(text_request())
    assert b.stats["attempts"] == 1 + 4
    with pytest.raises(BackendUnavailable):
        b.complete(text_request())
    assert b.stats["attempts"] == 1 + 4 + 1


def test_missing_image_is_a_clear_non_retryable_error(server, tmp_path):
    b = backend(server)
    req = ChatRequest((ChatMessage("user", (ImagePart(tmp_path / "nope.jpg"),)),))
    with pytest.raises(BackendError, match="image not found") as info:
        b.complete(req)
    assert not info.value.retryable
    assert server.chat_requests == []


def test_a_truncated_original_fails_its_request_located_and_unsent(server, tmp_path):
    whole = tmp_path / "whole.jpg"
    Image.new("RGB", (600, 800), (20, 120, 200)).save(whole, quality=90)
    cut = tmp_path / "cut.jpg"  # near the grid: would go as it is, were it whole
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    b = backend(server)
    with pytest.raises(BackendError, match=r"cannot read image .*cut\.jpg.*truncated") as info:
        b.complete(ChatRequest((ChatMessage("user", (ImagePart(cut, size=(600, 800)),)),)))
    assert not info.value.retryable
    assert server.chat_requests == []


def test_options_are_validated():
    with pytest.raises(pydantic.ValidationError):
        OpenAIBackend.Options(api_key="sk-inline")  # unknown key: keys never go in configs
    with pytest.raises(pydantic.ValidationError, match="unknown box frame"):
        OpenAIBackend.Options(box_frame="yolo")
    with pytest.raises(pydantic.ValidationError):
        OpenAIBackend.Options(base_url="localhost:8000")
