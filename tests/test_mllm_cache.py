"""The response cache: reruns are free, errors are not remembered, images are in the key."""

from __future__ import annotations

import json
import threading

import pytest
from PIL import Image
from refineg_openai.backend import OpenAIBackend
from refineg_openai.testing import FakeOpenAIServer, error, ok

from refineg_core.chat import ChatMessage, ChatRequest, ImagePart, TextPart
from refineg_core.errors import BackendError, BackendUnavailable
from refineg_core.mllm_cache import CachedBackend


@pytest.fixture
def server():
    with FakeOpenAIServer(
        responder=lambda req: ok(f"echo: {req.text}", prompt_tokens=9, completion_tokens=3)
    ) as srv:
        yield srv


def openai(server, **kw) -> OpenAIBackend:
    options = {"retries": 1, "backoff_base": 0.01, **kw}
    return OpenAIBackend(
        OpenAIBackend.Options(base_url=server.base_url, model="fake-model", **options)
    )


def requests(n: int) -> list[ChatRequest]:
    return [ChatRequest((ChatMessage.text("user", f"question {i}"),)) for i in range(n)]


def run_job(backend, reqs) -> list[str]:
    """Like a stage: call from several threads, return answers in order."""
    out: list[str | None] = [None] * len(reqs)

    def work(i: int) -> None:
        out[i] = backend.complete(reqs[i]).text

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(reqs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [o or "" for o in out]


def test_second_run_makes_zero_calls(server, tmp_path):
    reqs = requests(12)
    first = CachedBackend(openai(server, concurrency=4), tmp_path / "cache")
    answers = run_job(first, reqs)
    assert len(server.chat_requests) == 12
    assert first.stats["calls"] == 12 and first.stats["hits"] == 0
    spent = first.meter.snapshot()
    assert (spent.prompt_tokens, spent.completion_tokens) == (12 * 9, 12 * 3)

    # a fresh process-like object over the same folder: the rerun of the same job
    server.reset()
    second = CachedBackend(openai(server, concurrency=4), tmp_path / "cache")
    again = run_job(second, reqs)
    assert again == answers
    assert server.chat_requests == []
    assert second.stats["calls"] == 0 and second.stats["hits"] == 12
    saved = second.meter.snapshot()
    assert (saved.saved_prompt_tokens, saved.saved_completion_tokens) == (12 * 9, 12 * 3)
    assert saved.calls == 0 and saved.cached_calls == 12
    assert all(second.complete(r).cached for r in reqs)


def test_identical_requests_in_flight_make_one_call(server, tmp_path):
    server.latency = 0.2
    cached = CachedBackend(openai(server, concurrency=8), tmp_path / "c")
    run_job(cached, requests(1) * 8)
    assert len(server.chat_requests) == 1
    assert cached.stats["calls"] == 1 and cached.stats["hits"] == 7


def test_errors_are_not_cached(server, tmp_path):
    server.script(error(500), error(500))  # both attempts of the first call fail
    cached = CachedBackend(openai(server), tmp_path / "c")
    (req,) = requests(1)
    with pytest.raises(BackendError):
        cached.complete(req)
    assert cached.stats["errors"] == 1
    assert not list((tmp_path / "c").rglob("*.json"))
    assert cached.complete(req).text == "echo: question 0"  # asked again, not a cached error
    assert cached.stats["calls"] == 2
    assert len(list((tmp_path / "c").rglob("*.json"))) == 1


def test_image_bytes_change_the_key(server, tmp_path):
    img = tmp_path / "img.png"
    Image.new("RGB", (64, 48), (0, 0, 0)).save(img)
    req = ChatRequest((ChatMessage("user", (ImagePart(img), TextPart("what?"))),))
    cached = CachedBackend(openai(server), tmp_path / "c")
    k1 = cached.key(req)
    cached.complete(req)
    assert cached.complete(req).cached
    Image.new("RGB", (64, 48), (255, 255, 255)).save(img)  # same path, new pixels
    assert cached.key(req) != k1
    assert not cached.complete(req).cached
    assert len(server.chat_requests) == 2


def test_backend_identity_changes_the_key(server, tmp_path):
    (req,) = requests(1)
    a = CachedBackend(openai(server, temperature=0.1), tmp_path / "c")
    b = CachedBackend(openai(server, temperature=0.7), tmp_path / "c")
    c = CachedBackend(openai(server, temperature=0.1, concurrency=32, timeout=5), tmp_path / "c")
    assert a.key(req) != b.key(req)
    assert a.key(req) == c.key(req)  # speed settings do not change answers


def test_corrupt_entry_is_a_miss_and_is_rewritten(server, tmp_path):
    (req,) = requests(1)
    cached = CachedBackend(openai(server), tmp_path / "c")
    cached.complete(req)
    path = cached.path_for(cached.key(req))
    path.write_text('{"response": {"te')  # torn by hand
    assert not cached.complete(req).cached
    assert cached.stats["corrupt"] == 1
    assert json.loads(path.read_text())["response"]["text"] == "echo: question 0"
    assert not list(path.parent.glob("*.tmp"))


def test_a_dead_backend_is_unavailable_whatever_the_cache_holds(server, tmp_path):
    reqs = requests(3)
    live = CachedBackend(openai(server), tmp_path / "c")
    run_job(live, reqs[:2])
    server.stop()
    offline = CachedBackend(openai(server, retries=0), tmp_path / "c")
    assert offline.check_available() is not None  # old entries never make it look alive
    assert offline.complete(reqs[0]).cached  # but what is cached still answers
    with pytest.raises(BackendUnavailable):
        offline.complete(reqs[2])
    assert offline.stats["hits"] == 1 and offline.stats["errors"] == 1


def test_only_answers_that_pass_the_check_are_cached(server, tmp_path):
    reqs = requests(2)
    cached = CachedBackend(openai(server), tmp_path / "c")

    def refuse(response):
        raise ValueError("unusable")

    with pytest.raises(ValueError):
        cached.complete_checked(reqs[0], refuse)
    assert cached.stats["unusable"] == 1 and not list((tmp_path / "c").rglob("*.json"))
    response, value = cached.complete_checked(reqs[0], lambda r: r.text.upper())
    assert value == response.text.upper() and cached.stats["calls"] == 2  # asked again
    # a cached answer that fails today's check is asked again, not replayed
    with pytest.raises(ValueError):
        cached.complete_checked(reqs[0], refuse)
    assert cached.stats["rejected_hits"] == 1 and cached.stats["calls"] == 3


def test_delegates_contract(server, tmp_path):
    inner = openai(server, concurrency=5, box_frame="qwen2-vl")
    cached = CachedBackend(inner, tmp_path / "c")
    assert cached.max_concurrency == 5
    assert cached.box_codec is inner.box_codec
    assert cached.cache_identity() == inner.cache_identity()
    assert inner.describe() in cached.describe()
    assert cached.supports_images


def _entry(response: dict) -> str:
    return json.dumps({"key": "k", "response": response})


BAD_ENTRIES = {
    "infinite-usage": _entry(
        {"text": "stale", "usage": {"prompt_tokens": 1e999, "completion_tokens": 1}}
    ),
    "negative-usage": _entry(
        {"text": "stale", "usage": {"prompt_tokens": -999999999999, "completion_tokens": 3}}
    ),
    "fractional-usage": _entry(
        {"text": "stale", "usage": {"prompt_tokens": 2.5, "completion_tokens": 3}}
    ),
    "boolean-usage": _entry(
        {"text": "stale", "usage": {"prompt_tokens": True, "completion_tokens": 3}}
    ),
    "text-not-a-string": _entry(
        {"text": ["x"], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}
    ),
    "deep-nesting": '{"response": ' + "[" * 200000 + "]" * 200000 + "}",
    "not-an-object": "[1, 2, 3]",
    "not-utf8": b"\xff\xfe{".decode("latin-1"),
}


@pytest.mark.parametrize("kind", sorted(BAD_ENTRIES))
def test_an_entry_that_does_not_validate_is_a_miss_asked_again_and_rewritten(
    server, tmp_path, caplog, kind
):
    (req,) = requests(1)
    cached = CachedBackend(openai(server), tmp_path / "c")
    path = cached.path_for(cached.key(req))
    path.parent.mkdir(parents=True)
    raw = BAD_ENTRIES[kind]
    path.write_bytes(raw.encode("latin-1") if kind == "not-utf8" else raw.encode())
    with caplog.at_level("WARNING", logger="refineg_core.mllm_cache"):
        response = cached.complete(req)
    assert not response.cached and response.text == "echo: question 0"
    assert len(server.chat_requests) == 1  # asked again
    assert cached.stats["corrupt"] == 1
    assert any(str(path) in r.getMessage() for r in caplog.records), caplog.text
    entry = json.loads(path.read_text(encoding="utf-8"))  # rewritten, valid
    assert entry["response"]["usage"] == {"prompt_tokens": 9, "completion_tokens": 3}
    assert cached.complete(req).cached  # and now a hit
    saved = cached.meter.snapshot()
    assert saved.saved_prompt_tokens == 9 and saved.prompt_tokens == 9


def test_a_directory_in_place_of_an_entry_is_a_miss_and_is_replaced(server, tmp_path, caplog):
    (req,) = requests(1)
    cached = CachedBackend(openai(server), tmp_path / "c")
    path = cached.path_for(cached.key(req))
    (path / "inside").mkdir(parents=True)
    (path / "inside" / "file.txt").write_text("x")
    with caplog.at_level("WARNING", logger="refineg_core.mllm_cache"):
        assert not cached.complete(req).cached
    assert path.is_file() and cached.stats["corrupt"] == 1
    assert "directory" in caplog.text
    assert cached.complete(req).cached
    assert len(server.chat_requests) == 1


def test_every_hostile_cache_entry_is_listed_in_contributing():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "CONTRIBUTING.md").read_text(encoding="utf-8")
    section = text.split("## Hostile inputs: response cache entries", 1)[1].split("\n## ", 1)[0]
    listed = {line.split("`")[1] for line in section.splitlines() if line.startswith("| `")}
    assert listed == {*BAD_ENTRIES, "directory"}
