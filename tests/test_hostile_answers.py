"""The hostile answers and servers of tests/hostile/answers/cases.json, through the
real refine and ground stages, the real OpenAI backend and a fake server on loopback.

Each case is one server behaviour or answer text (listed in CONTRIBUTING.md,
"Hostile inputs: MLLM answers and servers"). Alone, each must end as its
expected failure kind with every entity kept, within the deadline, and with
the API key (read from the environment) and a key in ``extra_body`` nowhere
in what was written. Then all of them at once: 10% of the samples of a run
hit a fault, and the run still keeps every tagger entity and records every
fault.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import attrs
import pytest
from refineg_openai.testing import (
    FakeOpenAIServer,
    RecordedRequest,
    Reply,
    drop,
    error,
    garbage,
    ok,
    reset,
    stall,
    trickle,
)
from refineg_stages.ground import GroundSettings, run_ground
from refineg_stages.refine import RefineSettings, run_refine

from refineg_core import secrets
from refineg_core.mllm_cache import CachedBackend
from refineg_core.types import Sample, SampleResult
from tests.stagedata import (
    LABELS,
    backend_for,
    prediction,
    query_text,
    real_samples,
    with_image,
)

CASES: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "hostile" / "answers" / "cases.json").read_text(encoding="utf-8")
)
KEY = "sk-hostile-7f3a9c2e5b1d"
BODY_KEY = "body-secret-4e8d2a6c"
#: Each call's total deadline: far above what a well-behaved call takes on a loaded
#: machine (at load 15 on 2 cores a good ground call, image and all, once passed a
#: deadline of 1.5 s and failed) and far below how long a hostile reply holds its
#: request (``HANG``), so "cut at the deadline, not waited out" stays a sharp check.
DEADLINE = 5.0
#: How long the stalled and the trickled reply would hold a request if not cut.
HANG = 60.0
#: The most one sample's stage may take (its call cut at the deadline, and time
#: for the rest), and a run of 120 with 12 faults, 8 calls at a time.
SINGLE_BOUND = DEADLINE + 4.0
MIXED_BOUND = 2 * DEADLINE + 20.0
#: The trickled reply: a correct answer padded (JSON whitespace) to last ``HANG``.
TRICKLED = '[{"name": "x", "type": "PER"}]'
SPOKEN = {"PER": "Person", "ORG": "Organisation", "LOC": "place", "OTHER": "miscellaneous"}


def _cases(stage: str) -> list[dict[str, Any]]:
    return [c for c in CASES if stage in c["stages"]]


def _fill(text: str, sample: Sample, req: RecordedRequest) -> str:
    first = sample.entities[0]
    other = next(t for t in LABELS.types if t != first.type)
    every = ", ".join(json.dumps({"name": e.text, "type": e.type}) for e in sample.entities)
    return (
        text.replace("{all_items}", every)
        .replace("{name}", first.text)
        .replace("{type}", first.type)
        .replace("{other_type}", other)
        .replace("{auth}", req.headers.get("authorization", ""))
    )


def reply_for(case: dict[str, Any], sample: Sample, req: RecordedRequest) -> Reply:
    """The fake server's reply for ``case`` to a request about ``sample``."""
    spec = case.get("reply")
    if spec is not None:
        if "error" in spec:
            message = _fill(spec["message"], sample, req)
            return error(spec["error"], message, retry_after=spec.get("retry_after"))
        if spec.get("drop"):
            return drop()
        if spec.get("reset"):
            return reset()
        if "stall" in spec:
            return stall("[]", spec["stall"])
        if "trickle" in spec:
            padding = " " * int(HANG / spec["trickle"] - len(TRICKLED) + 1)
            return trickle(TRICKLED + padding, spec["trickle"])
        if spec.get("garbage"):
            return garbage()
        if "raw" in spec:
            return Reply(raw_body=spec["raw"].encode())
        raise AssertionError(f"unknown reply in case {case['id']}")
    answer = case["answer"]
    if answer is None:
        return Reply(text=None)
    if isinstance(answer, dict) and answer.get("spoken_types"):
        return ok(json.dumps([{"name": e.text, "type": SPOKEN[e.type]} for e in sample.entities]))
    if isinstance(answer, dict):
        body = answer.get("prefix", "") + answer["repeat"] * answer["times"]
        return ok(_fill(body + answer.get("suffix", ""), sample, req))
    return ok(_fill(answer, sample, req))


def good_reply(stage: str, sample: Sample) -> Reply:
    """A well-behaved answer: the tagger's entities confirmed, or a box each."""
    if stage == "refine":
        return ok(json.dumps([{"name": e.text, "type": e.type} for e in sample.entities]))
    return ok(
        json.dumps(
            [{"entity": e.text, "type": e.type, "boxes": [[4, 4, 40, 40]]} for e in sample.entities]
        )
    )


def hostile_backend(server: FakeOpenAIServer, cache: Path, **kw):
    inner = backend_for(
        server,
        api_key_env="REFINEG_HOSTILE_KEY",
        deadline=DEADLINE,
        max_answer_bytes=131072,
        extra_body={"api_key": BODY_KEY},
        concurrency=8,
        **kw,
    )
    return CachedBackend(inner, cache)


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("REFINEG_HOSTILE_KEY", KEY)
    yield
    secrets.forget_all()


def _assert_no_secret(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_text(encoding="utf-8", errors="replace")
            assert KEY not in data and BODY_KEY not in data, path


def _inputs(stage: str, samples: list[Sample], folder: Path) -> list[SampleResult]:
    if stage == "refine":
        return [prediction(s, uncertainty=[0.9] * len(s.entities)) for s in samples]
    return [
        SampleResult(
            with_image(s, folder, i),
            tuple(attrs.evolve(e, boxes=(), source="tagger") for e in s.entities),
        )
        for i, s in enumerate(samples)
    ]


def _run(stage: str, inputs: list[SampleResult], backend, out: Path):
    if stage == "refine":
        return run_refine(inputs, backend, LABELS, RefineSettings(), out)
    return run_ground(inputs, [], None, backend, LABELS, GroundSettings(k=0), out)


def test_a_hang_lasts_far_beyond_every_time_bound() -> None:
    """The time bounds below prove a hang was cut only while a hang that was waited
    out would break them: each stalled or trickled reply lasts at least ``HANG``."""
    hanging = [
        c["reply"]
        for c in CASES
        if c.get("reply") and ("stall" in c["reply"] or "trickle" in c["reply"])
    ]
    assert len(hanging) == 2
    for spec in hanging:
        if "stall" in spec:
            assert spec["stall"] >= HANG
        else:
            body = len(TRICKLED) + int(HANG / spec["trickle"] - len(TRICKLED) + 1)
            assert body * spec["trickle"] >= HANG
    assert max(SINGLE_BOUND, MIXED_BOUND) <= HANG / 2


def test_the_corpus_is_large_and_documented() -> None:
    ids = [c["id"] for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 20
    table = (Path(__file__).parents[1] / "CONTRIBUTING.md").read_text(encoding="utf-8")
    section = table.split("## Hostile inputs: MLLM answers and servers", 1)[1]
    missing = [i for i in ids if f"`{i}`" not in section]
    assert not missing, f"cases missing from the CONTRIBUTING.md table: {missing}"


@pytest.mark.parametrize(
    ("case", "stage"),
    [(c, stage) for c in CASES for stage in c["stages"]],
    ids=[f"{c['id']}-{stage}" for c in CASES for stage in c["stages"]],
)
def test_each_hostile_case(
    case: dict[str, Any], stage: str, twitter_dir: Path, tmp_path: Path, server: FakeOpenAIServer
) -> None:
    [sample] = real_samples(twitter_dir, 1, min_entities=2)
    [inp] = _inputs(stage, [sample], tmp_path / "img")
    server.responder = lambda req: reply_for(case, sample, req)
    t0 = time.perf_counter()
    [res], summary = _run(
        stage, [inp], hostile_backend(server, tmp_path / "cache"), tmp_path / f"{stage}.jsonl"
    )
    took = time.perf_counter() - t0
    assert took < SINGLE_BOUND, f"{case['id']} took {took:.1f}s"  # a hang lasts HANG
    kinds = [f.kind for f in res.failures]
    keys = [e.key for e in inp.entities]
    if case["failure"] is None:
        assert kinds == []
        assert [e.span for e in res.entities] == [e.span for e in inp.entities]
    else:
        assert kinds == [case["failure"]], (case["id"], res.failures)
        if case.get("partial"):
            assert {e.span for e in inp.entities} <= {e.span for e in res.entities}
        else:
            assert [e.key for e in res.entities] == keys  # every entity, unchanged
            assert res.entities == inp.entities
        assert summary.failed == 1
    if stage == "ground" and case["failure"] is not None:
        assert all(e.grounded_by is None for e in res.entities)  # never "not groundable"
    _assert_no_secret(tmp_path)


@pytest.mark.parametrize("stage", ["refine", "ground"])
def test_ten_percent_mixed_faults_lose_nothing(
    stage: str, twitter_dir: Path, tmp_path: Path, server: FakeOpenAIServer
) -> None:
    """Done-when of issue 9: under 10% mixed faults every entity survives and every
    fault is a recorded failure of its kind; nothing hangs past the deadline."""
    samples = real_samples(twitter_dir, 120, min_entities=1)
    cases = _cases(stage)
    offset = 0 if stage == "refine" else 5
    faulty = {
        s.text: cases[(i // 10 + offset) % len(cases)] for i, s in enumerate(samples) if i % 10 == 3
    }
    by_text = {s.text: s for s in samples}

    def respond(req: RecordedRequest) -> Reply:
        sample = by_text[query_text(req.text)]
        case = faulty.get(sample.text)
        return reply_for(case, sample, req) if case else good_reply(stage, sample)

    server.responder = respond
    inputs = _inputs(stage, samples, tmp_path / "img")
    t0 = time.perf_counter()
    results, summary = _run(
        stage, inputs, hostile_backend(server, tmp_path / "cache"), tmp_path / f"{stage}.jsonl"
    )
    took = time.perf_counter() - t0
    assert len(results) == len(inputs)
    expected_failures = 0
    for inp, res in zip(inputs, results, strict=True):
        case = faulty.get(inp.sample.text)
        # every tagger entity is still there (same span) whatever happened
        assert {e.span for e in inp.entities} <= {e.span for e in res.entities}
        if case is None or case["failure"] is None:
            assert res.failures == (), (inp.id, res.failures)
        else:
            expected_failures += 1
            assert [f.kind for f in res.failures] == [case["failure"]], (case["id"], res.failures)
    assert (
        summary.failed
        == expected_failures
        == len(faulty) - sum(c["failure"] is None for c in faulty.values())
    )
    # 12 faulty samples, 8 at a time: hangs are cut at the deadline, not waited out
    assert took < MIXED_BOUND, took
    _assert_no_secret(tmp_path)


def test_refine_run_survives_a_replica_killed_mid_run(twitter_dir: Path, tmp_path: Path) -> None:
    """Issue 10 item 4: two endpoints, one killed mid-run: no sample lost, the run
    finishes on the other, and the per-endpoint counts say so."""
    samples = real_samples(twitter_dir, 60, min_entities=1)
    by_text = {s.text: s for s in samples}
    # 60 calls x 0.2 s over 6 workers: ~2 s, and stopping a server takes up to 0.5 s
    one = FakeOpenAIServer(latency=0.2).start()
    two = FakeOpenAIServer(latency=0.2).start()
    served_by_one = []
    dead = threading.Event()

    def respond_one(req: RecordedRequest) -> Reply:
        served_by_one.append(req)
        if len(served_by_one) == 8:  # the replica dies while requests are in flight:
            dead.set()  # what reaches it now gets its connection closed, and it stops
            threading.Thread(target=one.stop, daemon=True).start()
        if dead.is_set():
            return drop()
        return good_reply("refine", by_text[query_text(req.text)])

    one.responder = respond_one
    two.responder = lambda req: good_reply("refine", by_text[query_text(req.text)])
    try:
        backend = backend_for(
            one, base_url=[one.base_url, two.base_url], concurrency=6, retries=2, endpoint_rest=60
        )
        inputs = _inputs("refine", samples, tmp_path)
        results, summary = run_refine(
            inputs, backend, LABELS, RefineSettings(), tmp_path / "refine.jsonl"
        )
    finally:
        one.stop()
        two.stop()
    assert len(results) == 60 and summary.failed == 0
    for inp, res in zip(inputs, results, strict=True):
        assert res.failures == ()
        assert [e.key for e in res.entities] == [e.key for e in inp.entities]
    stats = backend.endpoint_stats()
    assert stats[one.base_url]["failed"] >= 1, (stats, len(served_by_one), summary.counters)
    assert stats[one.base_url]["rested"] >= 1
    assert stats[two.base_url]["ok"] >= 60 - stats[one.base_url]["ok"]
    assert len(two.chat_requests) > len(one.chat_requests)
