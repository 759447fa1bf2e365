"""Which ANN library for the selector's ``index = "ann"``: build time, query time, recall.

100k (``N``) clustered, L2-normalised 384-d vectors (200 centres, noise 0.9),
300 queries from the same distribution, K = 64 neighbours, inner product,
2 threads; recall@K against the exact top-K of a dense product. HNSW in all
three: faiss-cpu ``IndexHNSWFlat`` (M 32, efSearch 128), hnswlib (M 16,
ef_construction 100, ef 128), usearch (connectivity 16, expansion_add 100,
expansion_search 128).

    nice -n 5 python benchmarks/bench_ann_libs.py 100000
"""

from __future__ import annotations

import sys
import time

import numpy as np

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


def report(name: str, build_s: float, query_s: float, found, exact) -> None:
    recall = np.mean([len(set(a) & set(b)) / K for a, b in zip(found, exact, strict=True)])
    ms = query_s * 1000 / N_QUERIES
    print(
        f"{name}: build {build_s:.1f} s, query {ms:.2f} ms/q, recall@{K} {recall:.3f}", flush=True
    )


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    x, q = data(n)
    d = x.shape[1]
    t = time.perf_counter()
    exact = np.argpartition(-(q @ x.T), K, axis=1)[:, :K]
    print(f"exact: {1000 * (time.perf_counter() - t) / N_QUERIES:.2f} ms/q", flush=True)

    import faiss

    faiss.omp_set_num_threads(2)
    t = time.perf_counter()
    ix = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
    ix.add(x)
    build = time.perf_counter() - t
    ix.hnsw.efSearch = 128
    t = time.perf_counter()
    found = ix.search(q, K)[1]
    report("faiss-cpu HNSW", build, time.perf_counter() - t, found, exact)

    import hnswlib

    t = time.perf_counter()
    h = hnswlib.Index(space="ip", dim=d)
    h.init_index(max_elements=n, ef_construction=100, M=16)
    h.set_num_threads(2)
    h.add_items(x)
    build = time.perf_counter() - t
    h.set_ef(128)
    t = time.perf_counter()
    found, _ = h.knn_query(q, k=K)
    report("hnswlib", build, time.perf_counter() - t, found, exact)

    from usearch.index import Index

    t = time.perf_counter()
    u = Index(
        ndim=d, metric="ip", dtype="f32", connectivity=16, expansion_add=100, expansion_search=128
    )
    u.add(np.arange(n), x, threads=2)
    build = time.perf_counter() - t
    t = time.perf_counter()
    found = u.search(q, K, threads=2).keys
    report("usearch", build, time.perf_counter() - t, found, exact)


if __name__ == "__main__":
    main()
