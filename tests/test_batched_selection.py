"""Batched demonstration selection (``select_many``) against today's per-query scoring.

Exactness is checked on the same embeddings in two ways:

* dyadic embeddings (multiples of 1/8) written into the selector's real
  embedding cache: every dot product is then exact in float32 whatever order a
  BLAS kernel adds in, so the batched path must give *bit-identical* demos,
  scores and components to a straight copy of the pre-batching per-query code;
* the real MiniLM embeddings: batched float32 products may differ from a
  per-query product in the last bit (BLAS adds in a different order for a
  different batch shape), so ids and order must be equal and scores equal to
  1e-6.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
from refineg_clip_selector.cache import content_key
from refineg_clip_selector.scoring import (
    EntityIndex,
    entity_similarity_many,
    fuse,
    minmax,
    top_k,
)
from refineg_clip_selector.selector import COMPONENTS, ClipSimilaritySelector

from refineg_core.formats import load_dataset
from refineg_core.interfaces import ContextSelector
from refineg_core.types import Demonstration, Entity, Sample


@functools.cache
def twitter(path: Path, n: int) -> tuple[Sample, ...]:
    return load_dataset(path).samples[:n]


def todays_entity_similarity(query_vecs, query_types, index: EntityIndex, *, type_bonus, agg):
    """The one-query entity similarity exactly as it was before batching."""
    out = np.full(index.n_pool, np.nan, dtype=np.float32)
    if len(query_vecs) == 0 or index.vectors_t.shape[1] == 0:
        return out
    sims = query_vecs @ index.vectors_t
    if type_bonus:
        sims = sims + type_bonus * (query_types[:, None] == index.type_id[None, :])
    starts = index.starts
    owners = index.owner[starts]
    if agg == "max":
        out[owners] = np.maximum.reduceat(sims.max(axis=0), starts)
    else:
        out[owners] = np.add.reduceat(sims.sum(axis=0), starts) / (len(query_vecs) * index.counts)
    return out


def todays_select(sel: ClipSimilaritySelector, query: Sample, k: int) -> list[Demonstration]:
    """``select`` as it was before batching (text + entity), on the selector's embeddings."""
    dim = sel._text_encoder().dim
    exclude = sel._exclude(query)
    raw = {"text": sel._text_vecs @ sel._strings.get([content_key(query.text)], dim)[0]}
    if sel._needs("entity") and query.entities:
        qv = sel._strings.get([content_key(e.text) for e in query.entities], dim)
        qt = np.asarray([sel._type_ids.get(e.type, -1) for e in query.entities])
        raw["entity"] = todays_entity_similarity(
            qv, qt, sel._entities, type_bonus=sel.options.type_bonus, agg=sel.options.entity_agg
        )
    if sel.options.variant in ("text", "entity"):
        v = sel.options.variant
        raw = {v: raw[v]} if v in raw else {"text": raw["text"]}
    normed = {n: minmax(v, exclude) for n, v in raw.items()}
    weights = {"text": sel.options.text_weight, "entity": sel.options.entity_weight}
    if len(normed) == 1:
        weights = {next(iter(normed)): 1.0}
    scores = fuse(normed, weights, {"entity": sel.options.no_entities})
    demos = []
    for i in top_k(scores, exclude, k):
        comps = {}
        for name in COMPONENTS:
            if name in normed and not np.isnan(normed[name][i]):
                comps[name] = float(normed[name][i])
                comps[f"{name}_raw"] = float(raw[name][i])
        score = float(scores[i]) if not np.isnan(scores[i]) else 0.0
        demos.append(Demonstration(sel._pool[i], score, comps))
    return demos


def as_tuples(demos: list[Demonstration]) -> list[tuple]:
    return [(d.sample.id, d.score, dict(d.components)) for d in demos]


def query_set(pool: tuple[Sample, ...], dev: tuple[Sample, ...]) -> list[Sample]:
    """Dev queries with and without entities, plus a pool member and a case/space duplicate."""
    member = next(s for s in pool if s.entities)
    dup = Sample("dup-q", member.tokens, "  " + member.text.upper(), None, member.entities)
    unknown_type = Sample(
        "odd", ("Foo", "Bar"), "Foo Bar", None, (Entity(0, 2, "NEWTYPE", "Foo Bar"),)
    )
    return [*dev, member, dup, unknown_type]


@pytest.fixture
def corpus(twitter_dir):
    pool = twitter(twitter_dir / "train.txt", 400)
    dev = twitter(twitter_dir / "dev.txt", 60)
    return pool, query_set(pool, dev)


def dyadic_selector(tmp_path, minilm_path, strings, **options) -> ClipSimilaritySelector:
    """A selector whose cache already holds exact dyadic vectors for ``strings``."""
    sel = ClipSimilaritySelector(
        ClipSimilaritySelector.Options(text_model=minilm_path, cache_dir=tmp_path, **options)
    )
    enc = sel._text_encoder()
    keys = sorted({content_key(s) for s in strings})
    rng = np.random.default_rng(7)
    vecs = rng.integers(-4, 5, (len(keys), enc.dim)).astype(np.float32) / 8
    sel._strings.add(keys, vecs)
    return sel


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"entity_agg": "mean", "type_bonus": 0.3},
        {"no_entities": "renormalize", "entity_weight": 0.0},
        {"variant": "entity"},
        {"variant": "text"},
    ],
    ids=["fused-max", "fused-mean", "text-weight-only", "entity", "text"],
)
def test_select_many_bit_identical_to_todays_scoring(tmp_path, minilm_path, corpus, options):
    pool, queries = corpus
    strings = [s.text for s in (*pool, *queries)]
    strings += [e.text for s in (*pool, *queries) for e in s.entities]
    sel = dyadic_selector(tmp_path, minilm_path, strings, **options)
    sel.index(pool)
    assert sel.embedded_count == 0  # every vector came from the dyadic cache
    batched = sel.select_many(queries, 5)
    assert len(batched) == len(queries)
    for query, got in zip(queries, batched, strict=True):
        assert as_tuples(got) == as_tuples(todays_select(sel, query, 5)), query.id
    member, dup = queries[-3], queries[-2]
    for q in (member, dup):  # never the query itself, nor a duplicate of its text
        ids = {d.sample.id for d in batched[queries.index(q)]}
        assert member.id not in ids


def test_select_many_small_blocks_same_as_one_block(tmp_path, minilm_path, corpus):
    pool, queries = corpus
    strings = [s.text for s in (*pool, *queries)]
    strings += [e.text for s in (*pool, *queries) for e in s.entities]
    one = dyadic_selector(tmp_path / "a", minilm_path, strings)
    tiny = dyadic_selector(tmp_path / "b", minilm_path, strings, block_mb=0.05)
    one.index(pool)
    tiny.index(pool)
    assert len(tiny._blocks(queries)) > 1 and len(one._blocks(queries)) == 1
    assert [as_tuples(d) for d in one.select_many(queries, 4)] == [
        as_tuples(d) for d in tiny.select_many(queries, 4)
    ]


def test_select_many_real_minilm_matches_per_query(tmp_path, minilm_path, corpus):
    pool, queries = corpus
    sel = ClipSimilaritySelector(
        ClipSimilaritySelector.Options(text_model=minilm_path, cache_dir=tmp_path)
    )
    sel.index(pool)
    encoded = []
    original = sel._text.encode

    def counting(texts, **kw):
        encoded.append(len(texts))
        return original(texts, **kw)

    sel._text.encode = counting  # count encoder passes, the real encoder still runs
    batched = sel.select_many(queries, 3)
    assert len(encoded) == 1  # one encoder pass for every query text and entity name
    for query, got in zip(queries, batched, strict=True):
        ref = todays_select(sel, query, 3)  # same (remembered) query embeddings
        assert [d.sample.id for d in got] == [d.sample.id for d in ref], query.id
        assert [d.score for d in got] == pytest.approx([d.score for d in ref], abs=1e-6)
        assert [d.sample.id for d in sel.select(query, 3)] == [d.sample.id for d in got]


def test_entity_similarity_many_rows_equal_one_query_rows():
    rng = np.random.default_rng(0)
    n, d = 50, 16
    owner = np.repeat(np.arange(n), rng.integers(0, 4, n))
    vecs = rng.integers(-4, 5, (len(owner), d)).astype(np.float32) / 8
    index = EntityIndex.build(vecs, owner, rng.integers(0, 3, len(owner)), n)
    lengths = np.array([1, 3, 2])
    qv = rng.integers(-4, 5, (lengths.sum(), d)).astype(np.float32) / 8
    qt = rng.integers(0, 3, lengths.sum())
    for agg in ("max", "mean"):
        rows = entity_similarity_many(qv, qt, lengths, index, type_bonus=0.2, agg=agg)
        first = np.r_[0, np.cumsum(lengths)[:-1]]
        for i, (lo, m) in enumerate(zip(first, lengths, strict=True)):
            ref = todays_entity_similarity(
                qv[lo : lo + m], qt[lo : lo + m], index, type_bonus=0.2, agg=agg
            )
            np.testing.assert_array_equal(rows[i], ref)  # NaN where a row has no entity
    with pytest.raises(ValueError, match="at least one entity"):
        entity_similarity_many(qv, qt, np.array([0, 6]), index, type_bonus=0.2, agg="max")


def test_default_select_many_loops_over_select():
    class Third(ContextSelector):
        def index(self, pool):
            self.pool = list(pool)

        def select(self, query, k):
            return [Demonstration(p, 1.0) for p in self.pool if p.id != query.id][:k]

    a = Sample("a", ("x",), "x")
    b = Sample("b", ("y",), "y")
    sel = Third()
    sel.index([a, b])
    assert sel.select_many([a, b], 1) == [[Demonstration(b, 1.0)], [Demonstration(a, 1.0)]]


def test_query_memory_is_bounded(tmp_path, minilm_path):
    from refineg_clip_selector.cache import EmbeddingStore

    store = EmbeddingStore(None, "strings", "x", max_recent=3)
    store.remember(["a", "b", "c", "d"], np.eye(4, dtype=np.float32))
    assert "a" not in store and "d" in store
    np.testing.assert_array_equal(store.get(["d"], 4)[0], np.eye(4)[3])


def test_ann_index_recall_exclusions_and_disk_cache(tmp_path, minilm_path):
    """``index = "ann"`` on 3,000 pool samples with clustered embeddings: the same
    top-K as exact for nearly every query, never the query itself, and the HNSW
    graphs are read back from the cache by the next selector."""
    pytest.importorskip("usearch", reason="pip install 'refineg[ann]'")
    rng = np.random.default_rng(3)
    types = ("PER", "LOC", "ORG", "OTHER")

    def synthetic(prefix, n, lo):
        out = []
        for i, c in enumerate(rng.integers(lo, 4, n).tolist()):
            toks = tuple(f"{prefix}{i}w{j}" for j in range(5))
            ents = tuple(
                Entity(j, j + 1, types[int(rng.integers(0, 4))], toks[j]) for j in range(c)
            )
            out.append(Sample(f"{prefix}{i}", toks, " ".join(toks), None, ents))
        return out

    pool = synthetic("p", 3000, 0)
    queries = [*synthetic("q", 60, 1), pool[5]]  # the last one is a pool member
    strings = [s.text for s in (*pool, *queries)]
    strings += [e.text for s in (*pool, *queries) for e in s.entities]
    centers = rng.standard_normal((40, 384)).astype(np.float32)
    vecs = centers[rng.integers(0, 40, len(strings))] + rng.standard_normal(
        (len(strings), 384)
    ).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)

    def make(index):
        sel = ClipSimilaritySelector(
            ClipSimilaritySelector.Options(
                text_model=minilm_path, cache_dir=tmp_path, index=index, ann_sample=256
            )
        )
        sel._text_encoder()
        sel._strings.remember([content_key(s) for s in strings], vecs)
        sel.index(pool)
        return sel

    exact = make("exact").select_many(queries, 5)
    ann_sel = make("ann")
    assert all(not a.loaded for a in ann_sel._ann.values())  # built, then saved
    ann = ann_sel.select_many(queries, 5)
    recall = np.mean(
        [
            len({d.sample.id for d in a} & {d.sample.id for d in e}) / len(e)
            for a, e in zip(ann, exact, strict=True)
        ]
    )
    assert recall >= 0.95
    assert pool[5].id not in {d.sample.id for d in ann[-1]}
    again = make("ann")
    assert all(a.loaded for a in again._ann.values())  # read back from the cache
    assert [[d.sample.id for d in x] for x in again.select_many(queries, 5)] == [
        [d.sample.id for d in x] for x in ann
    ]


def test_ann_index_search_one_and_many_queries(tmp_path):
    pytest.importorskip("usearch", reason="pip install 'refineg[ann]'")
    from refineg_clip_selector.ann import AnnIndex

    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((200, 16)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    index = AnnIndex(vecs, cache_dir=tmp_path, name="t")
    [one] = index.search(vecs[3:4], 5)  # a single query comes back flat from usearch
    assert one[0] == 3 and len(one) == 5
    many = index.search(vecs[:4], 500)  # more than the index holds: all of it
    assert [m[0] for m in many] == [0, 1, 2, 3] and all(len(m) == 200 for m in many)
    assert index.search(vecs[:0], 5) == []
