"""The refinement stage end to end: real OpenAIBackend, fake server on loopback, real tweets."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import pytest
from refineg_openai.testing import FakeOpenAIServer, drop, error, ok
from refineg_stages.refine import RefineSettings, apply_decision, run_refine, validate_items

from refineg_core.errors import ConfigError
from refineg_core.formats.native import read_results
from refineg_core.types import (
    SOURCE_MLLM,
    SOURCE_TAGGER,
    Entity,
    GateVerdict,
    Sample,
    SampleResult,
)
from tests.stagedata import (
    LABELS,
    ScriptedBackend,
    backend_for,
    prediction,
    query_text,
    real_samples,
    with_image,
)


def _names(result: SampleResult) -> list[tuple[str, str, str]]:
    return [(e.text, e.type, e.source) for e in result.entities]


def test_good_answer_replaces_only_delegated_entities(
    twitter_dir: Path, tmp_path: Path, server: FakeOpenAIServer
) -> None:
    sample = with_image(real_samples(twitter_dir, 1, min_entities=2)[0], tmp_path)
    first, second = sample.entities[0], sample.entities[1]
    pred = prediction(sample, uncertainty=[0.05, 0.9] + [0.05] * (len(sample.entities) - 2))
    other_type = "ORG" if second.type != "ORG" else "LOC"
    extra = next(
        t
        for t in sample.tokens
        if t.isalpha() and t[0].isupper() and not any(t in e.text.split() for e in sample.entities)
    )
    reply = json.dumps(
        [
            {"name": first.text, "type": "OTHER" if first.type != "OTHER" else "PER"},  # confident
            {"name": second.text, "type": other_type},  # the delegated one: retyped
            {"name": extra, "type": "per"},  # a missed one (type case is forgiven)
            {"name": "Nonexistent Person", "type": "PER"},  # not in the text
            {"name": extra, "type": "VEHICLE"},  # unknown type
            "just a string",
        ]
    )
    server.script(ok("Thinking about it...\n```json\n" + reply + "\n```\nDone."))
    out_path = tmp_path / "refine.jsonl"
    results, summary = run_refine([pred], backend_for(server), LABELS, RefineSettings(), out_path)
    [res] = results
    got = {(e.text, e.type): e for e in res.entities}
    # the confident entity passes through unchanged although the MLLM retyped it
    assert got[(first.text, first.type)] == pred.entities[0]
    assert got[(second.text, other_type)].source == SOURCE_MLLM
    assert (second.text, second.type) not in got
    assert got[(extra, "PER")].source == SOURCE_MLLM
    assert not res.failures
    c = summary.counters
    assert c["calls"] == 1 and c["prompt_tokens"] == 11 and c["completion_tokens"] == 7
    assert c["entities_changed"] == 1 and c["entities_added"] == 1
    assert c["entities_kept"] == len(sample.entities) - 1
    assert c["invalid_name_not_in_text"] == 1 and c["invalid_unknown_type"] == 1
    assert c["invalid_not_an_object"] == 1 and c["invalid_contradicts_confident"] == 1
    [req] = server.chat_requests
    assert req.image_urls and req.image_urls[0].startswith("data:image/jpeg;base64,")
    assert "uncertainty=0.90 (uncertain)" in req.text
    # the stage's JSONL holds the same decision, with who decided each entity
    [stored] = read_results(out_path)
    assert _names(stored) == _names(res)
    assert stored.sample.meta["refine"]["entities_changed"] == 1


def test_not_delegated_samples_make_no_call(
    twitter_dir: Path, tmp_path: Path, server: FakeOpenAIServer
) -> None:
    samples = real_samples(twitter_dir, 6)
    preds = [
        prediction(s, uncertainty=[0.9 if i == 2 else 0.1] * len(s.entities))
        for i, s in enumerate(samples)
    ]
    server.default = ok("[]")
    results, summary = run_refine(
        preds, backend_for(server), LABELS, RefineSettings(), tmp_path / "r.jsonl"
    )
    assert len(server.chat_requests) == 1
    assert query_text(server.chat_requests[0].text) == samples[2].text
    assert summary.counters["not_delegated"] == 5
    for i, (pred, res) in enumerate(zip(preds, results, strict=True)):
        if i != 2:
            assert res == pred and res.entities == pred.entities
    # "[]" from the MLLM drops the delegated entities of sample 2 (its decision)
    assert results[2].entities == ()
    assert summary.counters["entities_dropped"] == len(samples[2].entities)


def test_missed_entity_sample_is_sent_and_can_gain_entities(
    twitter_dir: Path, tmp_path: Path, server: FakeOpenAIServer
) -> None:
    sample = real_samples(twitter_dir, 1, min_entities=1)[0]
    bare = attrs.evolve(sample, entities=())
    pred = prediction(bare, uncertainty=[], missed=0.8)
    target = sample.entities[0]
    server.script(ok(json.dumps([{"name": target.text, "type": target.type}])))
    [res], summary = run_refine(
        [pred], backend_for(server), LABELS, RefineSettings(), tmp_path / "r.jsonl"
    )
    assert [(e.start, e.end, e.type, e.source) for e in res.entities] == [
        (target.start, target.end, target.type, SOURCE_MLLM)
    ]
    # no image file on disk: a text-only prompt, never a dangling image
    assert server.chat_requests[0].image_urls == []
    assert summary.counters["entities_added"] == 1


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        (ok("I am not sure what you mean."), "no_json"),
        (ok('[{"name": "Ted'), "truncated"),
        (ok('[{"name" "Ted" "type": PER}]'), "invalid_json"),
        (error(400, "prompt too long for context"), "http_400"),
        (error(500), "http_500"),
        (drop(), "connection"),
    ],
    ids=["prose", "truncated", "bad-json", "400", "500", "drop"],
)
def test_failures_keep_the_tagger_prediction(
    twitter_dir: Path, tmp_path: Path, server: FakeOpenAIServer, reply, kind: str
) -> None:
    samples = real_samples(twitter_dir, 3)
    preds = [prediction(s, uncertainty=[0.9] * len(s.entities)) for s in samples]
    bad = samples[1].text
    server.responder = lambda req: reply if query_text(req.text) == bad else ok("[]")
    results, summary = run_refine(
        preds, backend_for(server, retries=1), LABELS, RefineSettings(), tmp_path / "r.jsonl"
    )
    res = results[1]
    assert res.entities == preds[1].entities  # every entity, unchanged, still "tagger"
    assert all(e.source == SOURCE_TAGGER for e in res.entities)
    [failure] = res.failures
    assert failure.stage == "refine" and failure.kind == kind
    assert summary.failed == 1 and summary.failure_kinds[kind] == 1
    if kind == "http_400":
        assert "prompt too long for context" in failure.message
        assert sum(query_text(r.text) == bad for r in server.chat_requests) == 1  # no retry
    if kind in ("http_500", "connection"):
        assert sum(query_text(r.text) == bad for r in server.chat_requests) == 2  # one retry
    stored = {r.id: r for r in read_results(tmp_path / "r.jsonl")}
    assert stored[samples[1].id].failures == (failure,)
    assert len(stored[samples[1].id].entities) == len(samples[1].entities)


def test_truncated_answer_uses_complete_items_and_keeps_the_rest(
    twitter_dir: Path, tmp_path: Path, server: FakeOpenAIServer
) -> None:
    sample = real_samples(twitter_dir, 1, min_entities=2)[0]
    pred = prediction(sample, uncertainty=[0.9] * len(sample.entities))
    first = sample.entities[0]
    new_type = "OTHER" if first.type != "OTHER" else "ORG"
    server.script(
        ok(
            json.dumps([{"name": first.text, "type": new_type}])[:-1]
            + ', {"name": "'
            + sample.entities[1].text[:2]
        )
    )
    [res], summary = run_refine(
        [pred], backend_for(server), LABELS, RefineSettings(), tmp_path / "r.jsonl"
    )
    assert (first.text, new_type, SOURCE_MLLM) in _names(res)
    for e in pred.entities[1:]:
        assert e in res.entities  # never reached by the answer: kept as the tagger had it
    assert [f.kind for f in res.failures] == ["truncated"]
    assert summary.counters["answers_truncated"] == 1


def test_resume_skips_finished_samples(
    twitter_dir: Path, tmp_path: Path, server: FakeOpenAIServer
) -> None:
    samples = real_samples(twitter_dir, 8)
    preds = [prediction(s, uncertainty=[0.9] * len(s.entities)) for s in samples]
    out = tmp_path / "r.jsonl"
    server.default = ok("[]")
    run_refine(preds[:5], backend_for(server), LABELS, RefineSettings(), out)
    assert len(server.chat_requests) == 5
    # a killed run leaves a torn last line behind
    with out.open("a") as fh:
        fh.write('{"id": "torn", "tok')
    server.reset()
    results, summary = run_refine(preds, backend_for(server), LABELS, RefineSettings(), out)
    asked = {query_text(r.text) for r in server.chat_requests}
    assert asked == {s.text for s in samples[5:]}
    assert summary.resumed == 5 and summary.processed == 3
    assert [r.id for r in results] == [s.id for s in samples]
    assert len(read_results(out)) == 8


def test_concurrency_stays_within_the_limit(
    twitter_dir: Path, tmp_path: Path, server: FakeOpenAIServer
) -> None:
    samples = real_samples(twitter_dir, 12)
    preds = [prediction(s, uncertainty=[0.9] * len(s.entities)) for s in samples]
    server.latency = 0.15
    server.default = ok("[]")
    run_refine(
        preds, backend_for(server, concurrency=3), LABELS, RefineSettings(), tmp_path / "r.jsonl"
    )
    assert len(server.chat_requests) == 12
    assert 2 <= server.max_in_flight <= 3


def test_unavailable_backend_skips_and_says_why(
    twitter_dir: Path, tmp_path: Path, server: FakeOpenAIServer
) -> None:
    samples = real_samples(twitter_dir, 4)
    preds = [
        prediction(s, uncertainty=[0.9 if i % 2 else 0.1] * len(s.entities))
        for i, s in enumerate(samples)
    ]
    out = tmp_path / "r.jsonl"
    dead = backend_for(server, model="not-served-model")
    results, summary = run_refine(preds, dead, LABELS, RefineSettings(), out)
    assert server.chat_requests == []
    assert [r.entities for r in results] == [p.entities for p in preds]
    d = summary.as_dict()
    assert d["requests_skipped"] == 2
    assert "not-served-model" in d["unavailable"] and d["backend"] == dead.describe()
    assert len(read_results(out)) == 4  # outputs stay valid
    # once the server is there, a rerun does the delegated samples for real
    server.default = ok("[]")
    results, summary = run_refine(preds, backend_for(server), LABELS, RefineSettings(), out)
    assert len(server.chat_requests) == 2
    # only the two that needed a call are retried; the other two are resumed as they were
    assert summary.counters["retried_from_last_run"] == 2 and summary.resumed == 2
    assert results[1].entities == ()


def test_disabled_stage_passes_through(twitter_dir: Path, tmp_path: Path) -> None:
    samples = real_samples(twitter_dir, 2)
    preds = [prediction(s, uncertainty=[0.9] * len(s.entities)) for s in samples]
    backend = ScriptedBackend(lambda req: "[]")
    results, summary = run_refine(
        preds, backend, LABELS, RefineSettings(enabled=False), tmp_path / "r.jsonl"
    )
    assert backend.requests == [] and summary.counters["requests_skipped"] == 2
    assert [r.entities for r in results] == [p.entities for p in preds]


def test_release_policy_delegates_every_sample_with_entities(
    twitter_dir: Path, tmp_path: Path
) -> None:
    samples = real_samples(twitter_dir, 5, min_entities=0)
    preds = [prediction(s) for s in samples]  # the gate keeps everything
    backend = ScriptedBackend(lambda req: "[]")
    run_refine(preds, backend, LABELS, RefineSettings(), tmp_path / "gate.jsonl")
    assert backend.requests == []
    run_refine(preds, backend, LABELS, RefineSettings(delegate="entities"), tmp_path / "all.jsonl")
    assert len(backend.requests) == sum(1 for s in samples if s.entities)


def test_text_only_backend_gets_text_only_prompt(twitter_dir: Path, tmp_path: Path) -> None:
    sample = with_image(real_samples(twitter_dir, 1)[0], tmp_path)
    pred = prediction(sample, uncertainty=[0.9] * len(sample.entities))
    backend = ScriptedBackend(lambda req: "[]", images=False)
    run_refine([pred], backend, LABELS, RefineSettings(), tmp_path / "r.jsonl")
    [req] = backend.requests
    assert not req.has_images and sample.text in req.messages[0].parts[0].text


def test_validation_on_word_boundaries() -> None:
    tokens = ("Parisian", "food", "in", "Paris", "and", "New", "York", "Times")
    kept = [Entity(3, 4, "LOC", "Paris", source=SOURCE_TAGGER)]
    items = [
        {"name": "Paris", "type": "LOC"},  # repeats the confident entity: fine
        {"name": "Pari", "type": "LOC"},  # not a whole token
        {"name": "New York Times", "type": "ORG"},
        {"name": "New York", "type": "LOC"},  # inside the longer accepted name
        {"name": "new  york times", "type": "ORG"},  # same item again
        {"entity": "food", "label": "OTHER"},  # alternative keys
        {"name": "", "type": "PER"},
    ]
    decision = validate_items(items, tokens, kept, LABELS)
    assert decision.spans == ((1, 2, "OTHER"), (5, 8, "ORG"))
    assert decision.invalid == {"name_not_in_text": 1, "overlaps_other_item": 1, "missing_field": 1}


def test_every_sample_survives_a_crashing_backend(tmp_path: Path) -> None:
    def boom(req):
        raise RuntimeError("segfault in the model")

    sample = Sample("x", ("Obama",), "Obama")
    pred = SampleResult(
        sample,
        (Entity(0, 1, "PER", "Obama", source=SOURCE_TAGGER),),
        gate=GateVerdict(True, 0.0, frozenset({(0, 1, "PER")})),
    )
    [res], summary = run_refine(
        [pred], ScriptedBackend(boom), LABELS, RefineSettings(), tmp_path / "r.jsonl"
    )
    assert res.entities == pred.entities
    assert res.failures[0].kind == "RuntimeError" and summary.failed == 1


@pytest.mark.parametrize(
    "answer",
    [
        [{"name": "{first}", "type": "POLITICIAN"}],  # type outside the label set
        [["{first}", "PER"], "PER", 3, None],  # items of the wrong JSON shape
        [{"name": "Nobody Atall", "type": "PER"}],  # names not in the text
        [{"name": "{first}"}, {"type": "PER"}],  # a field missing in each
    ],
    ids=["unknown-types", "wrong-shapes", "names-not-in-text", "missing-fields"],
)
def test_answer_with_no_usable_item_is_a_failure_that_keeps_the_tagger(
    twitter_dir: Path, tmp_path: Path, server: FakeOpenAIServer, answer: list
) -> None:
    samples = real_samples(twitter_dir, 4)
    preds = [prediction(s, uncertainty=[0.9] * len(s.entities)) for s in samples]
    text = json.dumps(answer)
    server.responder = lambda req: ok(
        text.replace(
            "{first}", next(s for s in samples if s.text == query_text(req.text)).entities[0].text
        )
    )
    results, summary = run_refine(
        preds,
        backend_for(server),
        LABELS,
        RefineSettings(delegate="entities"),
        tmp_path / "r.jsonl",
    )
    for pred, res in zip(preds, results, strict=True):
        assert res.entities == pred.entities  # nothing lost, nothing changed
        [failure] = res.failures
        assert failure.kind == "no_usable_item" and "kept" in failure.message
    assert summary.failed == len(preds)
    assert summary.counters["answers_without_usable_item"] == len(preds)


def test_empty_list_is_still_a_legitimate_no_entities(
    twitter_dir: Path, tmp_path: Path, server: FakeOpenAIServer
) -> None:
    [sample] = real_samples(twitter_dir, 1)
    pred = prediction(sample, uncertainty=[0.9] * len(sample.entities))
    server.script(ok("No named entities here.\n[]"))
    [res], summary = run_refine(
        [pred], backend_for(server), LABELS, RefineSettings(), tmp_path / "r.jsonl"
    )
    assert res.entities == () and not res.failures and summary.failed == 0


def test_type_names_written_out_are_understood(
    twitter_dir: Path, tmp_path: Path, server: FakeOpenAIServer
) -> None:
    sample = real_samples(twitter_dir, 1, min_entities=2)[0]
    pred = prediction(sample, uncertainty=[0.9] * len(sample.entities))
    spoken = {"PER": "Person", "ORG": "Organisation", "LOC": "place", "OTHER": "Miscellaneous"}
    server.script(
        ok(json.dumps([{"name": e.text, "type": spoken[e.type]} for e in sample.entities]))
    )
    [res], summary = run_refine(
        [pred], backend_for(server), LABELS, RefineSettings(), tmp_path / "r.jsonl"
    )
    assert [(e.key, e.source) for e in res.entities] == [
        (e.key, SOURCE_MLLM) for e in sample.entities
    ]
    assert summary.counters["entities_confirmed"] == len(sample.entities)
    assert "invalid_unknown_type" not in summary.counters


def test_configured_type_synonyms(tmp_path: Path, server: FakeOpenAIServer) -> None:
    sample = Sample("s", ("Ate", "at", "Nandos", "today"), "Ate at Nandos today")
    pred = SampleResult(
        sample,
        (Entity(2, 3, "ORG", "Nandos", source=SOURCE_TAGGER),),
        gate=GateVerdict(True, 0.0, frozenset({(2, 3, "ORG")})),
    )
    server.default = ok('[{"name": "Nandos", "type": "restaurant chain"}]')
    [plain], _ = run_refine(
        [pred], backend_for(server), LABELS, RefineSettings(), tmp_path / "a.jsonl"
    )
    assert plain.failures[0].kind == "no_usable_item" and plain.entities == pred.entities
    settings = RefineSettings(type_synonyms={"ORG": ["Restaurant chain", "brand"]})
    [res], _ = run_refine([pred], backend_for(server), LABELS, settings, tmp_path / "b.jsonl")
    assert not res.failures and res.entities[0].source == SOURCE_MLLM
    with pytest.raises(ConfigError, match=r"refine\.type_synonyms"):
        run_refine(
            [pred],
            backend_for(server),
            LABELS,
            RefineSettings(type_synonyms={"FOOD": ["meal"]}),
            tmp_path / "c.jsonl",
        )


def test_item_with_unreadable_type_keeps_the_delegated_entity_it_names() -> None:
    sample = Sample("s", ("Obama", "met", "NASA"), "Obama met NASA")
    pred = SampleResult(
        sample,
        (
            Entity(0, 1, "PER", "Obama", source=SOURCE_TAGGER),
            Entity(2, 3, "ORG", "NASA", source=SOURCE_TAGGER),
        ),
    )
    delegated = frozenset({(0, 1, "PER"), (2, 3, "ORG")})
    decision = validate_items(
        [{"name": "Obama", "type": "Politician"}, {"name": "NASA", "type": "ORG"}],
        sample.tokens,
        [],
        LABELS,
    )
    assert decision.usable == 1 and decision.unread == ((0, 1),)
    entities, counts = apply_decision(pred, delegated, decision)
    assert [e.text for e in entities] == ["Obama", "NASA"]
    assert counts["entities_kept_unread_type"] == 1 and counts["entities_confirmed"] == 1
