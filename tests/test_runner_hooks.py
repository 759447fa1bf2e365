"""The stage runner (resume, failures, concurrency) and pluggy events."""

import threading
import time

import attrs
import pytest

from refineg_core.formats.native import read_results
from refineg_core.hooks import get_hooks, hookimpl
from refineg_core.pipeline.runner import run_stage
from refineg_core.types import SOURCE_MLLM, Entity, Sample, SampleResult


def make_items(n):
    return [
        SampleResult(
            Sample(f"s{i}", ("Obama", "in", "Paris"), "Obama in Paris"),
            (Entity(0, 1, "PER", "Obama", source="tagger"),),
        )
        for i in range(n)
    ]


def relabel(item):
    return attrs.evolve(
        item, entities=tuple(attrs.evolve(e, source=SOURCE_MLLM) for e in item.entities)
    )


def test_failures_are_recorded_and_entities_kept(tmp_path):
    def process(item):
        if item.id == "s3":
            raise TimeoutError("the MLLM took too long")
        return relabel(item)

    results, summary = run_stage("ground", make_items(6), process, tmp_path / "g.jsonl")
    assert [r.id for r in results] == [f"s{i}" for i in range(6)]
    failed = results[3]
    assert failed.entities[0].source == "tagger"  # kept as it was
    assert failed.failures[0].kind == "TimeoutError" and "too long" in failed.failures[0].message
    assert summary.failed == 1 and summary.failure_kinds == {"TimeoutError": 1}
    on_disk = {r.id: r for r in read_results(tmp_path / "g.jsonl")}
    assert on_disk["s3"].failures[0].stage == "ground" and len(on_disk) == 6


def test_interrupted_run_resumes_without_redoing_done_items(tmp_path):
    out = tmp_path / "r.jsonl"
    seen = []

    def stop_after_three(item):
        if len(seen) == 3:
            raise KeyboardInterrupt
        seen.append(item.id)
        return relabel(item)

    with pytest.raises(KeyboardInterrupt):
        run_stage("refine", make_items(8), stop_after_three, out)
    with out.open("a") as fh:
        fh.write('{"id": "s7", "tok')  # a torn line from a killed process
    seen_again = []

    def record(item):
        seen_again.append(item.id)
        return relabel(item)

    results, summary = run_stage("refine", make_items(8), record, out)
    assert sorted(seen_again) == sorted(set(f"s{i}" for i in range(8)) - set(seen))
    assert summary.resumed == 3 and len(results) == 8
    assert all(r.entities[0].source == SOURCE_MLLM for r in results)
    assert len(read_results(out)) == 8


def test_workers_run_concurrently_up_to_the_limit(tmp_path):
    lock = threading.Lock()
    state = {"now": 0, "peak": 0}

    def slow(item):
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        time.sleep(0.05)
        with lock:
            state["now"] -= 1
        return item

    run_stage("x", make_items(24), slow, tmp_path / "x.jsonl", workers=4)
    assert state["peak"] == 4


def test_stage_events_reach_hook_plugins(tmp_path):
    events = []

    class Listener:
        @hookimpl
        def refineg_stage_started(self, stage, total):
            events.append(("start", stage, total))

        @hookimpl
        def refineg_stage_finished(self, stage, summary):
            events.append(("end", stage, summary["processed"]))

    hooks = get_hooks()
    listener = Listener()
    hooks.register(listener)
    try:
        run_stage("refine", make_items(5), relabel, tmp_path / "e.jsonl")
    finally:
        hooks.unregister(listener)
    assert events == [("start", "refine", 5), ("end", "refine", 5)]
