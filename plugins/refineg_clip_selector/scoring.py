"""Vectorised similarity, per-query normalisation, fusion and top-K (pure numpy).

Kept apart from the selector so the benchmark times exactly the code the
selector runs. Missing values are NaN throughout: a pool sample without an
image or without entities has NaN for that component, and fusion decides what
NaN means (see ``fuse``).
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs
import numpy as np


@attrs.frozen(eq=False)
class EntityIndex:
    """All pool entities flattened: name embeddings, owner pool rows and type ids.

    Entities are sorted by owner, so each owner's entities are one contiguous
    segment starting at ``starts[i]`` (its owner is ``owner[starts[i]]``).
    """

    vectors_t: np.ndarray  # (d, M) float32, L2-normalised columns (see ``build``)
    owner: np.ndarray  # (M,) int64, pool row of each entity, non-decreasing
    type_id: np.ndarray  # (M,) int64
    n_pool: int
    #: First entity of each owner's segment (computed once, reused by every query).
    starts: np.ndarray = attrs.field(
        init=False,
        default=attrs.Factory(
            lambda self: (
                np.flatnonzero(np.r_[True, self.owner[1:] != self.owner[:-1]])
                if len(self.owner)
                else np.zeros(0, dtype=np.int64)
            ),
            takes_self=True,
        ),
    )
    counts: np.ndarray = attrs.field(
        init=False,
        default=attrs.Factory(
            lambda self: np.diff(np.r_[self.starts, len(self.owner)]), takes_self=True
        ),
    )

    @classmethod
    def build(
        cls, vectors: np.ndarray, owner: np.ndarray, type_id: np.ndarray, n_pool: int
    ) -> EntityIndex:
        """Store the (M, d) name vectors transposed and contiguous: ``q @ V`` with a
        contiguous (d, M) matrix is several times faster than through a ``.T`` view."""
        order = np.argsort(owner, kind="stable")
        vecs = np.asarray(vectors, dtype=np.float32)[order]
        return cls(
            np.ascontiguousarray(vecs.T),
            np.asarray(owner, dtype=np.int64)[order],
            np.asarray(type_id, dtype=np.int64)[order],
            n_pool,
        )


def entity_similarity(
    query_vecs: np.ndarray,
    query_types: np.ndarray,
    index: EntityIndex,
    *,
    type_bonus: float,
    agg: str,
) -> np.ndarray:
    """Per pool row: mean or max over (query entity, pool entity) pairs of cos + bonus.

    Mean (not the release's sum) so a demo with many entities is not favoured
    just for having them. NaN for rows without entities. One query; see
    ``entity_similarity_many`` for a batch.
    """
    if len(query_vecs) == 0:
        return np.full(index.n_pool, np.nan, dtype=np.float32)
    return entity_similarity_many(
        query_vecs, query_types, np.array([len(query_vecs)]), index, type_bonus=type_bonus, agg=agg
    )[0]


def entity_similarity_many(
    query_vecs: np.ndarray,
    query_types: np.ndarray,
    lengths: np.ndarray,
    index: EntityIndex,
    *,
    type_bonus: float,
    agg: str,
) -> np.ndarray:
    """``entity_similarity`` for a batch: one (queries, pool) matrix from one product.

    ``query_vecs``/``query_types`` hold the entities of all queries, query after
    query; ``lengths[i] >= 1`` is how many belong to query ``i``. Every step is
    the one-query arithmetic done per row (the reductions add rows in the same
    order), so a row equals the one-query result on the same product.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) and lengths.min() < 1:
        raise ValueError("every query in a batch needs at least one entity")
    out = np.full((len(lengths), index.n_pool), np.nan, dtype=np.float32)
    if len(lengths) == 0 or index.vectors_t.shape[1] == 0:
        return out
    sims = query_vecs @ index.vectors_t  # (sum(lengths), M)
    if type_bonus:
        sims = sims + type_bonus * (query_types[:, None] == index.type_id[None, :])
    first = np.r_[0, np.cumsum(lengths)[:-1]]
    starts = index.starts
    owners = index.owner[starts]
    if agg == "max":
        per_query = np.maximum.reduceat(sims, first, axis=0)
        out[:, owners] = np.maximum.reduceat(per_query, starts, axis=1)
    else:
        per_query = np.add.reduceat(sims, first, axis=0)
        out[:, owners] = np.add.reduceat(per_query, starts, axis=1) / (
            lengths[:, None] * index.counts[None, :]
        )
    return out


def minmax(values: np.ndarray, exclude: np.ndarray) -> np.ndarray:
    """Min-max over this query's candidates (excluded rows and NaN ignored) into 0..1.

    Per query, not global: a query whose best match has cosine 0.4 still gets
    a full 0..1 spread, so the fusion weights mean the same for every query. A
    constant component carries no information and becomes 0 for all rows.
    """
    v = values.astype(np.float32, copy=True)
    v[exclude] = np.nan
    finite = ~np.isnan(v)
    if not finite.any():
        return v
    lo, hi = v[finite].min(), v[finite].max()
    if hi - lo <= 1e-12:
        v[finite] = 0.0
        return v
    return (v - lo) / (hi - lo)


def fuse(
    components: Mapping[str, np.ndarray],
    weights: Mapping[str, float],
    missing: Mapping[str, str] | None = None,
) -> np.ndarray:
    """Weighted combination of normalised components; NaN where a row has none of them.

    Per component, ``missing[name]`` says what a NaN (the pool row lacks it) means:
    ``"renormalize"`` (default): the row is scored on the components it has, as
    the weighted mean over those, so its score stays on the same 0..1 scale;
    ``"zero"``: the component counts as the worst value (0) with its full weight,
    i.e. rows that have it are preferred.
    """
    missing = missing or {}
    num: np.ndarray | None = None
    den: np.ndarray | None = None
    for name, vals in components.items():
        w = float(weights.get(name, 0.0))
        if w <= 0:
            continue
        have = ~np.isnan(vals)
        part = w * np.where(have, vals, 0.0)
        counted = np.ones_like(have) if missing.get(name) == "zero" else have
        num = part if num is None else num + part
        den = w * counted if den is None else den + w * counted
    if num is None or den is None:
        raise ValueError("no component with a positive weight")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan).astype(np.float32)


def top_k(scores: np.ndarray, exclude: np.ndarray, k: int) -> np.ndarray:
    """Row indices of the k best scores, best first; excluded rows never, NaN rows last.

    ``np.argpartition`` makes this O(N) instead of a full sort; the chosen k are
    then ordered by score, ties by row, so the order is deterministic.
    """
    ranked = np.where(np.isnan(scores), -1.0, scores).astype(np.float64)
    ranked[exclude] = -np.inf
    available = int((~exclude).sum())
    k = min(k, available)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    idx = np.argpartition(-ranked, k - 1)[:k] if k < len(ranked) else np.arange(len(ranked))
    idx = idx[np.isfinite(ranked[idx])]
    return idx[np.lexsort((idx, -ranked[idx]))]
