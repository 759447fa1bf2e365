"""The bert_crf inference back-ends on a small real tagger (MiniLM, real tweets).

Each fast mode must give the predictions of the plain PyTorch fp32 encoder:
exactly (up to float noise) for ONNX fp32, and for the int8 modes the same
tags wherever the fp32 tagger is sure of its tag. The ONNX export lives beside
the saved tagger and follows its weights.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from refineg_bert_crf import inference
from refineg_bert_crf.tagger import BertCrfTagger

from refineg_core.errors import TaggerError
from refineg_core.formats import load_dataset
from refineg_core.labels import LabelSet
from tests.conftest import run_fresh_python

LABELS = LabelSet({"PER": "person", "LOC": "location", "ORG": "organisation", "OTHER": "other"})
ROOT = Path(__file__).resolve().parents[1]
TWITTER = Path(os.environ.get("REFINEG_DATA", ROOT / ".." / "shared" / "data")).resolve() / (
    "twitter-gmner"
)
needs_ort = pytest.mark.skipif(
    not inference.onnxruntime_available(), reason="onnxruntime is not installed"
)


@pytest.fixture(scope="module")
def tweets():
    if not TWITTER.exists():
        pytest.skip(f"real data not found at {TWITTER}")
    return load_dataset(TWITTER / "train.txt", limit=120).samples


@pytest.fixture(scope="module")
def saved(minilm_path, tweets, tmp_path_factory) -> Path:
    """A tagger trained for a few steps on 40 tweets, saved with the torch back-end."""
    torch.set_num_threads(2)
    options = BertCrfTagger.Options(
        encoder=str(minilm_path),
        epochs=3,
        batch_size=8,
        max_length=48,
        device="cpu",
        patience=None,
        seed=5,
        inference="torch",
    )
    tagger = BertCrfTagger(options, LABELS)
    tagger.fit(tweets[:40])
    path = tmp_path_factory.mktemp("inference") / "tagger"
    tagger.save(path)
    return path


@pytest.fixture(scope="module")
def reference(saved, tweets):
    """Predictions of the fp32 PyTorch encoder on 40 held-out tweets (padded batches)."""
    samples = tweets[60:100]
    return samples, BertCrfTagger.load(saved).predict(samples)


def _compare(ref, got) -> tuple[float, float, list[float]]:
    """Tag agreement, max |marginal difference|, and fp32 confidence where tags differ."""
    same = total = 0
    worst = 0.0
    flipped_confidence = []
    for r, g in zip(ref, got, strict=True):
        assert len(r.tags) == len(g.tags) and r.marginals.shape == g.marginals.shape
        worst = max(worst, float(np.abs(r.marginals - g.marginals).max()))
        for k, (a, b) in enumerate(zip(r.tags, g.tags, strict=True)):
            total += 1
            same += a == b
            if a != b:
                flipped_confidence.append(float(r.marginals[k].max()))
    return same / total, worst, flipped_confidence


@needs_ort
def test_onnx_fp32_gives_the_torch_predictions(saved, reference):
    samples, ref = reference
    tagger = BertCrfTagger.load(saved, {"inference": "onnx"})
    assert tagger.inference_mode == "onnx"
    agreement, worst, _ = _compare(ref, tagger.predict(samples))
    assert agreement == 1.0
    assert worst < 1e-4


@pytest.mark.parametrize("mode", ["int8", pytest.param("onnx-int8", marks=needs_ort)])
def test_int8_modes_keep_every_confident_tag(saved, reference, mode):
    samples, ref = reference
    tagger = BertCrfTagger.load(saved, {"inference": mode})
    assert tagger.inference_mode == mode
    got = tagger.predict(samples)
    agreement, worst, flipped = _compare(ref, got)
    assert agreement >= 0.9, f"{mode}: only {agreement:.1%} of tags agree with fp32"
    # Quantisation noise may only flip tags the fp32 tagger was unsure of.
    assert all(c < 0.9 for c in flipped), f"{mode} flipped confident tags: {flipped}"
    mean = np.mean(
        [np.abs(r.marginals - g.marginals).mean() for r, g in zip(ref, got, strict=True)]
    )
    assert mean < 0.03, f"{mode}: mean |marginal difference| {mean:.4f}"
    assert worst <= 1.0


@needs_ort
def test_export_is_saved_beside_the_tagger_and_reused(saved, tmp_path, reference):
    samples, ref = reference
    d = tmp_path / "tagger"
    shutil.copytree(saved, d)
    BertCrfTagger.load(d, {"inference": "onnx"})
    (export,) = (d / inference.CACHE_DIR).glob("onnx.*.onnx")
    stamp = export.stat().st_mtime_ns
    again = BertCrfTagger.load(d, {"inference": "onnx"})
    assert export.stat().st_mtime_ns == stamp  # loaded, not exported again
    assert _compare(ref, again.predict(samples))[0] == 1.0
    # The cache is not part of the manifest: the tagger still verifies after exporting.
    assert "inference" not in (d / "manifest.json").read_text()

    export.write_bytes(b"not an onnx graph")  # damaged: rebuilt, not trusted
    fixed = BertCrfTagger.load(d, {"inference": "onnx"})
    assert export.stat().st_size > 1_000_000
    assert _compare(ref, fixed.predict(samples))[1] < 1e-4


@needs_ort
def test_export_is_rebuilt_when_the_weights_change(saved, tmp_path, reference):
    samples, ref = reference
    d = tmp_path / "tagger"
    shutil.copytree(saved, d)
    BertCrfTagger.load(d, {"inference": "onnx"})
    (old,) = (d / inference.CACHE_DIR).glob("onnx.*.onnx")

    changed = BertCrfTagger.load(d, {"inference": "torch"})
    assert changed.model is not None
    with torch.no_grad():  # another "training": every encoder layer moves
        for layer in changed.model.encoder.encoder.layer:
            layer.output.dense.weight.mul_(1.3)
    changed.save(d)
    want = changed.predict(samples)
    assert _compare(ref, want)[1] > 1e-3  # the change is visible in the predictions

    fresh = BertCrfTagger.load(d, {"inference": "onnx"})
    (new,) = (d / inference.CACHE_DIR).glob("onnx.*.onnx")
    assert new.name != old.name and not old.exists()
    agreement, worst, _ = _compare(want, fresh.predict(samples))
    assert agreement == 1.0 and worst < 1e-4


def test_inference_options_apply_at_load_and_learned_ones_stay(saved, tweets):
    config = BertCrfTagger.Options(
        inference="int8", eval_batch_size=7, scheme="BIOES", max_length=16, epochs=99
    )
    tagger = BertCrfTagger.load(saved, config, LABELS)
    assert tagger.options.inference == "int8" and tagger.inference_mode == "int8"
    assert tagger.options.eval_batch_size == 7
    # What the tagger learned comes from its files, whatever the run's config says.
    assert tagger.options.scheme == "BIO" and tagger.options.max_length == 48
    assert tagger.options.epochs == 3
    assert len(tagger.predict(tweets[:9])) == 9  # two batches of at most 7

    from_dict = BertCrfTagger.load(saved, {"inference": "torch", "eval_batch_size": 3})
    assert from_dict.inference_mode == "torch" and from_dict.options.eval_batch_size == 3
    with pytest.raises(TaggerError, match="invalid tagger options"):
        BertCrfTagger.load(saved, {"inference": "tensorrt"})


def test_labels_of_another_task_are_refused_at_load(saved):
    reordered = LabelSet({t: "x" for t in reversed(LABELS.types)})
    assert BertCrfTagger.load(saved, None, reordered).label_names == LABELS.tags("BIO")
    with pytest.raises(TaggerError, match="entity types"):
        BertCrfTagger.load(saved, None, LabelSet({"PER": "p", "LOC": "l"}))


def test_auto_mode_is_measured_on_cpu_and_explicit_modes_are_checked(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert inference.resolve_mode("auto", gpu) == "torch"
    with pytest.raises(TaggerError, match="CPU only"):
        inference.resolve_mode("onnx-int8", gpu)
    with pytest.raises(TaggerError, match="unknown inference mode"):
        inference.resolve_mode("fp8", cpu)
    assert inference.resolve_mode("auto", cpu, saved=False) == "torch"  # no one-off export
    assert inference.resolve_mode("auto", cpu) == "auto"  # the tagger measures (autotune)
    assert inference.resolve_mode("bf16", gpu) == "bf16"
    monkeypatch.setattr(inference, "onnxruntime_available", lambda: False)
    assert inference.resolve_mode("auto", cpu) == "auto"  # torch (+ fast paths) remain
    with pytest.raises(TaggerError, match="pip install onnxruntime"):
        inference.resolve_mode("onnx", cpu)


def test_auto_falls_back_to_torch_without_onnxruntime(saved, tmp_path, reference):
    """A fresh process where ``import onnxruntime`` fails: auto still loads and predicts."""
    _, ref = reference
    out = tmp_path / "tags.txt"
    script = (
        "import sys\n"
        "sys.modules['onnxruntime'] = None  # as if not installed\n"
        "from refineg_bert_crf.tagger import BertCrfTagger\n"
        "from refineg_core.formats import load_dataset\n"
        "samples = load_dataset(sys.argv[1], limit=120).samples[60:100]\n"
        f"t = BertCrfTagger.load({str(saved)!r}, {{'inference': 'auto'}})\n"
        "assert t.inference_mode == 'torch', t.inference_mode\n"
        f"open({str(out)!r}, 'w').write(repr([p.tags for p in t.predict(samples)]))\n"
    )
    run_fresh_python(script, str(TWITTER / "train.txt"))
    assert out.read_text() == repr([p.tags for p in ref])


@pytest.mark.plumbing
def test_autocast_runner_returns_float32_close_to_fp32(minilm_path):
    """The CUDA path's autocast wrapper, run on CPU with bf16 (no GPU here)."""
    from refineg_bert_crf.model import build_encoder, encoder_config

    encoder = build_encoder(minilm_path, encoder_config(minilm_path, 0.0), pretrained=True).eval()
    ids = torch.randint(1000, 2000, (3, 12))
    mask = torch.ones_like(ids)
    mask[2, 7:] = 0
    with torch.inference_mode():
        plain = inference.torch_runner(encoder)(ids, mask)
        mixed = inference.torch_runner(encoder, torch.bfloat16)(ids, mask)
    assert mixed.dtype == torch.float32
    assert torch.allclose(mixed[mask.bool()], plain[mask.bool()], atol=0.15)
    assert inference.autocast_dtype(torch.device("cpu")) is None


# ------------------------------------------------------- loading from a cached export
@pytest.fixture
def exported(saved, tmp_path) -> Path:
    """A copy of the saved tagger whose ONNX export and tokenizer cache are in place:
    the first load exports, the second (head only) caches the tokenizer. Made here,
    not inherited from whatever earlier tests left in ``saved``."""
    d = tmp_path / "tagger"
    shutil.copytree(saved, d)
    shutil.rmtree(d / inference.CACHE_DIR, ignore_errors=True)
    BertCrfTagger.load(d, {"inference": "onnx"})
    BertCrfTagger.load(d, {"inference": "onnx"})
    assert len(list((d / inference.CACHE_DIR).glob("onnx.*.onnx"))) == 1
    assert list((d / inference.CACHE_DIR).glob("encoder-meta.*.json"))
    return d


@needs_ort
def test_a_cached_export_loads_only_the_head_and_predicts_as_torch(exported, reference):
    samples, ref = reference
    tagger = BertCrfTagger.load(exported, {"inference": "onnx"})
    assert tagger.model is not None and tagger.model.encoder is None  # no PyTorch encoder
    agreement, worst, _ = _compare(ref, tagger.predict(samples))
    assert agreement == 1.0 and worst < 1e-4


@needs_ort
def test_a_cached_export_loads_without_importing_transformers(exported, tmp_path, reference):
    """A fresh process: the tagger predicts without importing transformers at all."""
    _, ref = reference
    out = tmp_path / "tags.txt"
    script = (
        "import sys\n"
        "from refineg_bert_crf.tagger import BertCrfTagger\n"
        "from refineg_core.formats import load_dataset\n"
        "samples = load_dataset(sys.argv[1], limit=120).samples[60:100]\n"
        f"t = BertCrfTagger.load({str(exported)!r}, {{'inference': 'onnx'}})\n"
        "tags = [p.tags for p in t.predict(samples)]\n"
        "assert 'transformers' not in sys.modules  # tokenizer from the cached backend\n"
        f"open({str(out)!r}, 'w').write(repr(tags))\n"
    )
    run_fresh_python(script, str(TWITTER / "train.txt"))
    assert out.read_text() == repr([p.tags for p in ref])


@needs_ort
def test_a_head_only_tagger_builds_its_encoder_when_something_needs_it(
    exported, saved, tmp_path, reference
):
    samples, ref = reference
    tagger = BertCrfTagger.load(exported, {"inference": "onnx", "mc_dropout_samples": 2})
    assert tagger.model.encoder is None
    got = tagger.predict(samples[:5])  # MC-dropout passes run the PyTorch encoder
    assert tagger.model.encoder is not None
    assert all(p.extra("dropout_marginals") is not None for p in got)
    assert _compare(ref[:5], got)[1] < 1e-4

    again = BertCrfTagger.load(exported, {"inference": "onnx"})
    assert again.model.encoder is None
    again.save(tmp_path / "resaved")  # save needs every weight: built first, then written
    from safetensors.torch import load_file

    before, after = (
        load_file(str(saved / "weights.safetensors")),
        load_file(str(tmp_path / "resaved" / "weights.safetensors")),
    )
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    resaved = BertCrfTagger.load(tmp_path / "resaved", {"inference": "onnx"})
    assert _compare(ref, resaved.predict(samples))[1] < 1e-4


@needs_ort
def test_a_damaged_tokenizer_cache_falls_back_to_transformers(exported, reference, caplog):
    samples, ref = reference
    (meta,) = (exported / inference.CACHE_DIR).glob("encoder-meta.*.json")
    meta.write_text('{"version": 1, "tokenizer_json": ')
    with caplog.at_level("WARNING", logger="refineg_bert_crf.encoder_meta"):
        tagger = BertCrfTagger.load(exported, {"inference": "onnx"})
    assert "unreadable tokenizer cache" in caplog.text
    assert type(tagger.tokenizer).__name__ != "RustTokenizer"
    assert _compare(ref, tagger.predict(samples))[1] < 1e-4
    assert BertCrfTagger.load(exported, {"inference": "onnx"}).encoder_config is None  # rewritten


@needs_ort
def test_retraining_a_head_only_tagger_replaces_its_export(exported, tweets, reference):
    samples, ref = reference
    tagger = BertCrfTagger.load(exported, {"inference": "onnx"})
    (old,) = (exported / inference.CACHE_DIR).glob("onnx.*.onnx")
    tagger.fit(tweets[100:120])  # a second fit continues from the saved weights
    tagger.save(exported)
    want = BertCrfTagger.load(exported, {"inference": "torch"}).predict(samples)
    assert _compare(ref, want)[1] > 1e-3  # the retraining shows in the predictions

    fresh = BertCrfTagger.load(exported, {"inference": "onnx"})
    assert fresh.model.encoder is None
    (new,) = (exported / inference.CACHE_DIR).glob("onnx.*.onnx")
    assert new.name != old.name and not old.exists()
    agreement, worst, _ = _compare(want, fresh.predict(samples))
    assert agreement == 1.0 and worst < 1e-4


@needs_ort
@pytest.mark.parametrize("damage", ["garbage", "truncated", "missing"])
def test_a_damaged_or_missing_export_is_rebuilt_with_a_log(exported, reference, caplog, damage):
    samples, ref = reference
    (export,) = (exported / inference.CACHE_DIR).glob("onnx.*.onnx")
    size = export.stat().st_size
    if damage == "garbage":
        export.write_bytes(b"not an onnx graph")
    elif damage == "truncated":
        export.write_bytes(export.read_bytes()[: size // 2])
    else:
        export.unlink()
    with caplog.at_level("WARNING", logger="refineg_bert_crf.inference"):
        tagger = BertCrfTagger.load(exported, {"inference": "onnx"})
    if damage != "missing":
        assert "unreadable" in caplog.text and "rebuilding" in caplog.text
    assert export.is_file() and export.stat().st_size == size
    agreement, worst, _ = _compare(ref, tagger.predict(samples))
    assert agreement == 1.0 and worst < 1e-4


@needs_ort
def test_weights_changed_behind_the_manifest_are_refused_although_stamped(exported, monkeypatch):
    """The stat stamp saves re-hashing, but a rewritten weights file is hashed again."""
    from refineg_bert_crf import verify

    monkeypatch.setattr(verify, "RACY_NS", 0)  # trust the stamp at once (no tick guard)
    weights = exported / "weights.safetensors"
    BertCrfTagger.load(exported, {"inference": "onnx"})  # the stamp vouches for every file
    hashed = []
    monkeypatch.setattr(verify, "sha256_file", lambda p: hashed.append(p) or "x")
    BertCrfTagger.load(exported, {"inference": "onnx"})
    assert hashed == []  # nothing re-hashed: the stamp was used
    monkeypatch.undo()
    monkeypatch.setattr(verify, "RACY_NS", 0)
    st = weights.stat()
    time.sleep(0.05)  # past the file system's timestamp tick
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one byte of the last tensor, same size
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(TaggerError, match=r"weights\.safetensors does not match manifest"):
        BertCrfTagger.load(exported, {"inference": "onnx"})


def test_a_saved_tagger_stays_fresh_after_its_first_load_writes_the_export(saved, tmp_path):
    """``tagger.load_from`` fingerprints the tagger's files; the ONNX export and its
    cache files written on first load are derived, so the next run reuses predict."""
    import shutil
    import textwrap

    from refineg_core.testing import run_cli
    from tests.stagedata import TWITTER_LABELS_TOML

    tagger = tmp_path / "tagger"
    shutil.copytree(saved, tagger)
    shutil.rmtree(tagger / "inference", ignore_errors=True)
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        textwrap.dedent(f"""
            run_dir = "{tmp_path / "run"}"
            [data.predict]
            path = "{TWITTER / "dev.txt"}"
            limit = 20
            [stages]
            refine = false
            ground = false
            [tagger]
            load_from = "{tagger}"
            [tagger.options]
            inference = "onnx"
        """)
        + TWITTER_LABELS_TOML,
        encoding="utf-8",
    )
    first = run_cli(["predict", "-c", str(cfg)])
    assert first.code == 0, first.stderr
    assert any((tagger / "inference").iterdir()), "the first load wrote no export"
    again = run_cli(["predict", "-c", str(cfg)])
    assert again.code == 0 and "predict: reusing" in again.stderr, again.stderr
