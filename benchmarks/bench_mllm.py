"""MLLM client throughput, robustness and cache: the grounding stage against a fake server.

Real Twitter-GMNER dev tweets (images painted at the sizes their XML declares,
the dataset ships none) go through ``run_ground`` with the ``openai`` backend
wrapped in ``CachedBackend``, exactly as ``refineg run`` wires it, against the
loopback fake server with a fixed latency, run in a child process as a real
server would be (so its work does not share the client's GIL). The server
answers each query with its gold boxes written in the model's frame
(Qwen2.5-VL pixels of the resized grid), so the run also checks that boxes
come back to original pixels.

Runs, all in one process on the same samples:

1. ``concurrency=1`` (the release's sequential client) vs ``--concurrency``
   (default 16), no failures: the speed-up (goal >= 12x);
2. the same two with ``--fail`` (default 10%) of the HTTP attempts failing
   (half HTTP 500, half a dropped connection), retried by the backend: lost
   entities (goal 0), samples left without boxes, retries made;
3. a rerun of the concurrent clean job on its warm cache (new output file, so
   nothing is resumed): calls made (goal 0).

Concurrent runs are repeated ``--reps`` times and the median counts (the
machine is shared); the sequential ones run once. The fake model is
``gold_responder`` (gold boxes in the Qwen2.5-VL frame, in prose with a fenced
list) behind the failure injection.

    nice -n 10 python benchmarks/bench_mllm.py                 # 200 samples
    nice -n 10 python benchmarks/bench_mllm.py --n 500 --k 3   # fuller
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import random
import tempfile
import threading
import time
from pathlib import Path

from _common import real_samples, twitter_labels
from harness import parser, start, summary
from refineg_frames.qwen import Qwen25VLCodec
from refineg_openai import images as openai_images
from refineg_openai.backend import OpenAIBackend
from refineg_openai.testing import FakeOpenAIServer, drop, error, gold_responder
from refineg_stages.ground import GroundSettings, run_ground
from refineg_stages.testing import OverlapSelector, prediction, with_image

from refineg_core.mllm_cache import CachedBackend

os.environ.setdefault("REFINEG_NO_PROGRESS", "1")
LABELS = twitter_labels()


def responder_for(samples, fail: float, seed: int):
    """Gold boxes in the Qwen2.5-VL frame for the query; ``fail`` of attempts fail."""
    rng = random.Random(seed)
    lock = threading.Lock()
    gold = gold_responder(
        samples, codec=Qwen25VLCodec(), prose=True, prompt_tokens=800, completion_tokens=60
    )

    def respond(req):
        with lock:
            roll, kind = rng.random(), rng.random()
        if roll < fail:
            return error(500, "injected failure") if kind < 0.5 else drop()
        return gold(req)

    return respond


def _serve(conn, samples, fail: float, seed: int, latency: float) -> None:
    """Child process: the fake server, answering ``stats`` and ``stop`` over a pipe."""
    with FakeOpenAIServer(responder_for(samples, fail, seed), latency=latency) as server:
        conn.send(server.base_url)
        while (cmd := conn.recv()) != "stop":
            if cmd == "stats":
                conn.send(
                    {"attempts": len(server.chat_requests), "max_in_flight": server.max_in_flight}
                )


@contextlib.contextmanager
def server_process(samples, fail: float, seed: int, latency: float):
    """The fake server in its own process, as a real server would be: its work does not
    compete with the client for this process's GIL."""
    parent, child = mp.get_context("fork").Pipe()
    proc = mp.get_context("fork").Process(
        target=_serve, args=(child, samples, fail, seed, latency), daemon=True
    )
    proc.start()
    base_url = parent.recv()
    stats: dict = {}

    def fetch() -> dict:
        parent.send("stats")
        stats.update(parent.recv())
        return stats

    try:
        yield base_url, fetch
    finally:
        parent.send("stop")
        proc.join(timeout=10)


def run_once(
    samples, pool, args, *, concurrency: int, fail: float, cache_dir: Path, out: Path, label: str
) -> dict:
    openai_images._encode_cached.cache_clear()  # every run encodes its images itself
    with server_process(samples, fail, args.seed, args.latency) as (base_url, server_stats):
        inner = OpenAIBackend(
            OpenAIBackend.Options(
                base_url=base_url,
                model="fake-model",
                concurrency=concurrency,
                retries=args.retries,
                backoff_base=args.backoff_base,
                backoff_max=2.0,
                timeout=10.0,
            )
        )
        backend = CachedBackend(inner, cache_dir)
        selector = OverlapSelector()
        selector.index(pool)
        inputs = [prediction(s, uncertainty=[0.9] * len(s.entities)) for s in samples]
        started = time.perf_counter()
        results, summary = run_ground(
            inputs, pool, selector, backend, LABELS, GroundSettings(k=args.k), out
        )
        seconds = time.perf_counter() - started
        inner.close()
        server = server_stats()
    lost = sum(
        1
        for i, r in zip(inputs, results, strict=True)
        for e in i.entities
        if e.key not in {x.key for x in r.entities}
    )
    gold = {s.id: {e.key: e.boxes for e in s.entities} for s in samples}
    boxed = recovered = 0
    for r in results:
        for e in r.entities:
            want = gold[r.id].get(e.key, ())
            if want:
                boxed += 1
                recovered += bool(e.boxes) and all(
                    any(b.iou(g) > 0.9 for b in e.boxes) for g in want
                )
    return {
        "run": label,
        "concurrency": concurrency,
        "fail": fail,
        "samples": len(samples),
        "entities": sum(len(i.entities) for i in inputs),
        "seconds": round(seconds, 2),
        "http_attempts": server["attempts"],
        "calls_made": backend.stats["calls"],
        "cache_hits": backend.stats["hits"],
        "retries": inner.stats["retries"],
        "failed_samples": summary.failed,
        "lost_entities": lost,
        "gold_boxes_recovered": f"{recovered}/{boxed}",
        "max_in_flight": server["max_in_flight"],
    }


def main() -> None:
    ap = parser(__doc__, out="mllm_client.json", reps=3)
    ap.add_argument("--n", type=int, default=200, help="query samples (Twitter-GMNER dev)")
    ap.add_argument("--k", type=int, default=0, help="demonstrations per query")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--latency", type=float, default=0.2, help="fake server latency (s)")
    ap.add_argument("--fail", type=float, default=0.1, help="share of failing HTTP attempts")
    ap.add_argument("--retries", type=int, default=3)
    ap.add_argument("--backoff-base", type=float, default=0.2)
    ap.add_argument(
        "--skip-faulty-sequential",
        action="store_true",
        help="skip the slowest run (sequential with failures)",
    )
    args = ap.parse_args()
    session = start(args)
    doc: dict = {"settings": vars(args)}
    twitter = args.data / "twitter-gmner"
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        picked = real_samples(twitter, args.n + (args.n if args.k else 0))
        samples = [with_image(s, tmp / "img", i) for i, s in enumerate(picked[: args.n])]
        pool = [with_image(s, tmp / "pool", i) for i, s in enumerate(picked[args.n :])]
        rows = []

        def run(label: str, concurrency: int, fail: float, cache: str, out: str) -> dict:
            row = run_once(
                samples,
                pool,
                args,
                concurrency=concurrency,
                fail=fail,
                cache_dir=tmp / cache,
                out=tmp / out,
                label=label,
            )
            print(json.dumps(row), flush=True)
            rows.append(row)
            return row

        def median_of(label: str, fail: float, cache: str) -> float:
            times = [
                run(label, args.concurrency, fail, f"{cache}-{i}", f"{cache}-{i}.jsonl")["seconds"]
                for i in range(max(1, args.reps))
            ]
            doc[f"{label}_s"] = summary(times)
            return doc[f"{label}_s"]["median"]

        seq = run("clean-sequential", 1, 0.0, "cache-seq", "seq.jsonl")
        par = median_of("clean-concurrent", 0.0, "cache-par")
        doc["speedup_clean"] = round(seq["seconds"] / par, 1)
        print(json.dumps({"speedup_clean": doc["speedup_clean"], "median_concurrent_s": par}))
        if not args.skip_faulty_sequential:
            fseq = run("faulty-sequential", 1, args.fail, "cache-fseq", "fseq.jsonl")
        fpar = median_of("faulty-concurrent", args.fail, "cache-fpar")
        if not args.skip_faulty_sequential:
            doc["speedup_faulty"] = round(fseq["seconds"] / fpar, 1)
            print(
                json.dumps({"speedup_faulty": doc["speedup_faulty"], "median_concurrent_s": fpar})
            )
        warm = run("warm-cache-rerun", args.concurrency, 0.0, "cache-par-0", "par-rerun.jsonl")
        assert warm["calls_made"] == 0, warm
        assert all(r["lost_entities"] == 0 for r in rows), rows
    doc["runs"] = rows
    session.write(doc)


if __name__ == "__main__":
    main()
