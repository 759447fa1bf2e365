"""The ``llm`` synthesizer and ``run_synthesis``: prompt, robust parsing, validation, resuming.

A scripted in-test text backend stands in for the LLM where the point is the
parser or the validator (garbage, wrong types, names not in the text,
duplicates, truncated JSON); one test runs the real local SmolLM2 backend.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

import pytest
from refineg_formats.conll_read import read_conll
from refineg_llm_synth.parsing import UnparsableAnswer, parse_samples
from refineg_llm_synth.synthesizer import LLMSynthesizer
from refineg_stages.synth import (
    NAME_NOT_IN_TEXT,
    SynthSettings,
    check_candidate,
    run_synthesis,
)

from refineg_core.chat import ChatRequest, ChatResponse, Usage
from refineg_core.errors import BackendError
from refineg_core.formats import load_dataset, read_jsonl
from refineg_core.interfaces import MLLMBackend
from refineg_core.labels import LabelSet
from refineg_core.types import Entity, Sample, SynthesisCandidate

CCKS_LABELS = LabelSet(
    {
        "vehicle": "a specific land vehicle model or class, e.g. PUMA, Leopard 2",
        "aircraft": "a specific aircraft model or class, e.g. Boeing E-3, Tornado",
        "vessel": "a specific ship or ship class, e.g. USS Nimitz",
        "weapon": "a specific weapon model, e.g. AK-47, Patriot",
        "location": "a named place, e.g. Baltic Sea, Ramstein",
        "other": "another specific named military entity, e.g. a named unit or exercise",
    }
)


class ScriptedBackend(MLLMBackend):
    """A text backend whose answer is computed from the request by a test function."""

    supports_images = False

    def __init__(
        self, answer: Callable[[ChatRequest], str], concurrency: int = 1, delay: float = 0.0
    ) -> None:
        super().__init__()
        self.answer = answer
        self.concurrency = concurrency
        self.delay = delay
        self.requests: list[ChatRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()

    @property
    def max_concurrency(self) -> int:
        return self.concurrency

    def complete(self, request: ChatRequest) -> ChatResponse:
        with self._lock:
            self.requests.append(request)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            time.sleep(self.delay)
            return ChatResponse(self.answer(request), Usage(10, 20), model="scripted")
        finally:
            with self._lock:
                self.in_flight -= 1


def seed_of(request: ChatRequest) -> dict:
    user = request.messages[-1].parts[0].text
    return json.loads(user.split("Seed sample:\n", 1)[1].split("\n", 1)[0])


def synth(**options) -> LLMSynthesizer:
    return LLMSynthesizer(LLMSynthesizer.Options(**options), CCKS_LABELS)


PUMA = Sample(
    "s1",
    ("Soldiers", "test", "the", "PUMA", "."),
    "Soldiers test the PUMA .",
    entities=(Entity(3, 4, "vehicle", "PUMA"),),
)


def test_prompt_has_types_rule_seed_and_counts():
    req = synth(n_rewrites=7, n_new=4).build_request(PUMA)
    system, user = (m.parts[0].text for m in req.messages)
    assert "vehicle: a specific land vehicle" in system and "aircraft" in system
    assert "never tag generic nouns such as gun, air base, soldier" in system.lower()
    assert seed_of(req) == {
        "text": "Soldiers test the PUMA .",
        "entity": [{"name": "PUMA", "type": "vehicle"}],
    }
    assert "(a) 7 " in user and "(b) 4 " in user
    assert not req.has_images and req.temperature == 0.1 and req.purpose == "synth"


def test_seed_without_entities_asks_for_entityless_rewrites_only():
    empty = Sample("s0", ("A", "soldier", "waits", "."), "A soldier waits .")
    user = synth(n_rewrites=5, n_new=3).build_request(empty).messages[-1].parts[0].text
    assert "no specific named entity" in user and "(a) 5 " in user and "(b)" not in user
    user2 = synth(n_new=3, new_for_empty_seeds=True).build_request(empty).messages[-1].parts[0].text
    assert "(b) 3 " in user2


@pytest.mark.parametrize(
    "answer",
    [
        '```json\n[{"text": "The PUMA drove .", '
        '"entity": [{"name": "PUMA", "type": "vehicle"}]}]\n```',
        'Sure! Here you go:\n[{"text": "The PUMA drove .", "entity": [{"name": "PUMA", '
        '"type": "vehicle"}]}]\nI hope this helps. {not json}',
        '{"sentences": [{"text": "The PUMA drove .", "entities": [["PUMA", "vehicle"]]}]}',
    ],
)
def test_parse_fenced_bare_prose_and_nested(answer):
    assert parse_samples(answer) == [("The PUMA drove .", (("PUMA", "vehicle"),))]


def test_parse_truncated_list_keeps_complete_items():
    answer = (
        '[{"text": "A", "entity": []}, {"text": "The PUMA drove .", "entity": '
        '[{"name": "PUMA", "type": "vehicle"}]}, {"text": "The Leopard 2 fi'
    )
    assert [t for t, _ in parse_samples(answer)] == ["A", "The PUMA drove ."]


def test_parse_keeps_malformed_entities_for_validation_to_count():
    got = parse_samples('[{"text": "x y", "entity": [{"name": 3}, "PUMA"]}]')
    assert got == [("x y", (("", ""), ("", "")))]


@pytest.mark.parametrize("garbage", ["I cannot help with that.", "", "[1, 2, 3]", '{"a": 1}'])
def test_unparsable_answer_is_a_retryable_backend_error(garbage):
    with pytest.raises(UnparsableAnswer) as info:
        parse_samples(garbage)
    assert isinstance(info.value, BackendError) and info.value.kind == "unparsable"
    assert info.value.retryable


def test_synthesize_labels_rewrites_and_new():
    answer = json.dumps(
        [
            {"text": "A PUMA crossed the river .", "entity": [{"name": "PUMA", "type": "vehicle"}]},
            {
                "text": "A Leopard 2 crossed the river .",
                "entity": [{"name": "Leopard 2", "type": "vehicle"}],
            },
        ]
    )
    cands = synth().synthesize(PUMA, ScriptedBackend(lambda r: answer))
    assert [(c.kind, c.seed_id) for c in cands] == [("rewrite", "s1"), ("new", "s1")]


@pytest.mark.parametrize(
    ("text", "entities", "expected"),
    [
        ("", (), "empty_text"),
        ("The PUMA moved .", (("PUMA", "tank"),), "unknown_type"),
        ("The PUMA moved .", (("Leopard", "vehicle"),), NAME_NOT_IN_TEXT),
        ("A shotgun was fired .", (("gun", "weapon"),), NAME_NOT_IN_TEXT),  # word boundaries
        ("The PUMA moved .", (("PUMA", "vehicle"), ("puma", "aircraft")), "conflicting_types"),
        ("The PUMA moved .", (("", "vehicle"),), "malformed_entity"),
    ],
)
def test_check_candidate_reasons(text, entities, expected):
    assert check_candidate(SynthesisCandidate(text, entities), CCKS_LABELS) == expected


def test_check_candidate_tags_like_the_readers():
    tokens, ents = check_candidate(
        SynthesisCandidate(
            "The Boeing E-3 met the Boeing E-3 near Ramstein .",
            (("Boeing E-3", "Aircraft"), ("Ramstein", "location")),
        ),
        CCKS_LABELS,
    )
    assert tokens[:3] == ("The", "Boeing", "E-3")
    assert [(e.start, e.end, e.type) for e in ents] == [
        (1, 3, "aircraft"),
        (5, 7, "aircraft"),
        (8, 9, "location"),
    ]


def scripted_answer(request: ChatRequest) -> str:
    """Per seed: a valid rewrite, its duplicate, the seed itself, a bad type, a missing name,
    and an entity-less sentence (dropped only when the seed has entities)."""
    seed = seed_of(request)
    ents = seed["entity"]
    rewrite = "Yesterday , " + seed["text"]
    return (
        "```json\n"
        + json.dumps(
            [
                {"text": rewrite, "entity": ents},
                {"text": rewrite.upper(), "entity": ents},  # duplicate up to case
                {"text": seed["text"], "entity": ents},  # duplicate of the seed
                {"text": "The Zumwalt sailed .", "entity": [{"name": "Zumwalt", "type": "boat"}]},
                {"text": "Nothing named here .", "entity": [{"name": "Gepard", "type": "vehicle"}]},
                {"text": "An untagged Eurofighter flew by .", "entity": []},
            ]
        )
        + "\n```"
    )


def test_run_synthesis_validates_dedupes_and_writes(ccks_dir, tmp_path):
    seeds = load_dataset(ccks_dir / "gold-500.conll").samples[:8]
    backend = ScriptedBackend(scripted_answer, concurrency=3, delay=0.05)
    report = run_synthesis(seeds, synth(), backend, CCKS_LABELS, SynthSettings(), tmp_path)
    assert report.requests == len(backend.requests) == 8
    assert backend.max_in_flight > 1  # seeds ran concurrently through the backend
    with_ents = sum(1 for s in seeds if s.entities)
    assert 0 < with_ents < 8
    assert report.generated == 48
    duplicates = 8 + (8 - with_ents - 1)  # upper-cased rewrites + repeated entity-less one
    assert report.dropped == {
        "duplicate": duplicates,
        "duplicate_of_seed": 8,
        "unknown_type": 8,
        NAME_NOT_IN_TEXT: 8,
        "no_entities_from_entity_seed": with_ents,
    }
    # one rewrite per seed, plus the entity-less sentence once (from an entity-less seed;
    # the other entity-less seeds' copies are duplicates of it)
    assert report.kept == 9 and report.kept_by_kind == {"rewrite": 9}
    conll = read_conll(tmp_path / "synthetic.conll").samples
    native = read_jsonl(tmp_path / "synthetic.jsonl").samples
    assert [s.tokens for s in conll] == [s.tokens for s in native]
    by_seed = {s.meta["seed_id"]: s for s in native if s.text.startswith("Yesterday")}
    for seed in seeds:  # the seed's entities re-found in the rewrite, one token later
        got = [(e.start - 2, e.end - 2, e.type) for e in by_seed[seed.id].entities]
        assert got == [e.key for e in seed.entities]
    assert [e.key for s in conll for e in s.entities] == [e.key for s in native for e in s.entities]
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["kept"] == 9 and saved["requests"] == 8 and saved["seconds_per_seed_mean"] > 0


def test_run_synthesis_resumes_and_retries_failures(ccks_dir, tmp_path):
    seeds = load_dataset(ccks_dir / "gold-500.conll").samples[:6]
    broken = {seeds[1].id}

    def answer(request):
        seed = seed_of(request)
        if seed["text"] == seeds[1].text and broken:
            return "Sorry, no JSON today."
        return json.dumps([{"text": "Later , " + seed["text"], "entity": seed["entity"]}])

    first = ScriptedBackend(answer)
    r1 = run_synthesis(
        seeds, synth(), first, CCKS_LABELS, SynthSettings(limit=4, retries=1), tmp_path
    )
    assert r1.seeds == 4 and r1.failed == 1 and r1.failure_kinds == {"unparsable": 1}
    assert len(first.requests) == 5  # the unparsable seed was tried twice
    assert r1.kept == 3
    # a run killed after writing a sample but before its seed's done record
    with (tmp_path / "synthetic.jsonl").open("a") as fh:
        fh.write(
            json.dumps(
                {
                    "id": "orphan",
                    "text": "x",
                    "tokens": ["x"],
                    "entities": [],
                    "meta": {"seed_id": seeds[5].id},
                }
            )
            + '\n{"id": "torn'
        )
    broken.clear()
    second = ScriptedBackend(answer)
    r2 = run_synthesis(seeds, synth(), second, CCKS_LABELS, SynthSettings(), tmp_path)
    # only the failed seed and the two never-run seeds are asked again
    assert sorted(seed_of(r)["text"] for r in second.requests) == sorted(
        s.text for s in (seeds[1], seeds[4], seeds[5])
    )
    assert r2.resumed == 3 and r2.processed == 3 and r2.failed == 0
    assert r2.kept == 6 and r2.requests == 5 + 3
    native = read_jsonl(tmp_path / "synthetic.jsonl").samples
    assert sorted(s.meta["seed_id"] for s in native) == sorted(s.id for s in seeds)
    assert len(read_conll(tmp_path / "synthetic.conll").samples) == 6
    third = ScriptedBackend(answer)
    r3 = run_synthesis(seeds, synth(), third, CCKS_LABELS, SynthSettings(), tmp_path)
    assert third.requests == [] and r3.kept == 6 and r3.resumed == 6


def test_settings_reject_unknown_keys():
    with pytest.raises(ValueError):
        SynthSettings(workerz=2)


@pytest.mark.slow
def test_real_smollm2_run(ccks_dir, tmp_path):
    """The whole path on a real (weak) model: it runs, and validation accounts for everything."""
    pytest.importorskip(
        "refineg_local_text.backend", reason="the local_text backend plugin is not built yet"
    )
    from refineg_core.registry import create

    backend = create("backend", "local_text", {})
    if reason := backend.check_available():
        pytest.skip(f"local_text backend unavailable: {reason}")
    seeds = [s for s in load_dataset(ccks_dir / "gold-500.conll").samples if s.entities][:1]
    report = run_synthesis(
        seeds,
        synth(n_rewrites=2, n_new=1, max_tokens=256),
        backend,
        CCKS_LABELS,
        SynthSettings(retries=0),
        tmp_path,
    )
    assert report.requests == 1 and report.processed == 1
    assert report.kept + sum(report.dropped.values()) == report.generated
    assert report.failed == (1 if report.generated == 0 else 0)
    assert (tmp_path / "report.json").is_file()
