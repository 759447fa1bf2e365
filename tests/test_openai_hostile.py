"""The OpenAI backend against servers that misbehave: trickling, stalling, huge
answers, schema refusals, echoed secrets, replicas that die (real HTTP on loopback)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from refineg_openai.backend import OpenAIBackend
from refineg_openai.endpoints import EndpointPool
from refineg_openai.testing import FakeOpenAIServer, error, ok, reset, stall, trickle

from refineg_core import secrets
from refineg_core.chat import ChatMessage, ChatRequest
from refineg_core.errors import BackendError
from refineg_core.mllm_cache import CachedBackend

SCHEMA = {"type": "object", "properties": {"entities": {"type": "array"}}}


@pytest.fixture(autouse=True)
def _no_secrets_left():
    yield
    secrets.forget_all()


def backend(urls, **kw) -> OpenAIBackend:
    opts = {
        "base_url": urls,
        "model": "fake-model",
        "backoff_base": 0.01,
        "backoff_max": 0.05,
        **kw,
    }
    return OpenAIBackend(OpenAIBackend.Options(**opts))


def request(text: str = "hello", schema=None) -> ChatRequest:
    return ChatRequest((ChatMessage.text("user", text),), purpose="test", answer_schema=schema)


def test_trickling_server_is_cut_at_the_deadline(server: FakeOpenAIServer) -> None:
    # a correct body, one byte every 0.5 s: httpx's timeout (between bytes) never fires
    server.script(trickle('[{"name": "Obama", "type": "PER"}]', interval=0.5))
    b = backend(server.base_url, timeout=5, deadline=1.5, retries=0)
    t0 = time.perf_counter()
    with pytest.raises(BackendError) as info:
        b.complete(request())
    took = time.perf_counter() - t0
    assert info.value.kind == "deadline" and "deadline of 1.5s" in str(info.value)
    assert 1.4 < took < 3.5  # the body would take 17 s
    assert b.stats["deadline_exceeded"] == 1


def test_headers_then_silence_is_cut_at_the_deadline(server: FakeOpenAIServer) -> None:
    server.script(stall("[]", seconds=30))
    b = backend(server.base_url, timeout=60, deadline=1.0, retries=2)
    t0 = time.perf_counter()
    with pytest.raises(BackendError) as info:
        b.complete(request())
    assert info.value.kind == "deadline" and time.perf_counter() - t0 < 3.5  # not 30 s


def test_deadline_covers_retries_and_waits(server: FakeOpenAIServer) -> None:
    server.default = error(503, "busy", retry_after=5)
    b = backend(server.base_url, deadline=1.0, retries=5)
    t0 = time.perf_counter()
    with pytest.raises(BackendError) as info:
        b.complete(request())
    assert info.value.kind == "deadline" and "busy" in str(info.value)
    assert time.perf_counter() - t0 < 3.5 and len(server.chat_requests) == 1  # no 5 s wait


def test_huge_answer_is_refused_unread_and_never_cached(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    huge = "[" + ", ".join(['{"name": "Obama", "type": "PER"}'] * 4000) + "]"  # ~136 KB
    server.default = ok(huge)
    b = CachedBackend(backend(server.base_url, max_answer_bytes=65536, retries=3), tmp_path)
    with pytest.raises(BackendError) as info:
        b.complete(request())
    assert info.value.kind == "answer_too_large" and not info.value.retryable
    assert len(server.chat_requests) == 1  # not retried: the same prompt gives the same
    assert not list(tmp_path.rglob("*.json"))  # not cached
    server.default = ok("x" * 60000)  # under the limit: fine
    assert len(b.complete(request("other")).text) == 60000


def test_schema_is_sent_when_the_request_has_one(server: FakeOpenAIServer) -> None:
    b = backend(server.base_url)
    b.complete(request("a", SCHEMA))
    b.complete(request("b"))
    with_schema, without = server.chat_requests
    fmt = with_schema.body["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["schema"] == SCHEMA
    assert "response_format" not in without.body
    off = backend(server.base_url, answer_schema=False)
    off.complete(request("c", SCHEMA))
    assert "response_format" not in server.chat_requests[-1].body


def test_server_refusing_the_schema_is_asked_without_it_once_and_for_all(
    server: FakeOpenAIServer,
) -> None:
    def refuse(req):
        if "response_format" in req.body:
            return error(400, "response_format json_schema is not supported by this server")
        return ok("[]")

    server.responder = refuse
    b = backend(server.base_url, retries=0)
    assert b.complete(request("a", SCHEMA)).text == "[]"
    assert b.complete(request("b", SCHEMA)).text == "[]"
    sent = [("response_format" in r.body) for r in server.chat_requests]
    assert sent == [True, False, False]  # refused once, remembered
    assert b.stats["schema_fallbacks"] == 1


def test_other_400s_do_not_drop_the_schema(server: FakeOpenAIServer) -> None:
    server.script(error(400, "prompt is too long"))
    b = backend(server.base_url)
    with pytest.raises(BackendError):
        b.complete(request("a", SCHEMA))
    b.complete(request("b", SCHEMA))
    assert "response_format" in server.chat_requests[-1].body


def test_key_echoed_by_a_401_never_reaches_a_message(server: FakeOpenAIServer, monkeypatch) -> None:
    key = "sk-live-0123456789abcdef"
    monkeypatch.setenv("REFINEG_HOSTILE_KEY", key)
    server.responder = lambda req: error(
        401, f"invalid credentials in header 'Authorization: {req.headers['authorization']}'"
    )
    b = backend(server.base_url, api_key_env="REFINEG_HOSTILE_KEY")
    with pytest.raises(BackendError) as info:
        b.complete(request())
    assert server.chat_requests[0].headers["authorization"] == f"Bearer {key}"
    assert key not in str(info.value) and "Authorization: Bearer ***" in str(info.value)
    reason = b.check_available()
    assert reason is None or key not in reason


def test_key_in_extra_body_stays_out_of_cache_and_messages(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    key = "gw-secret-998877665544"
    server.responder = lambda req: ok(f"[] (you sent {json.dumps(req.body['api_key'])})")
    inner = backend(
        server.base_url,
        extra_body={"api_key": key, "top_k": 5},
        headers={"X-Api-Key": "hdr-secret-112233"},
    )
    cached = CachedBackend(inner, tmp_path)
    answer = cached.complete(request())
    body = server.chat_requests[0].body
    assert body["api_key"] == key and body["top_k"] == 5  # sent as configured
    assert server.chat_requests[0].headers["x-api-key"] == "hdr-secret-112233"
    assert "***" in json.dumps(inner.cache_identity()) and key not in cached.key(request())
    [entry] = list(tmp_path.rglob("*.json"))
    stored = entry.read_text()
    assert key not in stored and "hdr-secret-112233" not in stored
    assert json.loads(stored)["identity"]["extra_body"] == {"api_key": "***", "top_k": 5}
    assert answer.text.startswith("[]")  # what the caller got is not altered
    # two keys, one cache: the key never shapes the cache key
    other = backend(server.base_url, extra_body={"api_key": "another-key-000", "top_k": 5})
    assert CachedBackend(other, tmp_path).key(request()) == cached.key(request())


# -- several replicas ----------------------------------------------------------


def test_base_url_list_is_validated() -> None:
    o = OpenAIBackend.Options(base_url=["http://a:1/v1/", "http://b:2/v1"])
    assert o.urls == ["http://a:1/v1", "http://b:2/v1"]
    assert OpenAIBackend.Options(base_url="http://a:1/v1/").urls == ["http://a:1/v1"]
    with pytest.raises(ValueError, match="twice"):
        OpenAIBackend.Options(base_url=["http://a:1/v1", "http://a:1/v1/"])
    with pytest.raises(ValueError, match="at least one"):
        OpenAIBackend.Options(base_url=[])


def test_pool_prefers_least_loaded_and_rests_failures() -> None:
    now = [0.0]
    pool = EndpointPool(["a", "b"], rest=10, clock=lambda: now[0])
    first, second = pool.acquire(), pool.acquire()
    assert {first.url, second.url} == {"a", "b"}  # the idle one before the busy one
    pool.release(first, failed=True)  # a rests
    pool.release(second, failed=False)
    assert [pool.acquire().url for _ in range(3)] == ["b", "b", "b"]
    now[0] = 11.0  # rest over
    assert pool.acquire().url == "a"
    assert pool.stats()["a"] == {"requests": 2, "ok": 0, "failed": 1, "rested": 1}


def test_requests_spread_over_replicas(tmp_path: Path) -> None:
    with FakeOpenAIServer(latency=0.05) as one, FakeOpenAIServer(latency=0.05) as two:
        b = backend([one.base_url, two.base_url], concurrency=4)
        threads = [threading.Thread(target=b.complete, args=(request(str(i)),)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(one.chat_requests) + len(two.chat_requests) == 16
        assert len(one.chat_requests) >= 4 and len(two.chat_requests) >= 4
        stats = b.endpoint_stats()
        assert sum(s["ok"] for s in stats.values()) == 16


def test_replica_killed_mid_run_loses_nothing(tmp_path: Path) -> None:
    """Two fake endpoints, one killed mid-run: every request answered by the other."""
    one, two = FakeOpenAIServer(latency=0.05).start(), FakeOpenAIServer(latency=0.05).start()
    try:
        b = backend([one.base_url, two.base_url], concurrency=4, retries=2, endpoint_rest=60)
        answers: list[str] = []
        errors: list[BaseException] = []
        lock = threading.Lock()

        def call(i: int) -> None:
            try:
                text = b.complete(request(f"q{i}")).text
            except BaseException as exc:
                with lock:
                    errors.append(exc)
                return
            with lock:
                answers.append(text)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(40)]
        for i, t in enumerate(threads):
            t.start()
            if i == 12:
                time.sleep(0.1)
                one.stop()  # killed mid-run, in-flight keep-alive connections cut
        for t in threads:
            t.join()
        assert errors == [] and len(answers) == 40
        stats = b.endpoint_stats()
        assert stats[one.base_url]["failed"] >= 1
        assert stats[two.base_url]["ok"] > stats[one.base_url]["ok"]
        # once rested, the dead replica gets nothing more: only the requests that were
        # on it or chose it before its first failure came back (a few, not 40 - 12)
        assert stats[one.base_url]["failed"] <= 2 * 4, stats
    finally:
        one.stop()
        two.stop()


def test_all_replicas_down_is_unavailable() -> None:
    with FakeOpenAIServer() as one, FakeOpenAIServer() as two:
        urls = [one.base_url, two.base_url]
    b = backend(urls, retries=1)
    reason = b.check_available()
    assert reason is not None and urls[0] in reason and urls[1] in reason


def test_connection_reset_is_retried(server: FakeOpenAIServer) -> None:
    server.script(reset(), ok("fine"))
    b = backend(server.base_url, retries=1)
    assert b.complete(request()).text == "fine" and len(server.chat_requests) == 2
