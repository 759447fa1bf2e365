"""The bert_crf tagger with the real MiniLM encoder on real Twitter-GMNER tweets.

Training is tiny (a few dozen tweets, short windows) so the whole file stays
well under a minute on 2 cores; the checks are about behaviour, not quality.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from refineg_bert_crf.tagger import BertCrfTagger
from refineg_bert_crf.training import warmup_linear
from refineg_bert_crf.windows import owner_of_words, plan_windows

from refineg_core import registry
from refineg_core.errors import DataError, PluginError, TaggerError
from refineg_core.formats import load_dataset
from refineg_core.labels import LabelSet
from refineg_core.types import Entity, Sample
from tests.conftest import run_fresh_python

LABELS = LabelSet({"PER": "person", "LOC": "location", "ORG": "organisation", "OTHER": "other"})
ROOT = Path(__file__).resolve().parents[1]
# Same rule as conftest's twitter_dir fixture (module-scoped fixtures cannot use that one).
TWITTER = Path(os.environ.get("REFINEG_DATA", ROOT / ".." / "shared" / "data")).resolve() / (
    "twitter-gmner"
)


def tiny_options(minilm_path, **kw) -> BertCrfTagger.Options:
    base = {
        "encoder": str(minilm_path),
        "epochs": 3,
        "batch_size": 8,
        "max_length": 32,
        "device": "cpu",
        "patience": 2,
        "seed": 3,
        "warmup_ratio": 0.2,
        "inference": "torch",
    }  # the other back-ends: test_bert_crf_inference.py
    base.update(kw)
    return BertCrfTagger.Options(**base)


@pytest.fixture(scope="module")
def tweets():
    if not TWITTER.exists():
        pytest.skip(f"real data not found at {TWITTER}")
    return load_dataset(TWITTER / "train.txt", limit=80).samples


@pytest.fixture(scope="module")
def broken_sample(tmp_path_factory) -> Sample:
    """A real-looking CoNLL sentence whose name starts with I- (no B-)."""
    path = tmp_path_factory.mktemp("conll") / "broken.conll"
    path.write_text("Obama\tI-PER\nvisits\tO\nParis\tB-LOC\n", encoding="utf-8")
    (sample,) = load_dataset(path, "conll").samples
    return sample


@pytest.fixture(scope="module")
def trained(minilm_path, tweets, broken_sample):
    torch.set_num_threads(2)
    tagger = BertCrfTagger(tiny_options(minilm_path), LABELS)
    modes: list[bool] = []

    def on_step(step, model):  # the model exists once fit() has built it
        if step == 1:
            model.dropout.register_forward_hook(lambda m, i, o: modes.append(m.training))

    tagger.on_step = on_step
    train, dev = [*tweets[:24], broken_sample], tweets[40:52]
    report = tagger.fit(train, dev)
    return tagger, report, modes, dev


# ---------------------------------------------------------------- training
def test_short_training_lowers_loss_and_restores_best_epoch(trained):
    tagger, report, _, dev = trained
    losses = [e["loss"] for e in report["epochs"]]
    assert losses[-1] < 0.7 * losses[0], losses
    f1s = [e["dev"]["f1"] for e in report["epochs"]]
    assert report["best_epoch"] == 1 + f1s.index(max(f1s))
    # The restored checkpoint really is the best one: re-evaluating gives its dev F1.
    from refineg_bert_crf.training import span_f1

    from refineg_core.labels import tags_to_spans

    preds = tagger.predict(dev)
    f1 = span_f1(
        [{e.key for e in s.entities} for s in dev],
        [set(tags_to_spans(p.tags).spans) for p in preds],
    )["f1"]
    assert f1 == pytest.approx(max(f1s))


def test_repaired_training_tags_are_counted(trained, broken_sample):
    _, report, _, _ = trained
    assert broken_sample.entities[0].key == (0, 1, "PER")
    assert report["tag_repairs"] == 1


def test_lr_schedule_follows_config(trained):
    tagger, report, _, _ = trained
    o = tagger.options
    steps_per_epoch = math.ceil(25 / o.batch_size)
    assert report["total_steps"] == o.epochs * steps_per_epoch
    warm = round(o.warmup_ratio * report["total_steps"])
    factor = warmup_linear(warm, report["total_steps"])
    for name, base in (("encoder", o.lr), ("head", o.head_lr), ("crf", o.crf_lr)):
        trace = report["lr_trace"][name]
        assert len(trace) == report["steps"]
        assert trace == pytest.approx([base * factor(s) for s in range(len(trace))])
        assert max(trace) == pytest.approx(base)
    # Linear decay reaches zero only after the configured last step.
    assert factor(report["total_steps"] - 1) > 0
    assert factor(report["total_steps"]) == 0
    assert all(a < b for a, b in itertools.pairwise(trace[:warm]))


def test_dropout_is_applied_in_train_mode(trained, minilm_path, tweets):
    tagger, report, modes, _ = trained
    # Every training step ran in train mode, even after dev evaluation switched to eval.
    steps_after_hook = report["steps"] - 1
    assert modes.count(True) == steps_after_hook
    assert modes.count(False) > 0  # the dev evaluations in between
    assert tagger.model.encoder.config.hidden_dropout_prob == tagger.options.dropout
    batch = tweets[:4]
    tagger.model.train()
    with torch.no_grad():
        a, _ = tagger.emissions_and_mask(batch)
        b, _ = tagger.emissions_and_mask(batch)
    assert not torch.allclose(a, b)
    tagger.model.eval()
    with torch.no_grad():
        a, _ = tagger.emissions_and_mask(batch)
        b, _ = tagger.emissions_and_mask(batch)
    assert torch.equal(a, b)


def test_zero_dropout_option_turns_dropout_off(minilm_path, tweets):
    tagger = BertCrfTagger(tiny_options(minilm_path, dropout=0.0), LABELS)
    tagger.build()
    tagger.model.train()
    with torch.no_grad():
        a, _ = tagger.emissions_and_mask(tweets[:3])
        b, _ = tagger.emissions_and_mask(tweets[:3])
    assert torch.equal(a, b)


def test_same_seed_same_initial_weights(minilm_path):
    a = BertCrfTagger(tiny_options(minilm_path, seed=5), LABELS)
    b = BertCrfTagger(tiny_options(minilm_path, seed=5), LABELS)
    c = BertCrfTagger(tiny_options(minilm_path, seed=6), LABELS)
    for t in (a, b, c):
        t.build()
    assert torch.equal(a.model.emission.weight, b.model.emission.weight)
    assert torch.equal(a.model.crf.transitions, b.model.crf.transitions)
    assert not torch.equal(a.model.emission.weight, c.model.emission.weight)


def test_nan_loss_stops_with_clear_error_and_keeps_last_good_checkpoint(minilm_path, tweets):
    tagger = BertCrfTagger(tiny_options(minilm_path, epochs=2, patience=None), LABELS)
    saved = {}

    def on_step(step, model):
        if step == 2:  # end of epoch 1 (16 tweets / batch 8): the last good checkpoint
            saved.update({k: v.clone() for k, v in model.state_dict().items()})
        if step == 3:  # a diverging step in epoch 2
            with torch.no_grad():
                model.emission.bias.fill_(float("nan"))

    tagger.on_step = on_step
    with pytest.raises(TaggerError, match=r"NaN/inf at epoch 2.*keeps the checkpoint of epoch 1"):
        tagger.fit(tweets[:16])
    state = tagger.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.items())
    pred = tagger.predict(tweets[:3])
    assert all(np.isfinite(p.marginals).all() for p in pred)


def test_unknown_label_types_are_named(minilm_path, tweets):
    bad = Sample("x1", ("Bob", "went"), "Bob went", entities=(Entity(0, 1, "MISC", "Bob"),))
    tagger = BertCrfTagger(tiny_options(minilm_path), LABELS)
    with pytest.raises(DataError, match=r"MISC.*not in the label set"):
        tagger.fit([*tweets[:3], bad])
    assert tagger.model is None  # nothing was built or trained


# ---------------------------------------------------------------- inference
def test_predict_shapes_and_marginals(trained, tweets):
    tagger, _, _, _ = trained
    samples = tweets[60:70]
    preds = tagger.predict(samples)
    assert [p.sample_id for p in preds] == [s.id for s in samples]
    assert tagger.label_names == LABELS.tags("BIO")
    for s, p in zip(samples, preds, strict=True):
        assert len(p.tags) == len(s.tokens)
        assert p.marginals.shape == (len(s.tokens), len(LABELS.tags("BIO")))
        assert np.allclose(p.marginals.sum(1), 1.0, atol=1e-9)
        assert set(p.tags) <= set(p.label_names)


def test_empty_sentence_gives_empty_prediction(trained, tweets):
    tagger, _, _, _ = trained
    empty = Sample("empty", (), "")
    p_empty, p_real = tagger.predict([empty, tweets[0]])
    assert p_empty.tags == () and p_empty.marginals.shape == (0, len(tagger.label_names))
    assert len(p_real.tags) == len(tweets[0].tokens)


def test_thousand_token_sentence_gets_every_token_labelled(trained, tweets):
    tagger, _, _, _ = trained
    words: list[str] = []
    for s in tweets:
        words.extend(s.tokens)
    long = Sample("long", tuple(words[:1000]), " ".join(words[:1000]))
    assert len(long.tokens) == 1000
    (enc,) = tagger.encode([long])
    assert len(enc.windows) > 20  # 32-sub-word windows
    assert all(sum(w.pieces) <= tagger.sentences.budget for w in enc.windows)
    (pred,) = tagger.predict([long])
    assert len(pred.tags) == 1000
    assert pred.marginals.shape == (1000, len(tagger.label_names))
    assert np.allclose(pred.marginals.sum(1), 1.0, atol=1e-9)


def test_window_planning_covers_every_word_with_overlap():
    counts = [1, 3, 2, 1, 1, 4, 2, 1, 1, 1, 2, 3, 9, 1]
    windows = plan_windows(counts, budget=6, overlap=2)
    covered = set()
    for w in windows:
        assert sum(w.pieces) <= 6
        covered.update(range(w.start, w.end))
    assert covered == set(range(len(counts)))
    assert any(a.end > b.start for a, b in itertools.pairwise(windows))
    giant = next(w for w in windows if 12 in range(w.start, w.end))
    assert giant.pieces[12 - giant.start] == 6  # a 9-piece word is cut to the budget
    owners = owner_of_words(windows, len(counts))
    assert all(windows[wi].start + pos == i for i, (wi, pos) in enumerate(owners))
    assert plan_windows([2, 2], budget=10) == [plan_windows([2, 2], budget=10)[0]]


# ---------------------------------------------------------------- persistence
@pytest.fixture(scope="module")
def saved(trained, tmp_path_factory) -> Path:
    tagger, _, _, _ = trained
    path = tmp_path_factory.mktemp("tagger") / "tagger"
    tagger.save(path)
    return path


def test_save_load_gives_identical_predictions_in_a_fresh_process(trained, saved, tweets, tmp_path):
    tagger, _, _, _ = trained
    samples = tweets[60:66]
    ids = [s.id for s in samples]
    out = tmp_path / "pred.json"
    script = (
        "import json, sys, torch\n"
        "torch.set_num_threads(2)\n"
        "from refineg_bert_crf.tagger import BertCrfTagger\n"
        "from refineg_core.formats import load_dataset\n"
        f"ids = {ids!r}\n"
        "ds = load_dataset(sys.argv[1], limit=80)\n"
        "by = {s.id: s for s in ds.samples}\n"
        f"t = BertCrfTagger.load({str(saved)!r})\n"
        "preds = t.predict([by[i] for i in ids])\n"
        "out = [[list(p.tags), p.marginals.tolist()] for p in preds]\n"
        f"json.dump(out, open({str(out)!r}, 'w'))\n"
    )
    run_fresh_python(script, str(TWITTER / "train.txt"))
    fresh = json.loads(out.read_text())
    here = tagger.predict(samples)
    for (tags, marg), p in zip(fresh, here, strict=True):
        assert tuple(tags) == p.tags
        assert np.allclose(np.array(marg), p.marginals, atol=1e-6)
    assert (saved / "encoder" / "config.json").is_file()
    manifest = json.loads((saved / "manifest.json").read_text())
    assert set(manifest["files"]) >= {
        "weights.safetensors",
        "labels.json",
        "options.json",
        "encoder.json",
    }


def _copy(saved: Path, dst: Path) -> Path:
    shutil.copytree(saved, dst, copy_function=os.link)  # hard links: cheap; rewrite by unlink
    return dst


def _rewrite(path: Path, text: str) -> None:
    path.unlink()
    path.write_text(text, encoding="utf-8")


def test_missing_or_mismatched_files_are_clear_errors(saved, tmp_path):
    d = _copy(saved, tmp_path / "missing")
    (d / "labels.json").unlink()
    with pytest.raises(TaggerError, match=r"missing file labels\.json"):
        BertCrfTagger.load(d)

    d = _copy(saved, tmp_path / "edited")
    opts = json.loads((d / "options.json").read_text())
    opts["scheme"] = "BIOES"
    _rewrite(d / "options.json", json.dumps(opts))
    with pytest.raises(TaggerError, match=r"options\.json does not match manifest\.json"):
        BertCrfTagger.load(d)

    d = _copy(saved, tmp_path / "nomanifest")
    (d / "manifest.json").unlink()
    with pytest.raises(TaggerError, match=r"missing file manifest\.json"):
        BertCrfTagger.load(d)

    with pytest.raises(TaggerError, match="does not exist"):
        BertCrfTagger.load(tmp_path / "nowhere")


def test_weights_that_do_not_fit_the_label_map_are_a_clear_error(saved, tmp_path):
    """A consistent manifest but a label map from another task (one type more)."""
    from refineg_bert_crf.tagger import _sha256

    d = _copy(saved, tmp_path / "otherlabels")
    doc = json.loads((d / "labels.json").read_text())
    doc["types"]["MISC"] = "misc"
    doc["label_names"] = [*doc["label_names"], "B-MISC", "I-MISC"]
    _rewrite(d / "labels.json", json.dumps(doc))
    manifest = json.loads((d / "manifest.json").read_text())
    p = d / "labels.json"
    manifest["files"]["labels.json"] = {"bytes": p.stat().st_size, "sha256": _sha256(p)}
    _rewrite(d / "manifest.json", json.dumps(manifest))
    with pytest.raises(TaggerError, match=r"weights\.safetensors does not fit"):
        BertCrfTagger.load(d)


# ---------------------------------------------------------------- plugin surface
def test_created_through_the_registry(minilm_path):
    tagger = registry.create(
        "tagger", "bert_crf", {"encoder": str(minilm_path), "scheme": "BIOES", "epochs": 2}, LABELS
    )
    assert isinstance(tagger, BertCrfTagger)
    assert tagger.label_names[1:4] == ("B-PER", "I-PER", "E-PER")
    with pytest.raises(PluginError, match="crf_lr"):
        registry.create("tagger", "bert_crf", {"crf_lr": -1}, LABELS)
    with pytest.raises(TaggerError, match="not trained"):
        tagger.predict([])
    if not torch.cuda.is_available():
        with pytest.raises(TaggerError, match="no CUDA"):
            BertCrfTagger(
                BertCrfTagger.Options(device="cuda", encoder=str(minilm_path)), LABELS
            ).fit([Sample("a", ("x",), "x")])


def test_load_applies_the_configs_inference_options_and_checks_labels(trained, saved, minilm_path):
    tagger, _, _, _ = trained
    config_options = tiny_options(minilm_path, eval_batch_size=3, lr=0.5)
    loaded = BertCrfTagger.load(saved, config_options, LABELS)
    # how to run it comes from the config; what it learned from the directory
    assert loaded.options.eval_batch_size == 3
    assert loaded.options.lr == tagger.options.lr != 0.5
    with pytest.raises(TaggerError, match="trained for types"):
        BertCrfTagger.load(saved, config_options, LabelSet({"PER": "person"}))
