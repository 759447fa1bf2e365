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
    #: Per depth c >= 1: (segments with more than c entities, their c-th entity's
    #: column); a max over segments then costs one pass over the entities instead
    #: of ``np.maximum.reduceat``'s per-segment overhead.
    layers: list[tuple[np.ndarray, np.ndarray]] = attrs.field(
        init=False,
        default=attrs.Factory(
            lambda self: [
                (seg, self.starts[seg] + c)
                for c in range(1, int(self.counts.max(initial=0)))
                for seg in [np.flatnonzero(self.counts > c)]
            ],
            takes_self=True,
        ),
    )
    _bonus_rows: dict[float, np.ndarray] = attrs.field(init=False, factory=dict)

    def bonus_rows(self, type_bonus: float) -> np.ndarray:
        """(types + 1, M) float64: ``type_bonus * (type_id == t)`` per type ``t``, and
        a last row of zeros for a query type the pool does not have (id -1)."""
        rows = self._bonus_rows.get(type_bonus)
        if rows is None:
            n_types = int(self.type_id.max(initial=-1)) + 1
            rows = np.zeros((n_types + 1, len(self.type_id)), dtype=np.float64)
            for t in range(n_types):
                rows[t] = type_bonus * (self.type_id == t)
            self._bonus_rows[type_bonus] = rows
        return rows

    def subset(self, rows: np.ndarray) -> EntityIndex:
        """The entities of pool ``rows`` (sorted, unique), renumbered 0..len(rows)-1:
        scoring a few candidate rows exactly without touching the others."""
        first = np.full(self.n_pool, -1, dtype=np.int64)
        count = np.zeros(self.n_pool, dtype=np.int64)
        owners = self.owner[self.starts]
        first[owners], count[owners] = self.starts, self.counts
        local = np.flatnonzero(count[rows] > 0)
        c = count[rows[local]]
        offsets = np.arange(int(c.sum())) - np.repeat(np.cumsum(c) - c, c)
        cols = np.repeat(first[rows[local]], c) + offsets
        return EntityIndex(
            np.ascontiguousarray(self.vectors_t[:, cols]),
            np.repeat(local, c),
            self.type_id[cols],
            len(rows),
        )

    def segment_max(self, values: np.ndarray) -> np.ndarray:
        """``np.maximum.reduceat(values, starts)``, the same numbers, faster."""
        out = values[self.starts]
        for seg, cols in self.layers:
            out[seg] = np.maximum(out[seg], values[cols])
        return out

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
    sims = query_vecs @ index.vectors_t  # (sum(lengths), M): the one big product
    bonus = index.bonus_rows(type_bonus) if type_bonus else None
    if bonus is not None:  # a type the pool lacks gets the zero row (never a bonus)
        query_types = np.where((query_types >= 0) & (query_types < len(bonus) - 1), query_types, -1)
    owners = index.owner[index.starts]
    lo = 0
    for i, n in enumerate(lengths.tolist()):
        # Per query, the one-query arithmetic: bonus in float64, then max/sum over
        # its entities (rows added in order), then per pool sample.
        part = sims[lo : lo + n]
        if bonus is not None:
            part = part + bonus[query_types[lo : lo + n]]
        lo += n
        if agg == "max":
            out[i, owners] = index.segment_max(part.max(axis=0))
        else:
            out[i, owners] = np.add.reduceat(part.sum(axis=0), index.starts) / (n * index.counts)
    return out


def minmax(values: np.ndarray, exclude: np.ndarray) -> np.ndarray:
    """Min-max over this query's candidates (excluded rows and NaN ignored) into 0..1.

    Per query, not global: a query whose best match has cosine 0.4 still gets
    a full 0..1 spread, so the fusion weights mean the same for every query. A
    constant component carries no information and becomes 0 for all rows.
    """
    v = values.astype(np.float32, copy=True)
    v[exclude] = np.nan
    lo, hi = np.fmin.reduce(v), np.fmax.reduce(v)  # NaN only when every value is NaN
    if np.isnan(lo):
        return v
    if hi - lo <= 1e-12:
        v[~np.isnan(v)] = 0.0
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
