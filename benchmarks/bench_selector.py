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

Batched selection (``--batched``): the real selector on synthetic pools of
clustered, L2-normalised 384-d embeddings written into its embedding store
(no encoder in the timing: the scoring is what grows with the pool), 0-3
entities per sample and 1-3 per query. Per pool size, interleaved A B A B:
A = ``select(q)`` one query at a time (today's per-query cost), B =
``select_many`` over all queries; wall and process CPU ms per query, and
whether B's top-K equals A's. Then ``index = "ann"`` (usearch) on the same
pool: build seconds, ms per query and recall@K against the exact top-K.

    nice -n 10 python benchmarks/bench_selector.py --batched --skip-relevance --skip-speed
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch  # noqa: F401  (imported before start(), which pins its threads)
from harness import ROOT, parser, start
from refineg_clip_selector.cache import content_key
from refineg_clip_selector.scoring import (
    EntityIndex,
    entity_similarity,
    fuse,
    minmax,
    top_k,
)
from refineg_clip_selector.selector import ClipSimilaritySelector

from refineg_core.formats import load_dataset
from refineg_core.types import Entity, Sample

os.environ.setdefault("REFINEG_NO_PROGRESS", "1")

VARIANTS = {  # explicit options, so the rows do not change when a default does
    "random": {"variant": "random"},
    "text": {"variant": "text"},
    "entity (mean)": {"variant": "entity", "entity_agg": "mean"},
    "fused, entity_agg=mean": {"variant": "fused", "entity_agg": "mean"},
    "fused, entity_agg=mean, no_entities=renormalize": {
        "variant": "fused",
        "entity_agg": "mean",
        "no_entities": "renormalize",
    },
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
        rows.append(
            {
                "variant": name,
                "share_type_match": round(shared / n_demos, 4),
                "share_with_box": round(boxed / n_demos, 4),
                "entities_per_demo": round(n_ents / n_demos, 3),
                "index_s": round(index_s, 2),
                "embedded": sel.embedded_count,
                "ms_per_query": round(1000 * sel_s / len(queries), 2),
                "queries": len(queries),
                "pool": len(pool),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _random_unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def vectorised(qt, qe, qtypes, text, ents: EntityIndex, exclude, k):
    comps = {
        "text": minmax(text @ qt, exclude),
        "entity": minmax(entity_similarity(qe, qtypes, ents, type_bonus=0.2, agg="mean"), exclude),
    }
    scores = fuse(comps, {"text": 0.4, "entity": 0.6}, {"entity": "zero"})
    return top_k(scores, exclude, k)


def loop(qt, qe, qtypes, text, ent_lists, k):
    """What a straightforward implementation does: one Python iteration per (query, demo) pair."""
    t_raw, e_raw = [], []
    for i in range(len(text)):
        t_raw.append(float(np.dot(text[i], qt)))
        pairs = [
            float(np.dot(a, b)) + 0.2 * (ta == tb)
            for a, ta in zip(qe, qtypes, strict=True)
            for b, tb in ent_lists[i]
        ]
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
        qs = [
            (_random_unit(rng, 1, d)[0], _random_unit(rng, 2, d), rng.integers(0, 4, 2))
            for _ in range(max(loop_queries, vec_queries))
        ]
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
            *qs[0], text, ent_lists, k
        ), "vectorised and loop disagree"
        rows.append(
            {
                "pool": n,
                "entities": len(owner),
                "vectorised_ms": round(vec_ms, 2),
                "loop_ms": round(loop_ms, 1),
                "speedup": round(loop_ms / vec_ms, 1),
                "loop_queries": loop_queries,
                "vectorised_queries": vec_queries,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _clustered(rng, n: int, d: int, centers: np.ndarray) -> np.ndarray:
    x = centers[rng.integers(0, len(centers), n)] + 0.9 * rng.standard_normal((n, d))
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _synthetic(rng, prefix: str, n: int, lo: int, hi: int) -> list[Sample]:
    types = ("PER", "LOC", "ORG", "OTHER")
    out = []
    for i, c in enumerate(rng.integers(lo, hi + 1, n).tolist()):
        toks = tuple(f"{prefix}{i}w{j}" for j in range(6))
        ents = tuple(Entity(j, j + 1, types[int(rng.integers(0, 4))], toks[j]) for j in range(c))
        out.append(Sample(f"{prefix}{i}", toks, " ".join(toks), None, ents))
    return out


def _seeded_selector(strings_vecs, **options) -> ClipSimilaritySelector:
    sel = ClipSimilaritySelector(ClipSimilaritySelector.Options(cache_dir=None, **options))
    sel._text_encoder()  # the real MiniLM (its identity keys the store); nothing is encoded
    keys, vecs = strings_vecs
    sel._strings.add(keys, vecs)
    return sel


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def batched(
    sizes: list[int], n_queries: int, n_single: int, k: int, reps: int, candidates: int = 64
) -> list[dict]:
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((256, 384)).astype(np.float32)
    queries = _synthetic(rng, "q", n_queries, 1, 3)
    rows = []
    for n in sizes:
        pool = _synthetic(rng, "p", n, 0, 3)
        strings = [s.text for s in (*pool, *queries)]
        strings += [e.text for s in (*pool, *queries) for e in s.entities]
        seeded = ([content_key(t) for t in strings], _clustered(rng, len(strings), 384, centers))
        exact = _seeded_selector(seeded)
        exact.index(pool)
        exact.select_many(queries[:8], k)  # warm-up
        single, many = [], []
        for _ in range(reps):  # A B A B
            picks_a, wall, cpu = _timed(
                lambda s=exact: [s.select(q, k) for q in queries[:n_single]]
            )
            single.append((1000 * wall / n_single, 1000 * cpu / n_single))
            picks_b, wall, cpu = _timed(lambda s=exact: s.select_many(queries, k))
            many.append((1000 * wall / n_queries, 1000 * cpu / n_queries))
        same = sum(
            [d.sample.id for d in a] == [d.sample.id for d in b]
            for a, b in zip(picks_a, picks_b, strict=False)
        )
        ann = _seeded_selector(seeded, index="ann", ann_candidates=candidates)
        _, build_s, _ = _timed(lambda s=ann, p=pool: s.index(p))
        ann.select_many(queries[:8], k)
        ann_ms = []
        for _ in range(reps):
            picks_c, wall, cpu = _timed(lambda s=ann: s.select_many(queries, k))
            ann_ms.append((1000 * wall / n_queries, 1000 * cpu / n_queries))
        recall = np.mean(
            [
                len({d.sample.id for d in a} & {d.sample.id for d in b}) / max(1, len(b))
                for a, b in zip(picks_c, picks_b, strict=True)
            ]
        )
        med = lambda xs, i: round(float(np.median([x[i] for x in xs])), 2)  # noqa: E731
        span = lambda xs, i: [round(min(x[i] for x in xs), 2), round(max(x[i] for x in xs), 2)]  # noqa: E731
        rows.append(
            {
                "pool": n,
                "pool_entities": int(exact._entities.vectors_t.shape[1]),
                "queries": n_queries,
                "k": k,
                "reps": reps,
                "per_query_wall_ms": med(single, 0),
                "per_query_wall_range": span(single, 0),
                "per_query_cpu_ms": med(single, 1),
                "batched_wall_ms": med(many, 0),
                "batched_wall_range": span(many, 0),
                "batched_cpu_ms": med(many, 1),
                "speedup_wall": round(med(single, 0) / med(many, 0), 1),
                "exact_topk_equal": f"{same}/{min(n_single, n_queries)}",
                "ann_candidates": candidates,
                "ann_build_s": round(build_s, 1),
                "ann_wall_ms": med(ann_ms, 0),
                "ann_wall_range": span(ann_ms, 0),
                "ann_cpu_ms": med(ann_ms, 1),
                f"ann_recall_at_{k}": round(float(recall), 4),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = parser(__doc__, out="selector.json", threads=2, reps=2)
    ap.add_argument("--queries", type=int, default=300, help="dev queries (0 = all 1,500)")
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument(
        "--cache",
        type=Path,
        default=ROOT / "runs" / "bench-selector-cache",
        help="the selector's embedding cache (default runs/bench-selector-cache)",
    )
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--loop-queries", type=int, default=3)
    ap.add_argument("--vec-queries", type=int, default=30)
    ap.add_argument("--skip-relevance", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--batched", action="store_true", help="batched + ANN selection benchmark")
    ap.add_argument("--batched-sizes", default="1000,10000,100000")
    ap.add_argument("--batched-queries", type=int, default=300)
    ap.add_argument("--single-queries", type=int, default=30)
    ap.add_argument("--ann-candidates", type=int, default=256)
    args = ap.parse_args()
    session = start(args)  # fixes torch's threads (torch is imported above)
    out = {}
    if args.batched:
        sizes = [int(s) for s in args.batched_sizes.split(",")]
        out["batched"] = batched(
            sizes, args.batched_queries, args.single_queries, args.k, args.reps, args.ann_candidates
        )
    if not args.skip_speed:
        out["speed"] = speed(
            [int(s) for s in args.sizes.split(",")], args.k, args.loop_queries, args.vec_queries
        )
    if not args.skip_relevance:
        out["relevance"] = relevance(args.data / "twitter-gmner", args.queries, args.k, args.cache)
    session.write(out)


if __name__ == "__main__":
    main()
