"""Which ANN library for the selector's ``index = "ann"``: build time, query time, recall.

100k (``--n``) clustered, L2-normalised 384-d vectors (200 centres, noise
0.9), 300 queries from the same distribution, K = 64 neighbours, inner
product, ``--threads`` threads (2 by default); recall@K against the exact
top-K of a dense product. HNSW in all three: faiss-cpu ``IndexHNSWFlat``
(M 32, efSearch 128), hnswlib (M 16, ef_construction 100, ef 128), usearch
(connectivity 16, expansion_add 100, expansion_search 128). A library that is
not installed is recorded as skipped.

    nice -n 5 python benchmarks/bench_ann_libs.py --n 100000
"""

from __future__ import annotations

import time

import numpy as np
from harness import parser, start

K = 64
N_QUERIES = 300


def data(n: int, d: int = 384, centres: int = 200) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    c = rng.standard_normal((centres, d)).astype(np.float32)
    x = c[rng.integers(0, centres, n)] + 0.9 * rng.standard_normal((n, d)).astype(np.float32)
    q = c[rng.integers(0, centres, N_QUERIES)]
    q = q + 0.9 * rng.standard_normal((N_QUERIES, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return x, q


def report(name: str, build_s: float, query_s: float, found, exact) -> dict:
    recall = np.mean([len(set(a) & set(b)) / K for a, b in zip(found, exact, strict=True)])
    ms = query_s * 1000 / N_QUERIES
    print(
        f"{name}: build {build_s:.1f} s, query {ms:.2f} ms/q, recall@{K} {recall:.3f}", flush=True
    )
    return {"library": name, "build_s": build_s, "ms_per_query": ms, f"recall_at_{K}": recall}


def faiss_hnsw(x: np.ndarray, q: np.ndarray, threads: int):
    """(build seconds, query seconds, ids) of faiss-cpu ``IndexHNSWFlat``."""
    import faiss

    faiss.omp_set_num_threads(threads)
    t = time.perf_counter()
    ix = faiss.IndexHNSWFlat(x.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    ix.add(x)
    build = time.perf_counter() - t
    ix.hnsw.efSearch = 128
    t = time.perf_counter()
    found = ix.search(q, K)[1]
    return build, time.perf_counter() - t, found


def hnswlib_hnsw(x: np.ndarray, q: np.ndarray, threads: int):
    import hnswlib

    t = time.perf_counter()
    h = hnswlib.Index(space="ip", dim=x.shape[1])
    h.init_index(max_elements=len(x), ef_construction=100, M=16)
    h.set_num_threads(threads)
    h.add_items(x)
    build = time.perf_counter() - t
    h.set_ef(128)
    t = time.perf_counter()
    found, _ = h.knn_query(q, k=K)
    return build, time.perf_counter() - t, found


def usearch_hnsw(x: np.ndarray, q: np.ndarray, threads: int):
    from usearch.index import Index

    t = time.perf_counter()
    u = Index(
        ndim=x.shape[1],
        metric="ip",
        dtype="f32",
        connectivity=16,
        expansion_add=100,
        expansion_search=128,
    )
    u.add(np.arange(len(x)), x, threads=threads)
    build = time.perf_counter() - t
    t = time.perf_counter()
    found = u.search(q, K, threads=threads).keys
    return build, time.perf_counter() - t, found


def main() -> None:
    ap = parser(__doc__, out="ann_libs.json", threads=2, reps=1)
    ap.add_argument("--n", type=int, default=100_000, help="vectors in the index")
    args = ap.parse_args()
    session = start(args)
    n, threads = args.n, session.threads
    rows = []
    x, q = data(n)
    t = time.perf_counter()
    exact = np.argpartition(-(q @ x.T), K, axis=1)[:, :K]
    exact_ms = 1000 * (time.perf_counter() - t) / N_QUERIES
    print(f"exact: {exact_ms:.2f} ms/q", flush=True)

    for name, build_and_search in (
        ("faiss-cpu HNSW", faiss_hnsw),
        ("hnswlib", hnswlib_hnsw),
        ("usearch", usearch_hnsw),
    ):
        try:
            build, query_s, found = build_and_search(x, q, threads)
        except ImportError as exc:  # a comparison library is not a dependency
            print(f"{name}: skipped ({exc})", flush=True)
            rows.append({"library": name, "skipped": str(exc)})
            continue
        rows.append(report(name, build, query_s, found, exact))

    session.write(
        {"n": n, "queries": N_QUERIES, "k": K, "exact_ms_per_query": exact_ms, "rows": rows}
    )


if __name__ == "__main__":
    main()
