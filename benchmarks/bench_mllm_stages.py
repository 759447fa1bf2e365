"""Throughput of the refine and ground stages against the fake server, and entity loss.

Same process, same samples, same fake server with a fixed latency: the
stages with the OpenAI backend at ``--concurrency`` versus ``concurrency=1``
(the release's sequential client), with ``--fail`` of the answers failing in
assorted ways (HTTP 500, a non-JSON body, prose, truncated JSON). Reports
seconds, the speed-up and how many input entities are missing from the
output (goal: 0).

The fake model answers with gold (``gold_responder``: gold entities for
refine, gold boxes in the pixel frame for ground) unless the answer fails.

    nice -n 10 python benchmarks/bench_mllm_stages.py            # quick
    nice -n 10 python benchmarks/bench_mllm_stages.py --n 500    # fuller
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
from pathlib import Path

from _common import real_samples, twitter_labels
from harness import parser, schedule, start, summary
from refineg_openai.backend import OpenAIBackend
from refineg_openai.testing import FakeOpenAIServer, error, garbage, gold_responder, ok
from refineg_stages.ground import GroundSettings, run_ground
from refineg_stages.refine import RefineSettings, run_refine
from refineg_stages.testing import OverlapSelector, prediction, with_image

os.environ.setdefault("REFINEG_NO_PROGRESS", "1")
LABELS = twitter_labels()


def responder_for(samples, fail: float, seed: int):
    """Gold answers (``gold_responder``); ``fail`` of them fail in an assorted way."""
    rng = random.Random(seed)
    gold = gold_responder(samples, prose=True)
    bad = [error(500), garbage(), ok("I cannot tell."), ok('[{"name": "x", "ty')]

    def respond(req):
        if rng.random() < fail:
            return rng.choice(bad)
        return gold(req)

    return respond


def run_once(stage: str, samples, concurrency: int, args, out: Path) -> dict:
    with FakeOpenAIServer(latency=args.latency) as server:
        server.responder = responder_for(samples, args.fail, args.seed)
        backend = OpenAIBackend(
            OpenAIBackend.Options(
                base_url=server.base_url,
                model="fake-model",
                concurrency=concurrency,
                retries=0,
                timeout=10.0,
                box_frame="pixels",
            )
        )
        inputs = [prediction(s, uncertainty=[0.9] * len(s.entities)) for s in samples]
        started = time.perf_counter()
        if stage == "refine":
            results, summary = run_refine(inputs, backend, LABELS, RefineSettings(), out)
            lost = sum(
                1
                for i, r in zip(inputs, results, strict=True)
                if r.failures
                for e in i.entities
                if e not in r.entities
            )
        else:
            selector = OverlapSelector()
            selector.index([])
            results, summary = run_ground(
                inputs, [], selector, backend, LABELS, GroundSettings(k=0), out
            )
            lost = sum(
                1
                for i, r in zip(inputs, results, strict=True)
                for e in i.entities
                if e.key not in {x.key for x in r.entities}
            )
        seconds = time.perf_counter() - started
        backend.close()
        return {
            "stage": stage,
            "concurrency": concurrency,
            "seconds": round(seconds, 2),
            "calls": len(server.chat_requests),
            "failed_samples": summary.failed,
            "lost_entities": lost,
            "max_in_flight": server.max_in_flight,
        }


def main() -> None:
    ap = parser(__doc__, out="mllm_stages.json", reps=1)
    ap.add_argument("--n", type=int, default=96, help="samples (Twitter-GMNER dev)")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--latency", type=float, default=0.2, help="fake server latency (s)")
    ap.add_argument("--fail", type=float, default=0.1, help="share of failing answers")
    args = ap.parse_args()
    session = start(args)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        samples = [
            with_image(s, tmp / "img", i)
            for i, s in enumerate(real_samples(args.data / "twitter-gmner", args.n))
        ]
        rows, stages = [], {}
        concurrency = {"sequential": 1, "concurrent": args.concurrency}
        for stage in ("refine", "ground"):
            seconds: dict[str, list[float]] = {name: [] for name in concurrency}
            for rep, name in enumerate(schedule(list(concurrency), args.reps)):  # A B A B
                out = tmp / f"{stage}-{name}-{rep}.jsonl"  # a new file: nothing is resumed
                row = run_once(stage, samples, concurrency[name], args, out)
                print(json.dumps(row), flush=True)
                rows.append(row)
                seconds[name].append(row["seconds"])
            stages[stage] = {name: summary(v) for name, v in seconds.items()}
            stages[stage]["speedup"] = round(
                stages[stage]["sequential"]["median"] / stages[stage]["concurrent"]["median"], 1
            )
            print(json.dumps({stage: stages[stage]}), flush=True)
    session.write({"samples": len(samples), "settings": vars(args), "stages": stages, "runs": rows})


if __name__ == "__main__":
    main()
