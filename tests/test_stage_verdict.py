"""One verdict per stage, preflight, and honest counts (issue 19, cases 4, 6, 9, 10).

A required MLLM stage (``stages.refine = true``) must never exit 0 while
failing: whatever exception a backend call raises, a sample that failed for a
reason that is not its own (transport, backend, config) makes the stage exit 3
with a note; a sample's own fault (an image that does not decode, an unusable
answer) is recorded and the run goes on. Required backends are checked before
any work, config numbers and URLs when the config is loaded, a saved tagger's
training options against the config's, and counts are per stage and per
engine. The real gazetteer tagger (example plugin), the real entropy gate and
the real OpenAI backend over HTTP to a loopback server run on real tweets.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import pytest
from refineg_openai.backend import OpenAIBackend
from refineg_openai.testing import FakeOpenAIServer, drop

from refineg_core.config import load_config
from refineg_core.errors import ConfigError, PluginError
from refineg_core.formats.native import read_results, write_jsonl
from refineg_core.pipeline.retry import needs_retry
from refineg_core.registry import registered
from refineg_core.testing import run_cli
from refineg_core.types import Entity, Sample, SampleResult
from tests.stagedata import (
    TWITTER_LABELS_TOML,
    oracle,
    write_config,
    write_gazetteer_data,
)
from tests.stagedata import gazetteer_config as config

pytest.importorskip("refineg_gazetteer", reason="pip install -e examples/refineg-gazetteer")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from tests.conftest import TWITTER

    if not TWITTER.exists():
        pytest.skip(f"real data not found at {TWITTER}")
    root = tmp_path_factory.mktemp("tw")
    gold = write_gazetteer_data(root, TWITTER)
    return root, gold


def summary_of(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text(encoding="utf-8"))


def kinds(path: Path, stage: str) -> dict[str, list[str]]:
    """Sample id -> the failure kinds ``stage`` recorded for it."""
    return {
        r.id: [f.kind for f in r.failures if f.stage == stage]
        for r in read_results(path)
        if any(f.stage == stage for f in r.failures)
    }


# ------------------------------------------------------------------ case 4 (a)
class NanBackend(OpenAIBackend):
    """``extra_body = {top_k = nan}`` as the probe sent it: the HTTP client refuses to
    encode the body (ValueError), so no request leaves and no BackendError is raised."""

    built: ClassVar[list[NanBackend]] = []

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.payloads = 0
        NanBackend.built.append(self)

    def payload(self, request):
        self.payloads += 1
        return {**super().payload(request), "top_k": float("nan")}


@pytest.mark.parametrize("mode", [True, "auto"])
def test_an_exception_that_is_not_a_backend_error_trips_the_breaker_and_fails_a_required_stage(
    data, tmp_path, mode
):
    root, gold = data
    NanBackend.built.clear()
    with FakeOpenAIServer(oracle(gold)) as server, registered("backend", "nan", NanBackend):
        text = (
            config(root, server.base_url, tmp_path / "run", refine=mode, ground=False)
            .replace('plugin = "openai"', 'plugin = "nan"')
            .replace("threshold = 0.4", "threshold = 0.0")
        )
        result = run_cli(["run", "-c", str(write_config(tmp_path, text))])
        assert server.chat_requests == []
    run = tmp_path / "run"
    # the breaker counts it like any failed call: it stops calling after a few
    # (8 in a row, plus what the other 3 of 4 workers had started)
    assert 0 < sum(b.payloads for b in NanBackend.built) <= 8 + 3
    if mode is True:
        assert result.code == 3, result.stderr
        errors = [ln for ln in result.stderr.splitlines() if ln.startswith("refineg: error")]
        assert len(errors) == 1 and "refine" in errors[0], result.stderr
        # the stage's verdict is in the summary too, and every failed sample says why
        notes = summary_of(run)["stages"]["refine"]
        assert "stopped" in notes and "verdict" in notes, notes
        failed = kinds(run / "refine.jsonl", "refine")
        assert failed and {k for ks in failed.values() for k in ks} <= {
            "ValueError",
            "unavailable",
        }
        assert "ValueError" in {k for ks in failed.values() for k in ks}
    else:
        assert result.code == 0, result.stderr
        assert "stopped" in summary_of(run)["stages"]["refine"]


@pytest.mark.parametrize(
    ("option", "where"),
    [
        ("backend.options.extra_body.top_k=nan", "backend.options.extra_body.top_k"),
        ("backend.options.deadline=inf", "backend.options.deadline"),
        ("backend.options.deadline=1e300", "backend.options.deadline"),
        ("backend.options.timeout=1e300", "backend.options.timeout"),
        ("backend.options.backoff_max=inf", "backend.options.backoff_max"),
        ("engine.options.num_cpus=inf", "engine.options.num_cpus"),
        ('engine.chunk_size="10"', "engine.chunk_size"),
        ('stages.refine="yes"', "stages.refine"),
        ('backend.options.base_url="http:///v1"', "backend.options.base_url"),
        ('backend.options.base_url="https://:8000/v1"', "backend.options.base_url"),
    ],
)
def test_config_load_refuses_unusable_numbers_coercions_and_urls_without_host(
    data, tmp_path, option, where
):
    root, _ = data
    cfg = write_config(tmp_path, config(root, "http://127.0.0.1:9/v1", tmp_path / "run"))
    with pytest.raises((ConfigError, PluginError)) as caught:
        load_config(cfg, [option])
    assert where in str(caught.value), caught.value
    result = run_cli(["run", "-c", str(cfg), "--set", option])
    assert result.code == 2 and where in result.stderr, result.stderr
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ case 4 (b)
def test_both_replicas_dying_mid_ground_exits_3_with_a_note(data, tmp_path):
    root, gold = data
    answer = oracle(gold)
    with FakeOpenAIServer(answer) as a, FakeOpenAIServer(answer) as b:
        calls = {"n": 0}

        def dies(request):
            calls["n"] += 1
            # after three answers every replica goes away: connections drop
            return answer(request) if calls["n"] <= 3 else drop()

        a.responder = b.responder = dies
        text = config(root, a.base_url, tmp_path / "run", refine=False, ground=True).replace(
            f'base_url = "{a.base_url}"', f'base_url = ["{a.base_url}", "{b.base_url}"]'
        )
        result = run_cli(["run", "-c", str(write_config(tmp_path, text))])
    assert result.code == 3, result.stderr
    run = tmp_path / "run"
    failed = kinds(run / "ground.jsonl", "ground")
    assert len(failed) >= 5, failed  # most samples failed; the earliest answered
    assert {k for ks in failed.values() for k in ks} <= {"connection", "unavailable", "timeout"}
    verdict = summary_of(run)["stages"]["ground"]["verdict"]
    assert f"{len(failed)} of" in verdict and "not their own" in verdict, verdict
    assert "ground" in result.stderr and "not their own" in result.stderr


# ------------------------------------------------------------------ case 4 (c)
def test_required_ground_is_checked_before_any_work_even_when_no_sample_has_an_image(
    data, tmp_path
):
    root, _ = data
    text = config(root, "http://127.0.0.1:9/v1", tmp_path / "run", refine=False, ground=True)
    text = text.replace(f'images_dir = "{root}/images"\n', "")  # no sample has an image
    result = run_cli(["run", "-c", str(write_config(tmp_path, text))])
    assert result.code == 3, result.stderr
    assert "127.0.0.1:9" in result.stderr and "ground" in result.stderr
    run = tmp_path / "run"
    assert not (run / "tagger").exists() and not (run / "predict.jsonl").exists()


def test_a_misconfigured_required_backend_is_found_before_training(data, tmp_path):
    root, _ = data
    text = config(root, "http://127.0.0.1:9/v1", tmp_path / "run", refine=True, ground=False)
    start = text.index("[backend]")
    text = text[:start] + '[backend]\nplugin = "qwen_vl"\n' + text[text.index("[ground]") :]
    result = run_cli(["run", "-c", str(write_config(tmp_path, text))])
    assert result.code == 3, result.stderr
    assert "model_path" in result.stderr
    run = tmp_path / "run"
    assert not (run / "tagger").exists() and not (run / "predict.jsonl").exists()
    assert not (run / "refine.part.jsonl").exists()


def test_auto_stages_say_at_the_start_that_they_will_be_skipped(data, tmp_path):
    root, _ = data
    cfg = write_config(tmp_path, config(root, "http://127.0.0.1:9/v1", tmp_path / "run"))
    result = run_cli(["run", "-c", str(cfg)])
    assert result.code == 0, result.stderr
    lines = result.stderr.splitlines()
    first_work = next(i for i, ln in enumerate(lines) if ln.startswith(("train:", "predict:")))
    before = "\n".join(lines[:first_work])
    for stage in ("refine", "ground"):
        assert f"{stage}: will be skipped" in before and "127.0.0.1:9" in before, before


# ---------------------------------------------------------------------- case 6
def test_a_truncated_jpeg_is_the_samples_own_failure_and_is_not_retried(data, tmp_path):
    root, gold = data
    images = tmp_path / "images"
    images.mkdir()
    for path in (root / "images").iterdir():
        (images / path.name).write_bytes(path.read_bytes())
    with FakeOpenAIServer(oracle(gold)) as server:
        text = (
            config(root, server.base_url, tmp_path / "run", refine=True, ground=True)
            .replace(f'images_dir = "{root}/images"', f'images_dir = "{images}"')
            .replace("threshold = 0.4", "threshold = 0.0")
        )
        cfg = write_config(tmp_path, text)
        off = ["--set", "stages.refine=false", "--set", "stages.ground=false"]
        assert run_cli(["run", "-c", str(cfg), *off]).code == 0
        # a sample the tagger finds entities in: both stages would call for it
        first = next(r for r in read_results(tmp_path / "run" / "predict.jsonl") if r.entities)
        broken = images / f"{first.sample.image.image_id}.jpg"
        broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 3])  # header intact
        result = run_cli(["run", "-c", str(cfg)])
        assert result.code == 0, result.stderr
        run = tmp_path / "run"
        for stage in ("refine", "ground"):
            failed = kinds(run / f"{stage}.jsonl", stage)
            assert failed == {first.id: ["image"]}, (stage, failed)
            assert not any(needs_retry(r, stage) for r in read_results(run / f"{stage}.jsonl"))
        calls = len(server.chat_requests)
        again = run_cli(["run", "-c", str(cfg)])
        assert again.code == 0, again.stderr
        assert len(server.chat_requests) == calls  # nothing is asked again
    final = {r.id: r for r in read_results(run / "final.jsonl")}
    assert len(final) == len(gold) and final[first.id].entities  # the sample is kept


# ---------------------------------------------------------------------- case 9
def _endpoint_requests(summary: dict, stage: str) -> int:
    endpoints = summary["stages"][stage]["backend"]["endpoints"]
    return sum(e["requests"] for e in endpoints.values())


def _per_stage_requests(server) -> tuple[int, int]:
    ground = sum("box" in r.text.lower() for r in server.chat_requests)
    return len(server.chat_requests) - ground, ground


def test_endpoint_counts_are_per_stage(data, tmp_path):
    root, gold = data
    with FakeOpenAIServer(oracle(gold)) as server:
        text = config(root, server.base_url, tmp_path / "run", refine=True, ground=True).replace(
            "threshold = 0.4", "threshold = 0.0"
        )
        result = run_cli(["run", "-c", str(write_config(tmp_path, text))])
        assert result.code == 0, result.stderr
        refine, ground = _per_stage_requests(server)
    summary = summary_of(tmp_path / "run")
    assert refine > 0 and ground > 0
    assert _endpoint_requests(summary, "refine") == refine
    assert _endpoint_requests(summary, "ground") == ground


def test_endpoint_counts_are_real_on_the_ray_engine(data, tmp_path):
    pytest.importorskip("ray", reason="pip install 'refineg[ray]'")
    root, gold = data
    with FakeOpenAIServer(oracle(gold)) as server:
        text = config(root, server.base_url, tmp_path / "run", refine=True, ground=True).replace(
            "threshold = 0.4", "threshold = 0.0"
        )
        cfg = write_config(tmp_path, text)
        result = run_cli(
            ["run", "-c", str(cfg), "--engine", "ray", "--set", "engine.options.num_cpus=0.25"]
        )
        assert result.code == 0, result.stderr
        refine, ground = _per_stage_requests(server)
    summary = summary_of(tmp_path / "run")
    assert refine > 0 and ground > 0
    assert _endpoint_requests(summary, "refine") == refine
    assert _endpoint_requests(summary, "ground") == ground


def test_the_run_summary_and_refineg_eval_print_the_same_f1(tmp_path, capsys):
    from refineg_core.cli import print_summary
    from refineg_core.pipeline.orchestrator import Pipeline

    # 51 right, 50 wrong: MNER F1 = 100 * 51 / 101 = 50.4950..., the case where
    # rounding to 4 decimals first and then to 2 gives 50.49 instead of 50.50
    person = (Entity(0, 1, "PER", "Obama", boxes=()),)
    tokens = ("Obama", "visits", "Paris")
    gold = [Sample(f"s{i}", tokens, " ".join(tokens), entities=person) for i in range(101)]
    write_jsonl(gold, tmp_path / "gold.jsonl")
    wrong = Entity(2, 3, "PER", "Paris", boxes=())
    preds = [SampleResult(g, g.entities if i < 51 else (wrong,)) for i, g in enumerate(gold)]
    run = tmp_path / "run"
    run.mkdir()
    write_jsonl(preds, run / "predict.jsonl")
    cfg = write_config(
        tmp_path,
        f'run_dir = "{run}"\n{TWITTER_LABELS_TOML}\n'
        f'[data.predict]\npath = "{tmp_path / "gold.jsonl"}"\nformat = "jsonl"\n',
    )
    with Pipeline(load_config(cfg)) as pipe:
        pipe.evaluate_stages()
        capsys.readouterr()
        print_summary(pipe.summary)
    table = capsys.readouterr().err
    row = next(ln.split() for ln in table.splitlines() if ln.startswith("predict"))
    header = next(ln.split() for ln in table.splitlines() if ln.startswith("F1 after"))
    summary_mner = row[header.index("mner") - 1]
    result = run_cli(
        ["eval", "--gold", str(tmp_path / "gold.jsonl"), "--pred", str(run / "predict.jsonl")]
    )
    assert result.code == 0, result.stderr
    eval_mner = next(ln.split() for ln in result.stdout.splitlines() if ln.startswith("MNER"))[3]
    assert eval_mner == "50.50" and summary_mner == eval_mner


# --------------------------------------------------------------------- case 10
def test_a_saved_tagger_trained_with_other_options_is_refused(data, tmp_path):
    root, _ = data
    first = write_config(tmp_path, config(root, "http://127.0.0.1:9/v1", tmp_path / "a"), "a.toml")
    off = ["--set", "stages.refine=false", "--set", "stages.ground=false"]
    assert run_cli(["run", "-c", str(first), *off]).code == 0
    saved = tmp_path / "a" / "tagger"
    text = config(root, "http://127.0.0.1:9/v1", tmp_path / "b").replace(
        'plugin = "gazetteer"', f'plugin = "gazetteer"\nload_from = "{saved}"'
    )
    second = write_config(tmp_path, text, "b.toml")
    same = run_cli(["run", "-c", str(second), *off])
    assert same.code == 0, same.stderr

    changed = ["--set", "tagger.options.min_count=3", "--set", "tagger.options.scheme='BIOES'"]
    other = run_cli(["run", "-c", str(second), *off, *changed])
    assert other.code == 2, other.stderr
    message = " ".join(other.stderr.split())
    assert "tagger.options.min_count" in message and "tagger.options.scheme" in message
    assert "retrain" in message and "tagger.load_from" in message
    status = run_cli(["status", "-c", str(second), *changed])
    assert "fresh" not in status.stdout.splitlines()[2], status.stdout  # the train row


def test_stage_counts_are_differences_of_nested_counters_and_batches_add_up():
    from refineg_core.pipeline.spent import add, delta

    before = {"calls": 3, "endpoints": {"http://a/v1": {"requests": 3, "ok": 3}}, "model": "m"}
    after = {
        "calls": 10,
        "endpoints": {"http://a/v1": {"requests": 7, "ok": 6}, "http://b/v1": {"requests": 2}},
        "model": "m",
    }
    stage = delta(after, before)
    assert stage == {
        "calls": 7,
        "endpoints": {"http://a/v1": {"requests": 4, "ok": 3}, "http://b/v1": {"requests": 2}},
        "model": "m",
    }
    # two Ray batches of one stage: their differences add up
    assert add(stage, {"calls": 1, "endpoints": {"http://b/v1": {"requests": 1}}}) == {
        "calls": 8,
        "endpoints": {"http://a/v1": {"requests": 4, "ok": 3}, "http://b/v1": {"requests": 3}},
        "model": "m",
    }


def test_every_exception_type_gets_a_kind_and_only_the_samples_own_faults_are_forgiven():
    from refineg_core.errors import BackendError, BackendUnavailable, SampleImageError
    from refineg_core.pipeline.runner import StageSummary
    from refineg_core.pipeline.verdict import failure_kind, is_own_fault, judge

    assert failure_kind(ValueError("nan")) == "ValueError"
    assert failure_kind(OverflowError("inf")) == "OverflowError"
    assert failure_kind(BackendUnavailable("down")) == "unavailable"
    assert failure_kind(BackendError("x")) == "backend_error"
    assert failure_kind(SampleImageError("truncated")) == "image"
    assert is_own_fault("image") and is_own_fault("no_json") and is_own_fault("no_usable_item")
    assert not any(map(is_own_fault, ("ValueError", "connection", "http_400", "unavailable")))

    own = StageSummary("refine", total=5, failed=2)
    own.failure_kinds.update({"image": 1, "no_json": 1})
    assert not judge("refine", own, True).failed and judge("refine", own, True).note() is None
    theirs = StageSummary("refine", total=5, failed=1)
    theirs.failure_kinds.update({"ValueError": 1})
    theirs.counters["samples_failed_not_own"] = 1
    verdict = judge("refine", theirs, True)
    assert verdict.failed and "1 of 5 samples failed" in (verdict.note() or "")
    auto = judge("refine", theirs, False)  # "auto": a note, not a failure
    assert not auto.failed and "goes on" in (auto.note() or "")
