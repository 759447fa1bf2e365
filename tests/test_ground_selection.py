"""The ground stage selects demonstrations a block at a time, ahead of its calls.

Real ``openai`` backend against the loopback fake server, real tweets with
painted images; the selector is the deterministic word-overlap one of the
stage tests, wrapped to record how the stage asks it.
"""

from __future__ import annotations

import threading
from pathlib import Path

import attrs
import pytest
from refineg_openai.backend import OpenAIBackend
from refineg_openai.testing import FakeOpenAIServer, ok
from refineg_stages.ground import GroundSettings, run_ground

from refineg_core.types import Sample, SampleResult
from tests.stagedata import LABELS, OverlapSelector, backend_for, real_samples, with_image


class Recording(OverlapSelector):
    """Records every ``select_many`` batch (ids, thread) and every direct ``select``."""

    def index(self, pool):
        super().index(pool)
        self.batches: list[tuple[list[str], str]] = []
        self.direct: list[str] = []
        self._in_batch = threading.local()

    def select_many(self, queries, k):
        self.batches.append(([q.id for q in queries], threading.current_thread().name))
        self._in_batch.on = True
        try:
            return super().select_many(queries, k)
        finally:
            self._in_batch.on = False

    def select(self, query, k):
        if not getattr(self._in_batch, "on", False):
            self.direct.append(query.id)
        return super().select(query, k)


def as_input(sample: Sample) -> SampleResult:
    ents = tuple(attrs.evolve(e, boxes=(), source="tagger") for e in sample.entities)
    return SampleResult(sample, ents)


@pytest.fixture
def world(twitter_dir: Path, tmp_path: Path):
    tweets = real_samples(twitter_dir, 26)
    pool = [with_image(s, tmp_path / "pool", i) for i, s in enumerate(tweets[:6])]
    queries = [with_image(s, tmp_path / "q", 10 + i) for i, s in enumerate(tweets[6:])]
    selector = Recording()
    selector.index(pool)
    return pool, [as_input(q) for q in queries], selector


def test_selection_in_blocks_ahead_of_calls_keeps_concurrency(world, tmp_path: Path) -> None:
    pool, inputs, selector = world
    with FakeOpenAIServer(latency=0.2) as server:
        server.default = ok("[]")
        backend = backend_for(server, concurrency=4)
        results, summary = run_ground(
            inputs, pool, selector, backend, LABELS, GroundSettings(k=2), tmp_path / "g.jsonl"
        )
        requests = list(server.chat_requests)
        in_flight = server.max_in_flight
    # blocks of 2 x concurrency (at least 8), in the order the stage submits them
    assert [ids for ids, _ in selector.batches] == [
        [r.id for r in inputs[i : i + 8]] for i in range(0, len(inputs), 8)
    ]
    assert {name for _, name in selector.batches} == {"demo-book"}
    assert selector.direct == []  # nothing selected one query at a time
    assert in_flight == 4  # the workers never queue behind a selection lock
    assert len(requests) == len(inputs) and summary.failed == 0
    assert all(len(r.image_urls) == 3 for r in requests)  # 2 demos + the query
    assert all(len(r.meta["demos"]) == 2 for r in results)


def test_one_bad_query_costs_only_its_item(world, tmp_path: Path, server) -> None:
    pool, inputs, _ = world
    bad = inputs[3].id

    class Fragile(Recording):
        def select(self, query, k):
            if query.id == bad:
                raise RuntimeError("cannot embed this one")
            return super().select(query, k)

    selector = Fragile()
    selector.index(pool)
    server.default = ok("[]")
    results, summary = run_ground(
        inputs[:8],
        pool,
        selector,
        backend_for(server),
        LABELS,
        GroundSettings(k=1),
        tmp_path / "g.jsonl",
    )
    failed = [r for r in results if r.failures]
    assert [r.id for r in failed] == [bad]
    assert failed[0].failures[0].stage == "ground"
    assert "cannot embed this one" in failed[0].failures[0].message
    assert failed[0].entities == inputs[3].entities  # kept, without boxes
    assert len(server.chat_requests) == 7 and summary.failed == 1
    # the block failed as a whole, then was retried one query at a time
    assert len(selector.batches) == 1
    assert selector.direct == [r.id for r in inputs[:8] if r.id != bad]


def test_resume_selects_only_pending_items(world, tmp_path: Path, server) -> None:
    pool, inputs, selector = world
    out = tmp_path / "g.jsonl"
    server.default = ok("[]")
    run_ground(inputs[:3], pool, selector, backend_for(server), LABELS, GroundSettings(k=1), out)
    selector.batches.clear()
    run_ground(inputs[:6], pool, selector, backend_for(server), LABELS, GroundSettings(k=1), out)
    assert [ids for ids, _ in selector.batches] == [[r.id for r in inputs[3:6]]]


def test_no_selection_when_no_call_follows(world, tmp_path: Path) -> None:
    pool, inputs, selector = world
    dead = OpenAIBackend(OpenAIBackend.Options(base_url="http://127.0.0.1:9/v1", timeout=1.0))
    _, summary = run_ground(
        inputs[:4], pool, selector, dead, LABELS, GroundSettings(k=2), tmp_path / "g.jsonl"
    )
    assert summary.counters["requests_skipped"] == 4
    assert selector.batches == [] and selector.direct == []
