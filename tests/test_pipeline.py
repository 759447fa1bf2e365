"""The whole pipeline, end to end, on real tweets: a real tagger, the real gate,
the real OpenAI-compatible backend talking HTTP to a fake server, and the real
selector with MiniLM embeddings. Small sizes keep it a few minutes on 2 cores."""

from __future__ import annotations

import json
import textwrap

import pytest
from refineg_formats.twitter import read_twitter_gmner, write_twitter_gmner
from refineg_openai.testing import FakeOpenAIServer, ok

from refineg_core.formats.native import read_results
from refineg_core.testing import run_cli
from tests.stagedata import TWITTER_LABELS_TOML, oracle, paint_image

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, twitter_dir_module):
    """40 train + 12 predict real tweets written back as a Twitter-GMNER split, with images."""
    root = tmp_path_factory.mktemp("tw")
    train = read_twitter_gmner(twitter_dir_module / "train.txt").samples[:40]
    dev = [s for s in read_twitter_gmner(twitter_dir_module / "dev.txt").samples if s.entities][:12]
    write_twitter_gmner(train, root / "train" / "train.txt")
    write_twitter_gmner(dev, root / "dev" / "dev.txt")
    for i, s in enumerate([*train, *dev]):
        size = s.image.size or (400, 300)
        paint_image(root / "images" / f"{s.image.image_id}.jpg", size, seed=i)
    return root, {s.text: s for s in dev}


@pytest.fixture(scope="module")
def twitter_dir_module():
    from tests.conftest import TWITTER

    if not TWITTER.exists():
        pytest.skip(f"real data not found at {TWITTER}")
    return TWITTER


def config_text(root, base_url, run_dir):
    return textwrap.dedent(f'''
        run_dir = "{run_dir}"
        {TWITTER_LABELS_TOML}
        [data.train]
        path = "{root}/train/train.txt"
        images_dir = "{root}/images"
        [data.predict]
        path = "{root}/dev/dev.txt"
        images_dir = "{root}/images"
        [outputs]
        formats = ["twitter-gmner", "ccks"]
        [tagger.options]
        epochs = 1
        batch_size = 16
        max_length = 64
        [uncertainty.options]
        threshold = 0.0
        [backend]
        plugin = "openai"
        [backend.options]
        base_url = "{base_url}"
        model = "fake-model"
        api_key_env = "REFINEG_TEST_KEY"
        concurrency = 4
        retries = 0
        timeout = 10
        [selector]
        plugin = "clip_similarity"
        [selector.options]
        image_weight = 0.0
        [ground]
        k = 2
    ''')


def test_run_end_to_end_then_rerun_makes_no_calls(dataset, tmp_path, monkeypatch):
    root, gold_by_text = dataset
    monkeypatch.setenv("REFINEG_TEST_KEY", "sk-test-secret")
    with FakeOpenAIServer() as server:
        server.responder = oracle(gold_by_text)
        cfg = tmp_path / "c.toml"
        cfg.write_text(config_text(root, server.base_url, tmp_path / "run"), encoding="utf-8")
        first = run_cli(["run", "-c", str(cfg)])
        assert first.code == 0, first.stderr
        calls = len(server.chat_requests)
        assert calls > 0
        assert server.chat_requests[0].headers["authorization"] == "Bearer sk-test-secret"
        run = tmp_path / "run"
        assert "sk-test-secret" not in (run / "config.json").read_text()
        summary = json.loads((run / "summary.json").read_text())
        final = read_results(run / "final.jsonl")
        assert len(final) == 12
        # The oracle MLLM fixes what the 1-epoch tagger got wrong and draws gold boxes.
        f1 = summary["eval"]
        assert f1["refine"]["mner"] > f1["predict"]["mner"]
        assert f1["ground"]["gmner"] >= f1["refine"]["gmner"]
        assert any(e.grounded_by == "mllm" and e.boxes for r in final for e in r.entities)
        assert (run / "final.ccks.json").exists() and (run / "twitter" / "predictions.txt").exists()

        second = run_cli(["run", "-c", str(cfg)])
        assert second.code == 0, second.stderr
        assert len(server.chat_requests) == calls  # resumed + cached: zero new calls
        assert read_results(run / "final.jsonl") == final


def test_offline_run_completes_and_says_what_it_skipped(dataset, tmp_path, monkeypatch):
    root, _ = dataset
    monkeypatch.setenv("REFINEG_TEST_KEY", "x")
    cfg = tmp_path / "c.toml"
    cfg.write_text(config_text(root, "http://127.0.0.1:9/v1", tmp_path / "run"), encoding="utf-8")
    result = run_cli(["run", "-c", str(cfg), "--set", "tagger.options.epochs=1"])
    assert result.code == 0, result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    refine = summary["stages"]["refine"]
    assert refine["requests_skipped"] > 0 and "127.0.0.1:9" in json.dumps(refine)
    final = read_results(tmp_path / "run" / "final.jsonl")
    assert len(final) == 12 and all(e.boxes is None for r in final for e in r.entities)
    assert "requests_skipped" in result.stderr


def test_synth_then_train_on_gold_plus_synthetic(ccks_dir, tmp_path):
    """`refineg synth` through the OpenAI backend, then `refineg train` uses its output."""
    reply = json.dumps(
        [
            {
                "text": "The PUMA rolled past the HIMARS launcher .",
                "entity": [
                    {"name": "PUMA", "type": "vehicle"},
                    {"name": "HIMARS", "type": "weapon"},
                ],
            },
            {"text": "A Rafale landed .", "entity": [{"name": "Rafale", "type": "aircraft"}]},
            {"text": "Generic tank here .", "entity": [{"name": "tank", "type": "cannon"}]},
        ]
    )
    with FakeOpenAIServer() as server:
        server.default = ok("Here you go:\n" + reply)
        cfg = tmp_path / "c.toml"
        cfg.write_text(
            textwrap.dedent(f'''
            run_dir = "{tmp_path / "run"}"
            [labels]
            vehicle = "land vehicle"
            aircraft = "aircraft"
            vessel = "ship"
            weapon = "weapon"
            location = "place"
            other = "other"
            [data.train]
            path = "{ccks_dir / "gold-500.conll"}"
            limit = 6
            [data]
            use_synthesized = true
            [synthesizer]
            plugin = "llm"
            [synth_backend]
            plugin = "openai"
            [synth_backend.options]
            base_url = "{server.base_url}"
            model = "fake-model"
            [tagger.options]
            epochs = 1
            max_length = 32
        '''),
            encoding="utf-8",
        )
        synth = run_cli(["synth", "-c", str(cfg)])
        assert synth.code == 0, synth.stderr
        assert len(server.chat_requests) == 6  # one request per seed
        report = json.loads((tmp_path / "run" / "synth" / "report.json").read_text())
        # Each seed's answer: 2 valid sentences, 1 with a type outside the label set;
        # duplicates across seeds are removed, so 2 survive in total.
        assert report["kept"] == 2
        train = run_cli(["train", "-c", str(cfg)])
        assert train.code == 0, train.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stages"]["train"]["train_samples"] == 6 + 2
    assert (tmp_path / "run" / "tagger" / "manifest.json").exists()
