"""``clip_similarity``: pick in-context demonstrations by fused text/image/entity similarity.

How a query is scored against every pool sample:

* text: cosine of mean-pooled, L2-normalised sentence embeddings (MiniLM by default);
* image: cosine of open_clip image embeddings (only when CLIP weights are configured);
* entity: cosine of entity-name embeddings (same text encoder) plus ``type_bonus``
  when the types are equal, aggregated by max (default) or mean over all
  (query entity, demo entity) pairs — never the release's sum, which grows
  with the number of entities. On Twitter-GMNER dev, max picked demos that
  share a type as often as mean and contain a box more often (RESULTS.md).
  At grounding time the query's entities are the *predicted* ones.

Each component is min-max normalised over the pool *for this query* (excluded
rows ignored) and fused with the weights. A component that is unavailable for
the query (no CLIP weights, no readable query image, no query entities) is
dropped for that query and the other weights re-normalised. A pool sample that
lacks a component is still scored, on what it has; what the gap means is an
option per component, because the two gaps mean different things:

* ``missing_image="renormalize"`` (default): a missing or corrupt image is a
  gap in our knowledge, so the sample's score is the weighted mean of the
  components it has (weights re-normalised for that row), on the same 0..1
  scale as everyone else's.
* ``no_entities="zero"`` (default): a sample with no entities is *known* to
  share none with the query; its entity part counts as 0 with full weight, so
  an entity-less tweet cannot win on text alone (it teaches nothing about
  grounding). ``"renormalize"`` treats it like a missing image.

The query itself (same id) and exact duplicates of its text (case and
whitespace ignored) are never chosen.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import attrs
import numpy as np
import pydantic

from refineg_clip_selector.ann import AnnIndex
from refineg_clip_selector.cache import EmbeddingStore, content_key
from refineg_clip_selector.encoders import (
    ImageEncoder,
    TextEncoder,
    default_text_model,
    describe_image_config,
    resolve_precision,
)
from refineg_clip_selector.scoring import (
    EntityIndex,
    entity_similarity_many,
    fuse,
    minmax,
    top_k,
)
from refineg_core.errors import PluginError
from refineg_core.interfaces import ContextSelector, PluginOptions
from refineg_core.labels import LabelSet
from refineg_core.types import Demonstration, Sample

log = logging.getLogger(__name__)

COMPONENTS = ("text", "image", "entity")
#: Queries whose ANN candidates are pooled and scored together.
ANN_BLOCK = 32
_SPACES = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """What "exact duplicate" means: same text up to case and whitespace."""
    return _SPACES.sub(" ", text).strip().casefold()


class ClipSimilaritySelector(ContextSelector):
    """Demonstrations by fused text/image/entity similarity, with an on-disk embedding cache."""

    class Options(PluginOptions):
        variant: Literal["fused", "text", "image", "entity", "random"] = "fused"
        text_weight: float = pydantic.Field(0.4, ge=0)
        image_weight: float = pydantic.Field(0.2, ge=0)
        entity_weight: float = pydantic.Field(0.6, ge=0)
        type_bonus: float = pydantic.Field(0.2, ge=0)
        entity_agg: Literal["mean", "max"] = "max"
        missing_image: Literal["renormalize", "zero"] = "renormalize"
        no_entities: Literal["renormalize", "zero"] = "zero"
        text_model: Path | None = None
        max_length: int = pydantic.Field(128, ge=8)
        clip_model: str | None = None
        clip_checkpoint: Path | None = None
        clip_pretrained: str | None = None
        batch_size: int = pydantic.Field(64, ge=1)
        #: The text encoder's path for *query* texts and entity names (the pool's
        #: cached embeddings are always fp32 torch): ``onnx`` = the same fp32 encoder in
        #: ONNX Runtime (exact up to float rounding, ~2x torch on CPU; exported once into
        #: ``cache_dir``); ``bf16`` = autocast; ``auto`` = bf16 where the CPU
        #: (AVX512_BF16/AMX) or GPU runs it natively, else onnx on a CPU with
        #: onnxruntime, else fp32; ``exact`` (the default) = onnx on a CPU with
        #: onnxruntime, else fp32: the fastest path that picks the same demonstrations
        #: as fp32 (bf16 changed 6 of 600 queries' choice). Selection agreement with
        #: fp32 queries and speed: benchmarks/pages/speed.md (issue 20).
        query_precision: Literal["fp32", "bf16", "onnx", "auto", "exact"] = "exact"
        device: str = "cpu"
        cache_dir: Path | None = Path("~/.cache/refineg/selector")
        seed: int = 0
        #: Memory for one block of queries' similarity matrices in ``select_many`` (MiB).
        block_mb: float = pydantic.Field(128.0, gt=0)
        #: ``exact``: every pool row is scored. ``ann``: an HNSW index (usearch)
        #: proposes ``ann_candidates`` rows per component and query; a block of
        #: queries is scored exactly on the union of its candidates plus
        #: ``ann_sample`` spread-out rows that anchor each component's per-query
        #: minimum (recall against exact: benchmarks/RESULTS.md).
        index: Literal["exact", "ann"] = "exact"
        ann_candidates: int = pydantic.Field(256, ge=8)
        ann_sample: int = pydantic.Field(1024, ge=0)

    options: Options

    def __init__(self, options: Options | None = None, labels: LabelSet | None = None):
        super().__init__(options, labels)
        opts = self.options
        if opts.variant == "fused" and not (
            opts.text_weight or opts.image_weight or opts.entity_weight
        ):
            raise PluginError("all fusion weights are 0", where="selector.options")
        self.cache_root = opts.cache_dir.expanduser() if opts.cache_dir else None
        self._text: TextEncoder | None = None
        self._image: ImageEncoder | None = None
        self._image_reason = describe_image_config(
            opts.clip_model,
            str(opts.clip_checkpoint) if opts.clip_checkpoint else None,
            opts.clip_pretrained,
        )
        if opts.variant == "image" and self._image_reason:
            raise PluginError(
                f"variant 'image' needs CLIP weights: {self._image_reason}",
                where="selector.options.variant",
            )
        #: Items run through an encoder by the last ``index()``, by kind ("string", "image").
        self.embedded: Counter[str] = Counter()
        #: Pool samples whose image is missing or unreadable (scored without it).
        self.missing_images = 0
        #: Queries scored on text because their variant's component was unavailable.
        self.fallbacks = 0
        self._pool: list[Sample] = []
        self._indexed = False

    @property
    def embedded_count(self) -> int:
        """How many items the last ``index()`` embedded (0 when everything was cached)."""
        return sum(self.embedded.values())

    # ------------------------------------------------------------------ encoders
    @property
    def image_available(self) -> bool:
        return self._image_reason is None

    def _text_encoder(self) -> TextEncoder:
        if self._text is None:
            folder = self.options.text_model or default_text_model()
            self._text = TextEncoder(
                Path(folder).expanduser(),
                max_length=self.options.max_length,
                batch_size=self.options.batch_size,
                device=self.options.device,
                onnx_dir=self.cache_root,
            )
            self._strings = EmbeddingStore(self.cache_root, "strings", self._text.identity)
        return self._text

    def _image_encoder(self) -> ImageEncoder:
        if self._image is None:
            opts = self.options
            assert opts.clip_model is not None
            self._image = ImageEncoder(
                opts.clip_model,
                checkpoint=str(opts.clip_checkpoint) if opts.clip_checkpoint else None,
                pretrained=opts.clip_pretrained,
                batch_size=max(1, opts.batch_size // 2),
                device=opts.device,
            )
            self._images = EmbeddingStore(self.cache_root, "images", self._image.identity)
        return self._image

    def _needs(self, component: str) -> bool:
        opts = self.options
        if opts.variant == "random":
            return False
        if component == "text":
            return True  # also the fallback of the other single-component variants
        if component == "image":
            return self.image_available and (
                opts.variant == "image" or (opts.variant == "fused" and opts.image_weight > 0)
            )
        return opts.variant == "entity" or (opts.variant == "fused" and opts.entity_weight > 0)

    def _embed_strings(self, strings: Sequence[str], *, persist: bool, desc: str) -> np.ndarray:
        """Vectors of ``strings``: cached ones looked up, the rest in one encoder pass
        (queries, ``persist=False``, at ``query_precision``; the cache stays fp32)."""
        enc = self._text_encoder()
        keys = [content_key(s) for s in strings]
        todo = self._strings.missing(keys)
        fresh: dict[str, np.ndarray] = {}
        if todo:
            by_key = dict(zip(keys, strings, strict=True))
            precision = (
                "fp32"
                if persist
                else resolve_precision(self.options.query_precision, self.options.device)
            )
            vecs = enc.encode([by_key[k] for k in todo], desc=desc, precision=precision)
            if persist:
                self._strings.add(todo, vecs)
                self.embedded["string"] += len(todo)
            else:
                self._strings.remember(todo, vecs)
            fresh = dict(zip(todo, vecs, strict=True))
        out = np.zeros((len(keys), enc.dim), dtype=np.float32)
        cached = [i for i, k in enumerate(keys) if k not in fresh]
        if cached:
            out[cached] = self._strings.get([keys[i] for i in cached], enc.dim)
        for i, k in enumerate(keys):
            if k in fresh:
                out[i] = fresh[k]
        return out

    # --------------------------------------------------------------------- index
    def index(self, pool: Sequence[Sample]) -> None:
        """Embed the pool (text, entity names, images) once; cached on disk by content."""
        if (
            self.options.variant == "fused"
            and not self.image_available
            and self.options.image_weight > 0
        ):
            log.info(
                "clip_similarity: image similarity off (%s); fusing text and entity only",
                self._image_reason,
            )
        self._pool = list(pool)
        self.embedded = Counter()
        self.missing_images = 0
        n = len(self._pool)
        self._row_of: dict[str, list[int]] = {}
        self._dup_of: dict[str, list[int]] = {}
        for i, s in enumerate(self._pool):
            self._row_of.setdefault(s.id, []).append(i)
            self._dup_of.setdefault(normalize_text(s.text), []).append(i)

        if self._needs("text"):
            self._text_vecs = self._embed_strings(
                [s.text for s in self._pool], persist=True, desc="embed pool text"
            )
        if self._needs("entity"):
            self._index_entities()
        if self._needs("image"):
            self._index_images()
        self._ann: dict[str, AnnIndex] = {}
        if self.options.index == "ann" and self.options.variant != "random":
            self._build_ann()
        self._indexed = True
        log.info(
            "clip_similarity: indexed %d samples (%d items embedded, the rest cached)",
            n,
            self.embedded_count,
        )

    def _index_entities(self) -> None:
        types: dict[str, int] = {}
        names, owner, type_id = [], [], []
        for i, s in enumerate(self._pool):
            for e in s.entities:
                names.append(e.text or s.span_text(e.start, e.end))
                owner.append(i)
                type_id.append(types.setdefault(e.type, len(types)))
        self._type_ids = types
        vecs = (
            self._embed_strings(names, persist=True, desc="embed pool entities")
            if names
            else np.zeros((0, self._text_encoder().dim), dtype=np.float32)
        )
        self._entities = EntityIndex.build(
            vecs,
            np.asarray(owner, dtype=np.int64),
            np.asarray(type_id, dtype=np.int64),
            len(self._pool),
        )

    def _image_key(self, sample: Sample) -> tuple[str | None, bytes | None]:
        if sample.image is None or sample.image.path is None:
            return None, None
        try:
            data = Path(sample.image.path).read_bytes()
        except OSError:
            return None, None
        return content_key(data), data

    def _index_images(self) -> None:
        enc = self._image_encoder()
        keys: list[str | None] = []
        todo: dict[str, Path] = {}
        for s in self._pool:
            key, _ = self._image_key(s)
            keys.append(key)
            if key is not None and key not in self._images and key not in todo:
                todo[key] = Path(s.image.path)  # type: ignore[union-attr]
        bad: set[str] = set()
        if todo:
            pixels, ok = [], []
            for key, path in todo.items():
                px = enc.load(path)
                if px is None:
                    bad.add(key)
                    continue
                pixels.append(px)
                ok.append(key)
            if ok:
                self._images.add(ok, enc.encode(pixels, desc="embed pool images"))
                self.embedded["image"] += len(ok)
        vecs = np.full((len(self._pool), enc.dim), np.nan, dtype=np.float32)
        has = np.zeros(len(self._pool), dtype=bool)
        for i, key in enumerate(keys):
            if key is None or key in bad:
                continue
            vecs[i] = self._images.get([key], enc.dim)[0]
            has[i] = True
        self.missing_images = int((~has).sum())
        if self.missing_images:
            log.warning(
                "clip_similarity: %d of %d pool samples have no readable image; "
                "they are scored without image similarity",
                self.missing_images,
                len(self._pool),
            )
        self._image_vecs = np.where(has[:, None], vecs, 0.0).astype(np.float32)
        self._has_image = has

    def _build_ann(self) -> None:
        """One HNSW graph per component vector set (cached on disk by content).

        Entity names get one graph per type: the type bonus lifts same-type names
        above closer names of another type, so a query entity searches its own
        type's graph (every type's graph when the pool lacks its type)."""
        sets = {"text": self._text_vecs}
        self._type_cols: dict[int, np.ndarray] = {}
        if self._needs("entity"):
            vecs = self._entities.vectors_t.T
            for t in np.unique(self._entities.type_id).tolist():
                cols = np.flatnonzero(self._entities.type_id == t)
                self._type_cols[t] = cols
                sets[f"entity-{t}"] = vecs[cols]
        if self._needs("image"):
            sets["image"] = self._image_vecs[self._has_image]
            self._image_rows = np.flatnonzero(self._has_image)
        for name, vecs in sets.items():
            self._ann[name] = AnnIndex(vecs, cache_dir=self.cache_root, name=name)
        n = len(self._pool)
        self._anchor_rows = np.unique(
            np.linspace(0, n - 1, min(n, self.options.ann_sample)).astype(np.int64)
        )

    # -------------------------------------------------------------------- select
    def _exclude(self, query: Sample) -> np.ndarray:
        ex = np.zeros(len(self._pool), dtype=bool)
        ex[self._row_of.get(query.id, [])] = True
        ex[self._dup_of.get(normalize_text(query.text), [])] = True
        return ex

    def _query_images(self, queries: Sequence[Sample]) -> list[np.ndarray | None]:
        """Each query's image vector (None: no readable image); new ones in one batch."""
        enc = self._image_encoder()
        keys = [self._image_key(q)[0] for q in queries]
        todo: dict[str, Path] = {}
        for q, key in zip(queries, keys, strict=True):
            if key is not None and key not in self._images and key not in todo:
                todo[key] = Path(q.image.path)  # type: ignore[union-attr]
        bad: set[str] = set()
        pixels, ok = [], []
        for key, path in todo.items():
            px = enc.load(path)
            if px is None:
                bad.add(key)
                continue
            pixels.append(px)
            ok.append(key)
        if ok:
            self._images.remember(ok, enc.encode(pixels, desc="embed query images"))
        return [
            None if key is None or key in bad else self._images.get([key], enc.dim)[0]
            for key in keys
        ]

    def raw_components(self, query: Sample) -> dict[str, np.ndarray]:
        """Un-normalised similarity of the query to every pool row, per available
        component (to its candidate rows only, with ``index = "ann"``)."""
        return self._raw_block([query])[1][0]

    def _raw_block(
        self, queries: Sequence[Sample]
    ) -> tuple[np.ndarray | None, list[dict[str, np.ndarray]]]:
        """Raw similarity rows for a batch: one encoder pass for every query text and
        entity name, then one matrix product per component. Over the whole pool
        (rows None), or with ``index = "ann"`` over the union of the block's ANN
        candidates and the anchor rows (each query scored on all of them)."""
        qv = self._query_vectors(queries)
        rows = self._candidates(qv) if self._ann else None
        text = self._text_vecs if rows is None else self._text_vecs[rows]
        comps: list[dict[str, np.ndarray]] = [{} for _ in queries]
        if qv.text is not None:
            for c, row in zip(comps, qv.text @ text.T, strict=True):
                c["text"] = row
        if qv.with_entities:
            entities = self._entities if rows is None else self._entities.subset(rows)
            sims = entity_similarity_many(
                qv.entities,
                qv.types,
                qv.lengths,
                entities,
                type_bonus=self.options.type_bonus,
                agg=self.options.entity_agg,
            )
            for i, row in zip(qv.with_entities, sims, strict=True):
                comps[i]["entity"] = row
        seen = [i for i, v in enumerate(qv.images) if v is not None]
        if seen:
            vecs, has = self._image_vecs, self._has_image
            if rows is not None:
                vecs, has = vecs[rows], has[rows]
            sims = np.stack([qv.images[i] for i in seen]) @ vecs.T
            sims = np.where(has[None, :], sims, np.nan).astype(np.float32)
            for i, row in zip(seen, sims, strict=True):
                comps[i]["image"] = row
        return rows, [self._variant_view(q, c) for q, c in zip(queries, comps, strict=True)]

    def _query_vectors(self, queries: Sequence[Sample]) -> _QueryVectors:
        """Embeddings of a batch: texts and entity names in one encoder pass."""
        texts = [q.text for q in queries] if self._needs("text") else []
        with_ents = (
            [i for i, q in enumerate(queries) if q.entities] if self._needs("entity") else []
        )
        names = [
            e.text or queries[i].span_text(e.start, e.end)
            for i in with_ents
            for e in queries[i].entities
        ]
        vecs = (
            self._embed_strings(texts + names, persist=False, desc="embed queries")
            if texts or names
            else np.zeros((0, 0), dtype=np.float32)
        )
        types = np.asarray(
            [self._type_ids.get(e.type, -1) for i in with_ents for e in queries[i].entities],
            dtype=np.int64,
        )
        return _QueryVectors(
            text=vecs[: len(texts)] if texts else None,
            with_entities=with_ents,
            entities=vecs[len(texts) :],
            types=types,
            lengths=np.asarray([len(queries[i].entities) for i in with_ents], dtype=np.int64),
            images=self._query_images(queries) if self._needs("image") else [None] * len(queries),
        )

    def _candidates(self, qv: _QueryVectors) -> np.ndarray:
        """Sorted pool rows: ANN neighbours of every query text, entity name and image
        in the block, plus the anchor rows that keep each component's minimum honest."""
        c = self.options.ann_candidates
        found = [self._anchor_rows]
        if qv.text is not None:
            found += self._ann["text"].search(qv.text, c)
        for t, cols in self._type_cols.items():
            mine = (qv.types == t) | ~np.isin(qv.types, list(self._type_cols))
            if mine.any():
                hits = self._ann[f"entity-{t}"].search(qv.entities[mine], c)
                found += [self._entities.owner[cols[h]] for h in hits]
        seen = [v for v in qv.images if v is not None]
        if seen:
            found += [self._image_rows[h] for h in self._ann["image"].search(np.stack(seen), c)]
        return np.unique(np.concatenate(found))

    def _variant_view(self, query: Sample, out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """What a single-component variant keeps (text when its component is missing)."""
        variant = self.options.variant
        if variant not in ("text", "image", "entity"):
            return out
        if variant in out:
            return {variant: out[variant]}
        self.fallbacks += 1
        log.debug(
            "clip_similarity: query %s has no %s; falling back to text similarity",
            query.id,
            variant,
        )
        return {"text": out["text"]}

    def _random_scores(self, query: Sample) -> np.ndarray:
        digest = hashlib.sha256(f"{self.options.seed}:{query.id}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        return rng.random(len(self._pool)).astype(np.float32)

    def select(self, query: Sample, k: int) -> list[Demonstration]:
        """The k best pool samples for ``query``, best first (fewer if the pool is smaller)."""
        return self.select_many([query], k)[0]

    def select_many(self, queries: Sequence[Sample], k: int) -> list[list[Demonstration]]:
        """``select`` for every query: the encoder and the similarity products run once
        per block of queries (sized to bound memory) instead of once per query."""
        if not self._indexed:
            raise PluginError("select() called before index(pool)", where="selector")
        queries = list(queries)
        if k <= 0 or not self._pool:
            return [[] for _ in queries]
        if self.options.variant == "random":
            return [self._rank_random(q, k) for q in queries]
        out: list[list[Demonstration]] = []
        for block in self._blocks(queries):
            rows, raws = self._raw_block(block)
            out += [self._rank(q, raw, k, rows) for q, raw in zip(block, raws, strict=True)]
        return out

    def _blocks(self, queries: list[Sample]) -> list[list[Sample]]:
        """Consecutive groups whose similarity matrices stay near ``block_mb`` MiB
        (with ``index = "ann"``: groups of 32, scored on their candidates only)."""
        if self._ann:
            return [queries[i : i + ANN_BLOCK] for i in range(0, len(queries), ANN_BLOCK)]
        n = len(self._pool)
        m = self._entities.vectors_t.shape[1] if self._needs("entity") else 0
        budget = self.options.block_mb * 2**20
        blocks: list[list[Sample]] = [[]]
        used = 0
        for q in queries:
            # text + image rows (float32), entity products (float64 with the bonus) + row
            cost = 8 * n + 8 * m * len(q.entities) + 4 * n
            if blocks[-1] and used + cost > budget:
                blocks.append([])
                used = 0
            blocks[-1].append(q)
            used += cost
        return [b for b in blocks if b]

    def _rank_random(self, query: Sample, k: int) -> list[Demonstration]:
        scores = self._random_scores(query)
        return [
            Demonstration(self._pool[i], float(scores[i]), {"random": float(scores[i])})
            for i in top_k(scores, self._exclude(query), k)
        ]

    def _rank(
        self, query: Sample, raw: dict[str, np.ndarray], k: int, rows: np.ndarray | None = None
    ) -> list[Demonstration]:
        """Per-query min-max, fusion and top-K of one query's raw similarity rows
        (over the whole pool, or over the candidate pool ``rows`` of the ANN path)."""
        exclude = self._exclude(query) if rows is None else self._exclude(query)[rows]
        normed = {name: minmax(vals, exclude) for name, vals in raw.items()}
        weights = {
            "text": self.options.text_weight,
            "image": self.options.image_weight,
            "entity": self.options.entity_weight,
        }
        if len(normed) == 1:
            weights = {next(iter(normed)): 1.0}
        elif not any(weights[c] > 0 for c in normed):
            weights = {"text": 1.0}
        scores = fuse(
            normed,
            weights,
            {"image": self.options.missing_image, "entity": self.options.no_entities},
        )
        demos = []
        for i in top_k(scores, exclude, k):
            comps: dict[str, float] = {}
            for name in COMPONENTS:
                if name in normed and not np.isnan(normed[name][i]):
                    comps[name] = float(normed[name][i])
                    comps[f"{name}_raw"] = float(raw[name][i])
            score = float(scores[i]) if not np.isnan(scores[i]) else 0.0
            demos.append(Demonstration(self._pool[i if rows is None else rows[i]], score, comps))
        return demos


@attrs.frozen
class _QueryVectors:
    """One batch of queries, embedded: text rows, entity rows (query after query)."""

    text: np.ndarray | None
    with_entities: list[int]
    entities: np.ndarray
    types: np.ndarray
    lengths: np.ndarray
    images: list[np.ndarray | None]
