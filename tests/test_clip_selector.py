"""The ``clip_similarity`` selector.

Text and entity similarity run on the real MiniLM weights and real
Twitter-GMNER tweets. No CLIP weights exist offline, so the image tests build a
tiny randomly initialised open_clip model here, save it as a local checkpoint
and load it through the real ``clip_checkpoint`` path: they check plumbing
(loading, caching, missing/corrupt images, ranking of image-less samples),
not image-similarity quality.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from refineg_clip_selector.scoring import fuse, minmax, top_k
from refineg_clip_selector.selector import ClipSimilaritySelector

from refineg_core.errors import PluginError
from refineg_core.formats import load_dataset
from refineg_core.registry import create
from refineg_core.types import Entity, ImageRef, Sample

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@functools.cache
def twitter(path: Path, n: int) -> tuple[Sample, ...]:
    return load_dataset(path).samples[:n]


@pytest.fixture
def pool(twitter_dir):
    return twitter(twitter_dir / "train.txt", 300)


@pytest.fixture
def queries(twitter_dir):
    return [q for q in twitter(twitter_dir / "dev.txt", 40) if q.entities][:15]


def selector(tmp_path, minilm_path, **options) -> ClipSimilaritySelector:
    """A selector on the test pool's cache; queries in plain torch fp32 unless asked
    (the reference arithmetic; the default ``exact`` path is tested against it below,
    and would export the encoder to ONNX once per test's cache)."""
    options.setdefault("cache_dir", tmp_path / "cache")
    options.setdefault("query_precision", "fp32")
    return ClipSimilaritySelector(ClipSimilaritySelector.Options(text_model=minilm_path, **options))


def sample(sid, text, entities=(), image=None) -> Sample:
    tokens = tuple(text.split())
    ents = tuple(Entity(s, e, t, " ".join(tokens[s:e])) for s, e, t in entities)
    return Sample(sid, tokens, text, ImageRef(sid, image) if image is not None else None, ents)


def test_registered_and_options_checked(tmp_path, minilm_path):
    sel = create(
        "selector", "clip_similarity", {"cache_dir": str(tmp_path), "text_model": str(minilm_path)}
    )
    assert isinstance(sel, ClipSimilaritySelector)
    with pytest.raises(PluginError, match="entity_wieght"):
        create("selector", "clip_similarity", {"entity_wieght": 1})


def test_text_similarity_real_minilm(tmp_path, minilm_path, pool):
    sel = selector(tmp_path, minilm_path, variant="text")
    sel.index(pool)
    for target in pool[10:15]:
        # the same tweet, lightly edited: its original must be the nearest text
        query = sample("q-" + target.id, target.text + " ! lol")
        demos = sel.select(query, 3)
        assert demos[0].sample.id == target.id
        assert demos[0].components["text"] == 1.0 and demos[0].score == 1.0
        assert demos[0].components["text_raw"] > demos[1].components["text_raw"]


def test_entity_similarity_max_and_type_bonus(tmp_path, minilm_path, pool):
    target = next(s for s in pool if len(s.entities) == 1)
    ent = target.entities[0]
    sel = selector(tmp_path, minilm_path, variant="entity", entity_agg="max", type_bonus=0.25)
    sel.index(pool)
    query = sample("q", f"news about {ent.text} today", [(2, 2 + len(ent.text.split()), ent.type)])
    top = sel.select(query, 1)[0]
    # identical name and type: cosine 1 plus the bonus, the maximum possible
    assert top.components["entity_raw"] == pytest.approx(1.25, abs=1e-4)
    assert any(e.text.casefold() == ent.text.casefold() for e in top.sample.entities)
    other_type = "PER" if ent.type != "PER" else "LOC"
    query2 = sample("q2", query.text, [(2, 2 + len(ent.text.split()), other_type)])
    top2 = sel.select(query2, 1)[0]
    assert top2.components["entity_raw"] <= 1.25 - 0.25 + 1e-4 or any(
        e.type == other_type for e in top2.sample.entities
    )


def test_entity_mean_is_mean_over_pairs(tmp_path, minilm_path, pool, queries):
    sel = selector(tmp_path, minilm_path, variant="entity", entity_agg="mean", type_bonus=0.1)
    sel.index(pool)
    enc = sel._text_encoder()
    for query in queries[:5]:
        demo = sel.select(query, 1)[0]
        q = enc.encode([e.text for e in query.entities])
        p = enc.encode([e.text for e in demo.sample.entities])
        bonus = np.array(
            [[0.1 * (a.type == b.type) for b in demo.sample.entities] for a in query.entities]
        )
        assert demo.components["entity_raw"] == pytest.approx(
            float((q @ p.T + bonus).mean()), abs=1e-4
        )


def test_fused_is_normalised_per_query(tmp_path, minilm_path, pool, queries):
    sel = selector(tmp_path, minilm_path)
    sel.index(pool)
    for query in queries[:6]:
        demos = sel.select(query, len(pool))
        text = [d.components["text"] for d in demos]
        assert max(text) == pytest.approx(1.0) and min(text) == pytest.approx(0.0)
        assert all(0.0 <= d.score <= 1.0 for d in demos)
        assert [d.score for d in demos] == sorted((d.score for d in demos), reverse=True)
        with_ent = [d for d in demos if d.sample.entities]
        assert max(d.components["entity"] for d in with_ent) == pytest.approx(1.0)
        # no entities -> entity part counts 0 with full weight (no_entities="zero")
        for d in demos:
            if not d.sample.entities:
                assert "entity" not in d.components
                assert d.score == pytest.approx(0.4 * d.components["text"] / 1.0, abs=1e-5)


def test_select_from_threads_matches_sequential(tmp_path, minilm_path, pool, queries):
    from concurrent.futures import ThreadPoolExecutor

    sel = selector(tmp_path, minilm_path)
    sel.index(pool)
    sequential = [[d.sample.id for d in sel.select(q, 3)] for q in queries]
    fresh = selector(tmp_path, minilm_path)
    fresh.index(pool)
    with ThreadPoolExecutor(4) as ex:
        threaded = list(ex.map(lambda q: [d.sample.id for d in fresh.select(q, 3)], queries))
    assert threaded == sequential


def test_never_self_nor_duplicates_and_k_beyond_pool(tmp_path, minilm_path, pool):
    base = list(pool[:20])
    query = base[3]
    dup = sample("dup", "  " + query.text.upper() + " ")
    sel = selector(tmp_path, minilm_path)
    sel.index([*base, dup])
    demos = sel.select(query, 100)
    ids = [d.sample.id for d in demos]
    assert query.id not in ids and "dup" not in ids
    assert len(demos) == len(base) - 1 and len(set(ids)) == len(ids)
    assert sel.select(query, 0) == []


def test_query_without_entities_drops_entity_component(tmp_path, minilm_path, pool):
    sel = selector(tmp_path, minilm_path)
    sel.index(pool)
    demos = sel.select(sample("q", "what a game last night at the stadium"), 3)
    assert demos and all(set(d.components) == {"text", "text_raw"} for d in demos)
    assert demos[0].score == pytest.approx(1.0)  # text alone, weights re-normalised
    ent = selector(tmp_path, minilm_path, variant="entity")
    ent.index(pool)
    assert ent.select(sample("q", "nothing named here"), 2)
    assert ent.fallbacks == 1


def test_cache_second_index_embeds_nothing(tmp_path, minilm_path, pool, queries):
    first = selector(tmp_path, minilm_path)
    first.index(pool)
    n_entities = len({e.text for s in pool for e in s.entities})
    assert first.embedded_count >= len({s.text for s in pool})
    assert first.embedded_count <= len(pool) + n_entities
    second = selector(tmp_path, minilm_path)
    second.index(pool)
    assert second.embedded_count == 0
    for q in queries[:3]:
        assert [d.sample.id for d in first.select(q, 3)] == [
            d.sample.id for d in second.select(q, 3)
        ]
    edited = [*pool[:-1], sample(pool[-1].id, pool[-1].text + " edited")]
    third = selector(tmp_path, minilm_path)
    third.index(edited)
    assert third.embedded_count == 1  # only the changed text


def test_random_variant_is_seeded(tmp_path, minilm_path, pool, queries):
    a = selector(tmp_path, minilm_path, variant="random", seed=1)
    b = selector(tmp_path, minilm_path, variant="random", seed=1)
    c = selector(tmp_path, minilm_path, variant="random", seed=2)
    for s in (a, b, c):
        s.index(pool)
    assert a.embedded_count == 0  # random needs no embeddings
    picks = [[d.sample.id for d in s.select(queries[0], 5)] for s in (a, b, c)]
    assert picks[0] == picks[1] and picks[0] != picks[2]
    assert queries[0].id not in picks[0]


def test_select_before_index_is_an_error(tmp_path, minilm_path):
    with pytest.raises(PluginError, match="index"):
        selector(tmp_path, minilm_path).select(sample("q", "x"), 3)


def test_scoring_helpers_vectorised():
    scores = np.array([0.2, np.nan, 0.9, 0.5, 0.9], dtype=np.float32)
    exclude = np.array([False, False, False, False, True])
    assert top_k(scores, exclude, 10).tolist() == [2, 3, 0, 1]  # NaN last, excluded never
    assert top_k(scores, exclude, 2).tolist() == [2, 3]
    norm = minmax(np.array([1.0, 3.0, 2.0, 100.0]), np.array([False, False, False, True]))
    assert norm[:3].tolist() == [0.0, 1.0, 0.5] and np.isnan(norm[3])
    comps = {"text": np.array([1.0, 0.5]), "image": np.array([np.nan, 1.0])}
    ren = fuse(comps, {"text": 0.4, "image": 0.2}, {"image": "renormalize"})
    zero = fuse(comps, {"text": 0.4, "image": 0.2}, {"image": "zero"})
    assert ren.tolist() == pytest.approx([1.0, (0.2 + 0.2) / 0.6])
    assert zero.tolist() == pytest.approx([0.4 / 0.6, (0.2 + 0.2) / 0.6])


# ---------------------------------------------------------------- image plumbing
@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    open_clip = pytest.importorskip(
        "open_clip", reason="pip install 'refineg[vision]' (not in bootstrap's cpu flavour)"
    )

    root = tmp_path_factory.mktemp("clip")
    config = root / "refineg-tiny-clip.json"
    config.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    model = open_clip.create_model("refineg-tiny-clip").eval()
    ckpt = root / "tiny-clip.pt"
    torch.save(model.state_dict(), ckpt)
    return config, ckpt, model


@pytest.fixture
def image_pool(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    samples = []
    for i in range(6):
        path = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path)
        samples.append(sample(f"p{i}", f"tweet number {i} about tanks", [(3, 4, "OTHER")], path))
    corrupt = folder / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8 not really a jpeg")
    samples.append(sample("corrupt", "tweet with a broken picture", image=corrupt))
    samples.append(sample("gone", "tweet whose picture vanished", image=folder / "gone.jpg"))
    samples.append(sample("noimg", "tweet without any picture"))
    return samples


def test_image_similarity_plumbing(tmp_path, minilm_path, tiny_clip, image_pool):
    import open_clip

    config, ckpt, model = tiny_clip
    sel = selector(
        tmp_path, minilm_path, variant="image", clip_model=str(config), clip_checkpoint=ckpt
    )
    sel.index(image_pool)
    assert sel.missing_images == 3 and sel.embedded["image"] == 6
    # the checkpoint really went in: both towers match the model built here
    loaded = sel._image_encoder().model
    tok = open_clip.get_tokenizer("refineg-tiny-clip")(["a tank on a road"])
    with torch.no_grad():
        assert torch.allclose(loaded.encode_text(tok), model.encode_text(tok), atol=1e-6)
    query = sample("q", "a new tweet", image=image_pool[4].image.path)
    demos = sel.select(query, len(image_pool))
    assert demos[0].sample.id == "p4"
    assert demos[0].components["image_raw"] == pytest.approx(1.0, abs=1e-5)
    # image-less pool samples are still returned, after every scored one
    assert {d.sample.id for d in demos[-3:]} == {"corrupt", "gone", "noimg"}
    assert all("image" not in d.components for d in demos[-3:])
    again = selector(
        tmp_path, minilm_path, variant="image", clip_model=str(config), clip_checkpoint=ckpt
    )
    again.index(image_pool)
    assert again.embedded_count == 0 and again.missing_images == 3
    assert again.select(query, 1)[0].sample.id == "p4"


def test_fused_with_images_plumbing(tmp_path, minilm_path, tiny_clip, image_pool):
    config, ckpt, _ = tiny_clip
    sel = selector(tmp_path, minilm_path, clip_model=str(config), clip_checkpoint=ckpt)
    sel.index(image_pool)
    query = sample("q", "tweet number 2 about tanks !", [(3, 4, "OTHER")], image_pool[2].image.path)
    demos = sel.select(query, len(image_pool))
    top = demos[0]
    assert top.sample.id == "p2" and {"text", "image", "entity"} <= set(top.components)
    for d in demos:  # missing image: weighted mean of what the sample has
        have = {
            c: w for c, w in (("text", 0.4), ("image", 0.2), ("entity", 0.6)) if c in d.components
        }
        if "image" not in d.components:
            expected = (sum(w * d.components.get(c, 0.0) for c, w in have.items()) + 0) / (
                sum(have.values()) + (0.6 if "entity" not in have else 0)
            )
            assert d.score == pytest.approx(expected, abs=1e-5)


def test_no_clip_weights_means_no_image_and_no_download(tmp_path, minilm_path, image_pool, caplog):
    sel = selector(tmp_path, minilm_path, clip_model="ViT-B-32")
    assert not sel.image_available
    with caplog.at_level(logging.INFO):
        sel.index(image_pool)
    assert "image similarity off" in caplog.text and "clip_checkpoint" in caplog.text
    demos = sel.select(sample("q", "tweet number 1", image=image_pool[1].image.path), 3)
    assert demos and all("image" not in d.components for d in demos)
    with pytest.raises(PluginError, match="CLIP weights"):
        selector(tmp_path, minilm_path, variant="image")
    with pytest.raises(PluginError, match="not found"):
        selector(
            tmp_path,
            minilm_path,
            variant="image",
            clip_model="ViT-B-32",
            clip_checkpoint=tmp_path / "nope.pt",
        ).index(image_pool)


def test_clip_weights_without_open_clip_name_the_extra(
    tmp_path, minilm_path, image_pool, monkeypatch
):
    checkpoint = tmp_path / "clip.pt"
    checkpoint.write_bytes(b"weights")
    monkeypatch.setitem(sys.modules, "open_clip", None)  # import fails
    sel = selector(tmp_path, minilm_path, clip_model="ViT-B-32", clip_checkpoint=checkpoint)
    with pytest.raises(PluginError, match=r"refineg\[vision\]") as err:
        sel.index(image_pool)
    assert err.value.where == "selector.options.clip_model"


def test_bf16_queries_pick_the_fp32_demonstrations_and_keep_the_cache_fp32(
    tmp_path, minilm_path, pool, queries
):
    """``query_precision = "bf16"`` changes only how query texts and entity names are
    embedded: the pool's cached vectors are the fp32 ones, and the chosen
    demonstrations agree with fp32 queries (the top choice on nearly every query;
    benchmarks/RESULTS.md has the overlap at 600 queries)."""
    from refineg_clip_selector import encoders

    exact = selector(tmp_path, minilm_path)
    exact.index(pool)
    fast = selector(tmp_path, minilm_path, query_precision="bf16")
    fast.index(pool)
    assert fast.embedded_count == 0  # the pool came from the fp32 cache
    a = [[d.sample.id for d in ds] for ds in exact.select_many(queries, 3)]
    b = [[d.sample.id for d in ds] for ds in fast.select_many(queries, 3)]
    top = sum(x[0] == y[0] for x, y in zip(a, b, strict=True))
    shared = sum(len(set(x) & set(y)) for x, y in zip(a, b, strict=True))
    assert top >= len(queries) - 1 and shared >= 0.9 * 3 * len(queries), (a, b)
    enc = fast._text_encoder()
    texts = [q.text for q in queries]
    fp32 = enc.encode(texts)
    bf16 = enc.encode(texts, precision="bf16")
    assert not np.array_equal(fp32, bf16)  # bf16 really ran
    assert np.min(np.sum(fp32 * bf16, axis=1)) > 0.99  # the same direction
    assert encoders.resolve_precision("fp32", "cpu") == "fp32"
    assert encoders.resolve_precision("auto", "cpu") == (
        "bf16" if encoders.bf16_native("cpu") else "onnx"
    )


def test_onnx_queries_are_the_fp32_embeddings_and_the_export_is_cached(
    tmp_path, minilm_path, pool, queries, monkeypatch
):
    """``query_precision = "onnx"`` is an exact path: the same fp32 encoder in ONNX
    Runtime gives the torch vectors up to float rounding and the same demonstrations
    in the same order; the export is written once into ``cache_dir`` and reused."""
    pytest.importorskip("onnxruntime")
    from refineg_clip_selector import onnx_text

    exact = selector(tmp_path, minilm_path)
    exact.index(pool)
    fast = selector(tmp_path, minilm_path, query_precision="onnx")
    fast.index(pool)
    a = [[d.sample.id for d in ds] for ds in exact.select_many(queries, 3)]
    b = [[d.sample.id for d in ds] for ds in fast.select_many(queries, 3)]
    assert a == b
    texts = [q.text for q in queries] + ["Obama", "x"]  # padding within a batch
    enc = fast._text_encoder()
    fp32 = enc.encode(texts)
    onnx = enc.encode(texts, precision="onnx")
    assert np.max(np.abs(fp32 - onnx)) < 1e-5
    assert np.allclose(np.linalg.norm(onnx, axis=1), 1.0, atol=1e-5)
    [export] = (tmp_path / "cache" / "onnx").glob("*.onnx")
    assert enc.identity in export.name
    # a second selector loads the export instead of exporting again
    exports = []
    monkeypatch.setattr(onnx_text, "export_onnx", lambda *a, **k: exports.append(a))
    again = selector(tmp_path, minilm_path, query_precision="onnx")
    again.index(pool)
    assert [[d.sample.id for d in ds] for ds in again.select_many(queries, 3)] == a
    assert exports == []


def test_the_default_query_path_is_the_fastest_exact_one(
    tmp_path, minilm_path, pool, queries, monkeypatch
):
    """By default (``exact``) queries go through ONNX Runtime on a CPU that has it --
    the same demonstrations in the same order as torch fp32 -- and through torch fp32
    where ONNX cannot run (a GPU, no onnxruntime); never bf16, which changed some
    queries' choice (benchmarks/pages/speed.md)."""
    pytest.importorskip("onnxruntime")
    from refineg_clip_selector import encoders

    assert ClipSimilaritySelector.Options().query_precision == "exact"
    reference = selector(tmp_path, minilm_path)
    reference.index(pool)
    default = ClipSimilaritySelector(
        ClipSimilaritySelector.Options(text_model=minilm_path, cache_dir=tmp_path / "cache")
    )
    default.index(pool)
    paths = []
    real = encoders.TextEncoder._encode
    monkeypatch.setattr(
        encoders.TextEncoder,
        "_encode",
        lambda self, texts, desc, precision="fp32": (
            paths.append(precision) or real(self, texts, desc, precision)
        ),
    )
    a = [[d.sample.id for d in ds] for ds in reference.select_many(queries, 3)]
    b = [[d.sample.id for d in ds] for ds in default.select_many(queries, 3)]
    assert a == b
    assert paths == ["fp32", "onnx"]  # the default really ran ONNX
    assert encoders.resolve_precision("exact", "cuda:0") == "fp32"
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    assert encoders.resolve_precision("exact", "cpu") == "fp32"


def test_damaged_onnx_export_is_rebuilt(tmp_path, minilm_path, pool, queries, caplog):
    pytest.importorskip("onnxruntime")
    first = selector(tmp_path, minilm_path, query_precision="onnx")
    first.index(pool)
    want = [d.sample.id for d in first.select(queries[0], 3)]
    [export] = (tmp_path / "cache" / "onnx").glob("*.onnx")
    export.write_bytes(b"not an onnx graph")
    second = selector(tmp_path, minilm_path, query_precision="onnx")
    second.index(pool)
    with caplog.at_level(logging.WARNING):
        assert [d.sample.id for d in second.select(queries[0], 3)] == want
    assert "unreadable" in caplog.text
    assert export.stat().st_size > 1_000_000  # rebuilt, not the damaged bytes


def test_onnx_queries_refused_on_a_gpu_and_without_onnxruntime(monkeypatch):
    from refineg_clip_selector import encoders

    with pytest.raises(PluginError, match="CPU only") as err:
        encoders.resolve_precision("onnx", "cuda:0")
    assert err.value.where == "selector.options.query_precision"
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    with pytest.raises(PluginError, match="pip install onnxruntime"):
        encoders.resolve_precision("onnx", "cpu")
    monkeypatch.setattr(encoders, "bf16_native", lambda device: False)
    assert encoders.resolve_precision("auto", "cpu") == "fp32"
