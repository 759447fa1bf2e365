"""Context selector relevance on Twitter-GMNER and selection speed vs a per-pair loop.

Relevance: dev tweets are queries, the train split is the pool, K demos per
query. For each variant we report the share of chosen demos that share at
least one entity type with the query, the share that contain at least one
box, and the mean number of entities per demo. Queries use their *gold*
entities (at grounding time they would be the tagger's predictions). Image
similarity needs real CLIP weights, which cannot be downloaded here, so it is
not measured.

Speed: ms per query for pools of 1k/10k/100k cached (random, L2-normalised)
embeddings: the selector's vectorised scoring (text + entity similarity,
per-query min-max, fusion, argpartition top-K) against a straightforward
per-pair Python loop doing the same arithmetic, in the same run.

    nice -n 10 python benchmarks/bench_selector.py              # bounded (300 dev queries)
    nice -n 10 python benchmarks/bench_selector.py --queries 0  # all 1,500 dev queries
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from _common import ROOT
from refineg_clip_selector.scoring import (
    EntityIndex,
    entity_similarity,
    fuse,
    minmax,
    top_k,
)
from refineg_clip_selector.selector import ClipSimilaritySelector

from refineg_core.formats import load_dataset

os.environ.setdefault("REFINEG_NO_PROGRESS", "1")

VARIANTS = {  # explicit options, so the rows do not change when a default does
    "random": {"variant": "random"},
    "text": {"variant": "text"},
    "entity (mean)": {"variant": "entity", "entity_agg": "mean"},
    "fused, entity_agg=mean": {"variant": "fused", "entity_agg": "mean"},
    "fused, entity_agg=mean, no_entities=renormalize": {
        "variant": "fused", "entity_agg": "mean", "no_entities": "renormalize"},
    "fused, entity_agg=max (default)": {"variant": "fused", "entity_agg": "max"},
}


def relevance(data: Path, n_queries: int, k: int, cache: Path) -> list[dict]:
    pool = load_dataset(data / "train.txt").samples
    dev = load_dataset(data / "dev.txt").samples
    queries = dev if n_queries <= 0 else dev[:n_queries]
    rows = []
    for name, opts in VARIANTS.items():
        sel = ClipSimilaritySelector(ClipSimilaritySelector.Options(cache_dir=cache, **opts))
        t0 = time.perf_counter()
        sel.index(pool)
        index_s = time.perf_counter() - t0
        shared = boxed = n_demos = n_ents = 0
        t0 = time.perf_counter()
        for q in queries:
            qtypes = {e.type for e in q.entities}
            for d in sel.select(q, k):
                n_demos += 1
                dtypes = {e.type for e in d.sample.entities}
                shared += bool(qtypes & dtypes)
                boxed += any(e.boxes for e in d.sample.entities)
                n_ents += len(d.sample.entities)
        sel_s = time.perf_counter() - t0
        rows.append({
            "variant": name,
            "share_type_match": round(shared / n_demos, 4),
            "share_with_box": round(boxed / n_demos, 4),
            "entities_per_demo": round(n_ents / n_demos, 3),
            "index_s": round(index_s, 2),
            "embedded": sel.embedded_count,
            "ms_per_query": round(1000 * sel_s / len(queries), 2),
            "queries": len(queries),
            "pool": len(pool),
        })
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _random_unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def vectorised(qt, qe, qtypes, text, ents: EntityIndex, exclude, k):
    comps = {"text": minmax(text @ qt, exclude),
             "entity": minmax(entity_similarity(qe, qtypes, ents, type_bonus=0.2, agg="mean"),
                              exclude)}
    scores = fuse(comps, {"text": 0.4, "entity": 0.6}, {"entity": "zero"})
    return top_k(scores, exclude, k)


def loop(qt, qe, qtypes, text, ent_lists, k):
    """What a straightforward implementation does: one Python iteration per (query, demo) pair."""
    t_raw, e_raw = [], []
    for i in range(len(text)):
        t_raw.append(float(np.dot(text[i], qt)))
        pairs = [float(np.dot(a, b)) + 0.2 * (ta == tb)
                 for a, ta in zip(qe, qtypes, strict=True) for b, tb in ent_lists[i]]
        e_raw.append(sum(pairs) / len(pairs) if pairs else None)
    t_lo, t_hi = min(t_raw), max(t_raw)
    have = [v for v in e_raw if v is not None]
    e_lo, e_hi = min(have), max(have)
    scores = []
    for i in range(len(text)):
        t = (t_raw[i] - t_lo) / (t_hi - t_lo)
        e = 0.0 if e_raw[i] is None else (e_raw[i] - e_lo) / (e_hi - e_lo)
        scores.append((0.4 * t + 0.6 * e, i))
    return [i for _, i in sorted(scores, reverse=True)[:k]]


def speed(sizes: list[int], k: int, loop_queries: int, vec_queries: int) -> list[dict]:
    rng = np.random.default_rng(0)
    d = 384
    rows = []
    for n in sizes:
        text = _random_unit(rng, n, d)
        counts = rng.integers(0, 4, n)  # 0..3 entities per sample, like tweets
        owner = np.repeat(np.arange(n), counts)
        evecs = _random_unit(rng, len(owner), d)
        etypes = rng.integers(0, 4, len(owner))
        ents = EntityIndex.build(evecs, owner, etypes, n)
        ent_lists = [[] for _ in range(n)]
        for j, o in enumerate(owner):
            ent_lists[o].append((evecs[j], int(etypes[j])))
        exclude = np.zeros(n, dtype=bool)
        qs = [(_random_unit(rng, 1, d)[0], _random_unit(rng, 2, d), rng.integers(0, 4, 2))
              for _ in range(max(loop_queries, vec_queries))]
        vectorised(*qs[0], text, ents, exclude, k)  # warm-up
        t0 = time.perf_counter()
        for q in qs[:vec_queries]:
            vectorised(*q, text, ents, exclude, k)
        vec_ms = 1000 * (time.perf_counter() - t0) / vec_queries
        t0 = time.perf_counter()
        for q in qs[:loop_queries]:
            loop(*q, text, ent_lists, k)
        loop_ms = 1000 * (time.perf_counter() - t0) / loop_queries
        assert vectorised(*qs[0], text, ents, exclude, k).tolist() == loop(
            *qs[0], text, ent_lists, k), "vectorised and loop disagree"
        rows.append({"pool": n, "entities": len(owner), "vectorised_ms": round(vec_ms, 2),
                     "loop_ms": round(loop_ms, 1), "speedup": round(loop_ms / vec_ms, 1),
                     "loop_queries": loop_queries, "vectorised_queries": vec_queries})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/twitter-gmner")
    ap.add_argument("--queries", type=int, default=300, help="dev queries (0 = all 1,500)")
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/refineg-bench-selector-cache"))
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--loop-queries", type=int, default=3)
    ap.add_argument("--vec-queries", type=int, default=30)
    ap.add_argument("--skip-relevance", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="write all rows as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = {"speed": speed([int(s) for s in args.sizes.split(",")], args.k, args.loop_queries,
                          args.vec_queries)}
    if not args.skip_relevance:
        out["relevance"] = relevance(args.data, args.queries, args.k, args.cache)
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
