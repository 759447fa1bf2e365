"""Unparsable-answer rate with and without schema-guided answers, on fake servers.

The refine and ground stages (real OpenAI backend, loopback fake server) run
over the first N Twitter-GMNER dev tweets with every entity delegated. The
fake "model" answers in free text with a fixed error mix (below, seeded per
tweet) unless the request carries ``response_format`` *and* the server
honours it, in which case it answers exactly in the schema (what vLLM's
guided decoding guarantees). Three servers:

- ``honours``: follows ``response_format`` when sent;
- ``ignores``: accepts ``response_format`` and answers free text anyway;
- ``refuses``: HTTP 400 "response_format is not supported" when it is sent
  (the backend falls back once, then asks without it).

Reported per stage: calls, answers with no usable JSON (``answers_unusable``:
no_json, invalid_json, truncated before the first item...), answers with no
usable item, and truncated answers. The free-text rates reflect the fake
model's configured mix, not a real model; the point is what the schema
changes and that the fallback costs one request.

The clean answer is the gold one (``gold_items``: gold entities for refine,
gold boxes in original pixels for ground).

    nice -n 10 python benchmarks/bench_hostile_answers.py            # 300 tweets
    nice -n 10 python benchmarks/bench_hostile_answers.py --samples 100
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path

os.environ.setdefault("REFINEG_NO_PROGRESS", "1")

import attrs
from _common import real_samples, twitter_labels
from harness import parser, start
from refineg_openai.testing import (
    FakeOpenAIServer,
    Reply,
    backend_for,
    error,
    gold_items,
    ok,
)
from refineg_stages.ground import GroundSettings, run_ground
from refineg_stages.refine import RefineSettings, run_refine
from refineg_stages.testing import prediction, query_text, with_image

from refineg_core.types import Sample, SampleResult

LABELS = twitter_labels()

#: The fake model's free-text habits: (share, name); the rest of the mass is a clean list.
FREE_TEXT_MIX = [
    (0.10, "prose around a fenced list"),
    (0.05, "python quotes and trailing commas"),
    (0.05, "truncated mid-list"),
    (0.04, "truncated before the first item"),
    (0.03, "prose only"),
    (0.03, "invalid JSON"),
]


def items_for(stage: str, sample: Sample) -> list[dict]:
    return gold_items(sample, stage)


def free_text(stage: str, sample: Sample, seed: int = 0) -> str:
    rng = random.Random(f"{stage}:{sample.id}" if seed == 0 else f"{seed}:{stage}:{sample.id}")
    items = items_for(stage, sample)
    clean = json.dumps(items)
    roll = rng.random()
    habit = None
    for share, name in FREE_TEXT_MIX:
        if roll < share:
            habit = name
            break
        roll -= share
    if habit is None:
        return clean
    if habit == "prose around a fenced list":
        return f"Let me look at the post.\n```json\n{clean}\n```\nHope this helps."
    if habit == "python quotes and trailing commas":
        return repr(items).replace("}]", "},]")
    if habit == "truncated mid-list":
        return clean[: max(2, len(json.dumps(items[:1])) - 1)] + ', {"name": "Ab'
    if habit == "truncated before the first item":
        return "Answer:\n```json\n" + clean[: min(len(clean) - 2, 12)]
    if habit == "prose only":
        return "The post mentions a few names but I am not sure of their types."
    return clean.replace(", ", " ", 1).replace('": "', '" "', 1)  # a missing comma/colon


def serve(kind: str, stage: str, by_text: dict[str, Sample], seed: int = 0):
    def respond(req) -> Reply:
        sample = by_text[query_text(req.text)]
        schema = isinstance(req.body, dict) and "response_format" in req.body
        if schema and kind == "refuses":
            return error(400, "response_format json_schema is not supported")
        if schema and kind == "honours":
            return ok(json.dumps(items_for(stage, sample)))
        return ok(free_text(stage, sample, seed))

    return respond


def run(
    stage: str, server_kind: str, schema: bool, samples: list[Sample], tmp: Path, seed: int = 0
) -> dict:
    by_text = {s.text: s for s in samples}
    with FakeOpenAIServer(serve(server_kind, stage, by_text, seed)) as server:
        backend = backend_for(server, answer_schema=schema, concurrency=8)
        out = tmp / f"{stage}-{server_kind}-{schema}.jsonl"
        if stage == "refine":
            inputs = [prediction(s, uncertainty=[0.9] * len(s.entities)) for s in samples]
            _, summary = run_refine(inputs, backend, LABELS, RefineSettings(), out)
        else:
            inputs = [
                SampleResult(
                    with_image(s, tmp / "img", i),
                    tuple(attrs.evolve(e, boxes=(), source="tagger") for e in s.entities),
                )
                for i, s in enumerate(samples)
            ]
            _, summary = run_ground(inputs, [], None, backend, LABELS, GroundSettings(k=0), out)
        c = summary.counters
        return {
            "stage": stage,
            "server": server_kind,
            "answer_schema": schema,
            "calls": c.get("calls", 0),
            "requests": len(server.chat_requests),
            "unusable": c.get("answers_unusable", 0),
            "no_item": c.get("answers_without_usable_item", 0),
            "truncated": c.get("answers_truncated", 0),
            "fallbacks": backend.stats["schema_fallbacks"],
        }


def main() -> None:
    ap = parser(__doc__, out="hostile_answers.json", reps=1)
    ap.add_argument("--samples", type=int, default=300)
    args = ap.parse_args()
    session = start(args)
    samples = real_samples(args.data / "twitter-gmner", args.samples, min_entities=1)
    print(f"{len(samples)} dev tweets with entities; free-text error mix: {FREE_TEXT_MIX}")
    print(
        "| stage | server | answer_schema | HTTP requests | answers | unparsable | "
        "no usable item | truncated | schema fallbacks |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for stage in ("refine", "ground"):
            for server_kind in ("honours", "ignores", "refuses"):
                for schema in (False, True):
                    r = run(stage, server_kind, schema, samples, Path(tmp), args.seed)
                    rows.append(r)
                    rate = r["unusable"] / r["calls"] if r["calls"] else 0.0
                    print(
                        f"| {stage} | {server_kind} | {'on' if schema else 'off'} | "
                        f"{r['requests']} | {r['calls']} | {r['unusable']} ({rate:.1%}) | "
                        f"{r['no_item']} | {r['truncated']} | {r['fallbacks']} |"
                    )
    session.write({"samples": len(samples), "free_text_mix": FREE_TEXT_MIX, "rows": rows})


if __name__ == "__main__":
    main()
