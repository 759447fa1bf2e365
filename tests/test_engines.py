"""Streaming stages and engines: chunking, resume per chunk, the budget over the
whole corpus, and the Ray Data engine against the in-process one.

Real gazetteer tagger (example plugin), real entropy gate, the real OpenAI
backend over HTTP to a loopback server that answers like a perfect MLLM for
most tweets and with unusable prose for some (so failures travel too), on real
Twitter-GMNER dev tweets with painted images.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import pytest
from refineg_formats.twitter import read_twitter_gmner, write_twitter_gmner
from refineg_openai.testing import FakeOpenAIServer, drop, ok

from refineg_core.formats.native import read_results
from refineg_core.pipeline.fingerprint import StageStore, read_record
from refineg_core.testing import run_cli
from tests.stagedata import gazetteer_config, oracle, paint_image, query_text

pytest.importorskip("refineg_gazetteer", reason="pip install -e examples/refineg-gazetteer")


def make_data(root: Path, n_dev: int) -> dict:
    from tests.conftest import TWITTER

    if not TWITTER.exists():
        pytest.skip(f"real data not found at {TWITTER}")
    train = read_twitter_gmner(TWITTER / "train.txt").samples[:400]
    dev = read_twitter_gmner(TWITTER / "dev.txt").samples[:n_dev]
    write_twitter_gmner(train, root / "train" / "train.txt")
    write_twitter_gmner(dev, root / "dev" / "dev.txt")
    for i, s in enumerate(dev):
        if s.image is not None:
            size = s.image.size or (320, 240)
            paint_image(root / "images" / f"{s.image.image_id}.jpg", size, i)
    return {s.text: s for s in dev}


@pytest.fixture(scope="module")
def data500(tmp_path_factory):
    root = tmp_path_factory.mktemp("tw500")
    return root, make_data(root, 500)


@pytest.fixture(scope="module")
def data120(tmp_path_factory):
    root = tmp_path_factory.mktemp("tw120")
    return root, make_data(root, 120)


def mostly_oracle(gold_by_text):
    """A perfect MLLM, except that about one tweet in nine gets an unusable answer."""
    perfect = oracle(gold_by_text)

    def respond(request):
        if zlib.crc32(query_text(request.text).encode()) % 9 == 0:
            return ok("I am not able to answer that.")
        return perfect(request)

    return respond


def config(root: Path, base_url: str, run_dir: Path) -> str:
    return gazetteer_config(root, base_url, run_dir, refine=True, ground=True)


def run(tmp_path: Path, name: str, text: str, *args: str):
    cfg = tmp_path / f"{name}.toml"
    cfg.write_text(text, encoding="utf-8")
    result = run_cli(["run", "-c", str(cfg), *args])
    assert result.code == 0, result.stderr
    return result


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def test_ray_engine_final_equals_the_local_engine_on_500_dev_tweets(data500, tmp_path):
    pytest.importorskip("ray", reason="pip install 'refineg[ray]'")
    root, gold = data500
    engine = ["--set", "engine.chunk_size=64"]
    ray_engine = [
        *engine,
        "--set",
        "engine.options.mllm_actors=2",
        "--set",
        "engine.options.num_cpus=0.25",
    ]
    with FakeOpenAIServer(mostly_oracle(gold)) as server:
        local = tmp_path / "local"
        run(tmp_path, "local", config(root, server.base_url, local), *engine)
        local_calls = len(server.chat_requests)
        remote = tmp_path / "ray"
        run(tmp_path, "ray", config(root, server.base_url, remote), *ray_engine, "--engine", "ray")
        ray_calls = len(server.chat_requests) - local_calls

    assert lines(remote / "final.jsonl") == lines(local / "final.jsonl")
    final = read_results(remote / "final.jsonl")
    assert len(final) == 500 and len({r.id for r in final}) == 500
    assert any(e.boxes for r in final for e in r.entities), "nothing was grounded"
    assert any(f.kind == "no_json" for r in final for f in r.failures), "no failure travelled"
    for stage in ("predict", "refine", "ground"):
        assert lines(remote / f"{stage}.jsonl") == lines(local / f"{stage}.jsonl"), stage
    assert json.loads((remote / "eval.json").read_text()) == json.loads(
        (local / "eval.json").read_text()
    )
    # the same requests were sent: the Ray actors did the work, no sample twice
    assert ray_calls == local_calls > 0
    summary = json.loads((remote / "summary.json").read_text())
    assert summary["stages"]["refine"]["backend"]["calls"] > 0, summary["stages"]["refine"]
    assert "engine" not in {p.name for p in remote.iterdir()} or not any(
        (remote / "engine").rglob("*.jsonl")
    ), "the Ray input shards were left behind"
    for stage in ("predict", "refine", "ground"):  # Ray worker processes did the work
        engine = summary["stages"][stage]["engine"]
        assert engine["kind"] == "ray" and engine["worker_processes"] >= 1, engine
        assert engine["batches"] >= 500 // 64, engine
    local_summary = json.loads((local / "summary.json").read_text())
    assert local_summary["stages"]["predict"]["engine"] == {"kind": "local"}


def test_small_chunks_and_a_budget_give_the_same_outputs_as_one_chunk(data120, tmp_path):
    """The budget ranks the whole input across chunks (two passes), so chunking
    changes nothing; the cap is the whole input's, not each chunk's."""
    root, gold = data120
    budget = [
        "--set",
        "uncertainty.options.threshold=0.0",
        "--set",
        "uncertainty.options.budget=0.2",
    ]
    small, big = tmp_path / "small", tmp_path / "big"
    with FakeOpenAIServer(mostly_oracle(gold)) as server:
        for run_dir, size in ((small, 7), (big, 100000)):
            text = config(root, server.base_url, run_dir)
            run(tmp_path, run_dir.name, text, *budget, "--set", f"engine.chunk_size={size}")
    for name in ("predict.jsonl", "refine.jsonl", "ground.jsonl", "final.jsonl"):
        assert lines(small / name) == lines(big / name), name
    predict = read_results(small / "predict.jsonl")
    delegated = sum(r.gate.delegate_sample for r in predict)
    assert delegated == int(0.2 * len(predict)), delegated  # 24 of 120, not 1 of each 7
    summary = json.loads((small / "summary.json").read_text())
    assert summary["stages"]["predict"]["capped_by_budget"] > 0
    assert not (small / "predict.uncapped.jsonl").exists()


def test_an_interrupted_predict_resumes_after_the_results_written(data120, tmp_path):
    root, gold = data120
    with FakeOpenAIServer(mostly_oracle(gold)) as server:
        text = config(root, server.base_url, tmp_path / "run")
        cfg = tmp_path / "c.toml"
        cfg.write_text(text, encoding="utf-8")
        chunked = ["--set", "engine.chunk_size=25"]
        assert run_cli(["train", "-c", str(cfg)]).code == 0
        assert run_cli(["predict", "-c", str(cfg), *chunked]).code == 0
        out = tmp_path / "run" / "predict.jsonl"
        whole = lines(out)
        # what a kill after 60 results leaves: those lines (the last one torn), unfinished
        torn = "\n".join(whole[:60]) + "\n" + whole[60][:40]
        out.write_text(torn, encoding="utf-8")
        record = read_record(StageStore(tmp_path / "run").path("predict"))
        store = StageStore(tmp_path / "run")
        raw = json.loads(store.path("predict").read_text())
        raw["complete"], raw["output"] = False, None
        store.path("predict").write_text(json.dumps(raw))
        assert record is not None

        again = run_cli(["predict", "-c", str(cfg), *chunked])
        assert again.code == 0, again.stderr
        assert "predict: resuming" in again.stderr
        assert lines(out) == whole
        summary = json.loads((tmp_path / "run" / "summary.json").read_text())
        assert summary["stages"]["predict"]["resumed"] is True


def test_an_mllm_stage_retries_only_what_failed_chunk_by_chunk(data120, tmp_path):
    """The server drops every call after the first 20; a rerun against a healthy
    server asks exactly the samples that failed, and the stage files keep the
    input order with every id once."""
    root, gold = data120
    perfect = mostly_oracle(gold)
    served = {"n": 0}

    def flaky(request):
        served["n"] += 1
        return perfect(request) if served["n"] <= 20 else drop()

    with FakeOpenAIServer(flaky) as server:
        cfg = config(root, server.base_url, tmp_path / "run")
        chunked = ["--set", "engine.chunk_size=9", "--set", 'stages.refine="auto"']
        chunked += ["--set", 'stages.ground="auto"', "--set", 'refine.delegate="entities"']
        run(tmp_path, "c", cfg, *chunked)
        run_dir = tmp_path / "run"
        predict_ids = [r.id for r in read_results(run_dir / "predict.jsonl")]
        from refineg_core.pipeline.retry import needs_retry

        failed = {
            stage: [r.id for r in read_results(run_dir / f"{stage}.jsonl") if needs_retry(r, stage)]
            for stage in ("refine", "ground")
        }
        assert failed["refine"], "the outage did not hit refine"
        server.responder = perfect
        before = len(server.chat_requests)
        run(tmp_path, "c", cfg, *chunked)
        again = server.chat_requests[before:]
    asked_refine = [r for r in again if "box" not in r.text.lower()]
    assert len(asked_refine) == len(failed["refine"])
    for stage in ("refine", "ground"):
        results = read_results(run_dir / f"{stage}.jsonl")
        assert [r.id for r in results] == predict_ids, stage
        # what is left is only the tweets the server answers with prose, not the outage
        kinds = {f.kind for r in results for f in r.failures if f.stage == stage}
        assert kinds <= {"no_json"}, kinds


def test_ray_engine_reports_an_unreachable_required_backend_like_the_local_one(data120, tmp_path):
    """An actor's StageUnavailable comes back as the same one-line error and exit 3."""
    pytest.importorskip("ray", reason="pip install 'refineg[ray]'")
    root, _ = data120
    cfg = tmp_path / "c.toml"
    cfg.write_text(config(root, "http://127.0.0.1:9/v1", tmp_path / "run"), encoding="utf-8")
    args = ["--set", "backend.options.timeout=2"]
    assert run_cli(["train", "-c", str(cfg)]).code == 0
    local = run_cli(["run", "-c", str(cfg), *args])
    ray = ["--engine", "ray", "--set", "engine.options.num_cpus=0.25"]  # the ray engine's
    remote = run_cli(["run", "-c", str(cfg), *args, *ray])
    assert local.code == remote.code == 3, (local.stderr, remote.stderr)
    errors = [line for line in remote.stderr.splitlines() if line.startswith("refineg: error:")]
    assert len(errors) == 1 and "127.0.0.1:9" in errors[0], remote.stderr


def test_a_torn_last_line_is_cut_reading_only_the_tail(tmp_path):
    """A stage file is appended chunk by chunk for hours: opening it for the next
    chunk repairs a torn tail of any length without reading the whole file."""
    from refineg_core.pipeline.runner import JsonlAppender

    path = tmp_path / "s.jsonl"
    whole = '{"id": "a"}\n' * 3
    for torn, expected in (
        ("", whole),  # whole: untouched
        ('{"id": "b", "text": "' + "x" * 200_000, whole),  # torn across many tail blocks
    ):
        path.write_text(whole + torn, encoding="utf-8")
        JsonlAppender(path).close()
        assert path.read_text(encoding="utf-8") == expected
    path.write_text("x" * 70_000, encoding="utf-8")  # no whole line at all
    JsonlAppender(path).close()
    assert path.read_bytes() == b""
