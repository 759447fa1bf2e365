"""Does selecting demonstrations keep the ground stage's concurrency busy?

Ground stage on real Twitter-GMNER dev tweets (images painted at their XML
sizes) against the loopback fake OpenAI server with a fixed latency, through
the real ``openai`` backend at ``--concurrency``; same process, same samples,
interleaved repetitions. Rows:

* ``k=0``: zero-shot, no selection (the baseline);
* ``k=3 clip cold``: the real ``clip_similarity`` selector (MiniLM text +
  entity similarity; pool embeddings cached on disk, indexed before the
  timing), a fresh selector per repetition, so every query text and entity
  name goes through MiniLM during the stage, batched per block;
* ``k=3 clip warm``: the same selector again on the same queries: their
  embeddings are remembered, so selection is scoring only;
* ``k=3 overlap``: the stage tests' word-overlap selector, which has no
  batched path (the interface's default ``select_many`` loop);
* ``k=3 fixed demos``: the demonstrations the cold selector chose, handed
  back from a dict (selection costs nothing): what three demo images and
  turns per request cost the client and server by themselves;
* ``k=3 clip cold, pool prepared earlier``: as ``k=3 clip cold`` (a fresh
  selector), with the backend's ``image_cache_dir`` holding the pool's images
  prepared for the frame by an earlier run (seeded once, copied fresh for each
  repetition outside the timing); the query images are prepared in the run, as
  in every row.

Throughput ratio = seconds(k=0) / seconds(row); the goal is >= 0.8. The
selection-only time of one ``select_many`` over all queries (fresh selector:
encoder + scoring) is printed too.

    nice -n 10 python benchmarks/bench_ground_select.py
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("REFINEG_NO_PROGRESS", "1")

import torch
from _common import ROOT, machine, twitter_labels
from refineg_clip_selector.selector import ClipSimilaritySelector
from refineg_formats.twitter import read_twitter_gmner
from refineg_openai import images as openai_images
from refineg_openai.backend import OpenAIBackend
from refineg_openai.testing import FakeOpenAIServer, ok
from refineg_stages.ground import GroundSettings, ground_query, run_ground
from refineg_stages.testing import OverlapSelector, prediction, with_image

from refineg_core.chat import ImagePart
from refineg_core.interfaces import ContextSelector

LABELS = twitter_labels()


class Fixed(ContextSelector):
    """Hands back demonstrations chosen beforehand: selection at no cost."""

    def __init__(self, chosen: dict[str, list]) -> None:
        super().__init__()
        self.chosen = chosen

    def index(self, pool) -> None:
        pass

    def select(self, query, k):
        return self.chosen[query.id][:k]


def clip(cache: Path, precision: str = "fp32") -> ClipSimilaritySelector:
    return ClipSimilaritySelector(
        ClipSimilaritySelector.Options(cache_dir=cache, image_weight=0.0, query_precision=precision)
    )


def run_once(
    inputs, pool, selector, k: int, args, out: Path, image_cache_dir: Path | None = None
) -> dict:
    openai_images._encode_cached.cache_clear()  # each run prepares its own images
    with FakeOpenAIServer(latency=args.latency) as server:
        server.default = ok("[]")
        backend = OpenAIBackend(
            OpenAIBackend.Options(
                base_url=server.base_url,
                model="fake-model",
                concurrency=args.concurrency,
                retries=0,
                timeout=30.0,
                box_frame=args.frame,
                image_cache_dir=image_cache_dir,
            )
        )
        started = time.perf_counter()
        results, summary = run_ground(
            inputs, pool, selector, backend, LABELS, GroundSettings(k=k), out
        )
        seconds = time.perf_counter() - started
        backend.close()
        demos = sum(len(r.meta.get("demos", ())) for r in results)
        return {
            "seconds": seconds,
            "calls": len(server.chat_requests),
            "max_in_flight": server.max_in_flight,
            "failed": summary.failed,
            "demos_per_call": round(demos / max(1, len(server.chat_requests)), 2),
        }


ROW_KEYS = {
    "k=3 clip cold": "cold",
    "k=3 clip warm": "warm",
    "k=3 overlap": "overlap",
    "k=3 fixed demos": "fixed",
    "k=3 clip cold, pool prepared earlier": "disk",
}


def wanted(name: str, rows: str | None) -> bool:
    """Whether ``--rows`` asks for this row (k=0, the baseline, always runs). A warm
    row needs the cold one before it."""
    if rows is None or name == "k=0":
        return True
    keys = {r.strip() for r in rows.split(",")}
    return ROW_KEYS[name] in keys or (ROW_KEYS[name] == "cold" and "warm" in keys)


def seed_prepared_pool(pool, args, folder: Path) -> Path:
    """The pool's images prepared for the frame into ``folder``, as an earlier run
    with ``image_cache_dir`` would have left them (outside every timing)."""
    openai_images._encode_cached.cache_clear()
    codec = OpenAIBackend(
        OpenAIBackend.Options(base_url="http://127.0.0.1:9/v1", box_frame=args.frame)
    ).box_codec
    disk = openai_images.DiskImages(folder, 2**40)
    for s in pool:
        openai_images.image_data_url(ImagePart(s.image.path, s.image.size), codec, disk=disk)
    openai_images._encode_cached.cache_clear()
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=300, help="dev tweets with >= 1 entity")
    ap.add_argument("--pool", type=int, default=300, help="train tweets with boxes (pool)")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "refineg-bench-ground-cache"
    )
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "twitter-gmner")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument(
        "--frame",
        default="pixels",
        help="the backend's box frame (qwen2.5-vl, the openai default, resizes every image)",
    )
    ap.add_argument(
        "--query-precision",
        default="fp32",
        choices=["fp32", "bf16", "onnx", "auto", "exact"],
        help="the clip rows' query_precision (the pool's cached vectors are fp32 either way)",
    )
    ap.add_argument(
        "--rows",
        default=None,
        help="comma-separated rows to run (k=0 always runs): cold, warm, overlap, fixed, disk",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="refineg-ground-select-"))
    dev = [s for s in read_twitter_gmner(args.data / "dev.txt").samples if s.entities]
    train = [
        s
        for s in read_twitter_gmner(args.data / "train.txt").samples
        if any(e.boxes for e in s.entities) and s.image and s.image.size
    ]
    samples = [with_image(s, work / "q", i) for i, s in enumerate(dev[: args.n])]
    pool = [with_image(s, work / "pool", i) for i, s in enumerate(train[: args.pool])]
    inputs = [prediction(s) for s in samples]
    clip(args.cache).index(pool)  # embed the pool once (disk cache), outside every timing

    fresh = clip(args.cache, args.query_precision)
    fresh.index(pool)
    started = time.perf_counter()
    chosen = fresh.select_many([ground_query(r) for r in inputs], 4)
    select_s = time.perf_counter() - started
    fixed = Fixed({r.id: c for r, c in zip(inputs, chosen, strict=True)})
    agreement = None
    if args.query_precision != "fp32":  # what the faster queries change in the choice
        exact = clip(args.cache, "fp32")
        exact.index(pool)
        started = time.perf_counter()
        reference = exact.select_many([ground_query(r) for r in inputs], 4)
        exact_s = time.perf_counter() - started
        pairs = [
            ([d.sample.id for d in a[:3]], [d.sample.id for d in b[:3]])
            for a, b in zip(reference, chosen, strict=True)
        ]
        agreement = {
            "queries": len(pairs),
            "same_three_demos": sum(set(a) == set(b) for a, b in pairs),
            "same_order": sum(a == b for a, b in pairs),
            "demo_overlap": sum(len(set(a) & set(b)) for a, b in pairs)
            / max(1, sum(len(a) for a, _ in pairs)),
            "select_many_cold_seconds_fp32": exact_s,
        }
        print(json.dumps(agreement), flush=True)
    print(
        json.dumps(
            {
                "select_many_cold_seconds": round(select_s, 2),
                "ms_per_query": round(1000 * select_s / len(inputs), 1),
            }
        ),
        flush=True,
    )

    overlap = OverlapSelector()
    overlap.index(pool)
    seeded = seed_prepared_pool(pool, args, work / "prepared-pool")
    rows: dict[str, list[dict]] = {}
    for rep in range(args.reps):
        cold = clip(args.cache, args.query_precision)
        cold.index(pool)
        cold_disk = clip(args.cache, args.query_precision)
        cold_disk.index(pool)
        for name, sel, k in (
            ("k=0", None, 0),
            ("k=3 clip cold", cold, 3),
            ("k=3 clip warm", cold, 3),
            ("k=3 overlap", overlap, 3),
            ("k=3 fixed demos", fixed, 3),
            ("k=3 clip cold, pool prepared earlier", cold_disk, 3),
        ):
            if not wanted(name, args.rows):
                continue
            slug = name.replace(" ", "_").replace(",", "")
            out = work / f"{rep}-{slug}.jsonl"
            disk = None
            if "prepared earlier" in name:  # a fresh copy: this run's query images stay out
                disk = work / f"{rep}-{slug}-images"
                shutil.copytree(seeded, disk)
            row = run_once(inputs, pool, sel, k, args, out, disk)
            rows.setdefault(name, []).append(row)
            print(json.dumps({"rep": rep, "run": name, **row}), flush=True)
    base = statistics.median(r["seconds"] for r in rows["k=0"])
    table = []
    for name, reps in rows.items():
        secs = [r["seconds"] for r in reps]
        med = statistics.median(secs)
        table.append(
            {
                "run": name,
                "seconds_median": round(med, 2),
                "seconds_range": [round(min(secs), 2), round(max(secs), 2)],
                "throughput_vs_k0": round(base / med, 2),
                "calls": reps[0]["calls"],
                "max_in_flight": max(r["max_in_flight"] for r in reps),
                "demos_per_call": reps[0]["demos_per_call"],
                "failed": sum(r["failed"] for r in reps),  # over all repetitions
            }
        )
        print(json.dumps(table[-1]), flush=True)
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "select_many_cold_seconds": select_s,
                    "query_precision_agreement": agreement,
                    "rows": table,
                    "machine": machine(torch.get_num_threads()),
                    "load_average_at_end": os.getloadavg(),
                    "args": {k: str(v) for k, v in vars(args).items()},
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
