"""Throughput of the refine and ground stages against the fake server, and entity loss.

Same process, same samples, same fake server with a fixed latency: the
stages with the OpenAI backend at ``--concurrency`` versus ``concurrency=1``
(the release's sequential client), with ``--fail`` of the answers failing in
assorted ways (HTTP 500, a non-JSON body, prose, truncated JSON). Reports
seconds, the speed-up and how many input entities are missing from the
output (goal: 0).

    nice -n 10 /work/venv/bin/python benchmarks/bench_mllm_stages.py            # quick
    nice -n 10 /work/venv/bin/python benchmarks/bench_mllm_stages.py --n 500    # fuller
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

from _common import ROOT, real_samples, twitter_labels
from refineg_openai.backend import OpenAIBackend
from refineg_openai.testing import FakeOpenAIServer, error, garbage, ok

from refineg_core.pipeline.ground import GroundSettings, run_ground
from refineg_core.pipeline.refine import RefineSettings, run_refine
from refineg_core.testing.stages import OverlapSelector, prediction, query_text, with_image

os.environ.setdefault("REFINEG_NO_PROGRESS", "1")
LABELS = twitter_labels()


def responder_for(samples, fail: float, seed: int):
    rng = random.Random(seed)
    by_text = {s.text: s for s in samples}
    bad = [error(500), garbage(), ok("I cannot tell."), ok('[{"name": "x", "ty')]

    def respond(req):
        if rng.random() < fail:
            return rng.choice(bad)
        s = by_text.get(query_text(req.text))
        if s is None:
            return ok("[]")
        if "boxes" in req.text:
            return ok(
                json.dumps(
                    [
                        {"entity": e.text, "type": e.type, "boxes": [[1, 1, 20, 20]]}
                        for e in s.entities
                    ]
                )
            )
        return ok(
            "Brief reasoning.\n```json\n"
            + json.dumps([{"name": e.text, "type": e.type} for e in s.entities])
            + "\n```"
        )

    return respond


def run_once(stage: str, samples, concurrency: int, args, tmp: Path) -> dict:
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
        out = tmp / f"{stage}-{concurrency}.jsonl"
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
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=96, help="samples (Twitter-GMNER dev)")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--latency", type=float, default=0.2, help="fake server latency (s)")
    ap.add_argument("--fail", type=float, default=0.1, help="share of failing answers")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        samples = [
            with_image(s, tmp / "img", i)
            for i, s in enumerate(real_samples(args.data / "twitter-gmner", args.n))
        ]
        rows = []
        for stage in ("refine", "ground"):
            seq = run_once(stage, samples, 1, args, tmp)
            par = run_once(stage, samples, args.concurrency, args, tmp)
            par["speedup"] = round(seq["seconds"] / par["seconds"], 1)
            rows += [seq, par]
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
