"""``inference = "auto"``: the back-end measured fastest on this machine, cached per
machine and weights; ``precision = "fast"``: lower precision only where dev F1 allows.

A real small tagger (MiniLM, real tweets), never a fake one. Timing decides
*which* exact back-end wins, so the tests assert what must hold whoever wins:
only exact back-ends whose tags equal torch fp32's are eligible, the choice is
cached under this machine's key and measured again when the weights change,
and a fast path whose F1 drops more than 0.3 is refused.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from refineg_bert_crf import autotune, inference, training
from refineg_bert_crf.tagger import BertCrfTagger
from refineg_bert_crf.training import padded_buckets

from refineg_core.formats import load_dataset
from refineg_core.labels import LabelSet
from tests.conftest import TWITTER

#: The fixture tagger was saved with inference = "torch"; these tests load it as auto.
AUTO = {"inference": "auto"}
LABELS = LabelSet({"PER": "person", "LOC": "location", "ORG": "organisation", "OTHER": "other"})


@pytest.fixture(autouse=True)
def short_probe(monkeypatch):
    """The measuring recipe as shipped, on a smaller probe (a shared 2-core machine)."""
    monkeypatch.setattr(autotune, "PROBE_SENTENCES", 24)
    monkeypatch.setattr(autotune, "ROUNDS", 1)


@pytest.fixture(scope="module")
def tweets():
    if not TWITTER.exists():
        pytest.skip(f"real data not found at {TWITTER}")
    return load_dataset(TWITTER / "train.txt", limit=120).samples


@pytest.fixture(scope="module")
def trained(minilm_path, tweets, tmp_path_factory) -> Path:
    """A tagger trained on 40 tweets for 3 epochs with ``precision = "fast"`` and a dev
    set, saved with the torch back-end. Training checks the fast paths on dev and
    saving records the check beside the tagger (tests copy it and start clean)."""
    torch.set_num_threads(2)
    options = BertCrfTagger.Options(
        encoder=str(minilm_path),
        epochs=3,
        batch_size=8,
        max_length=48,
        device="cpu",
        patience=None,
        seed=3,
        inference="torch",
        precision="fast",
    )
    tagger = BertCrfTagger(options, LABELS)
    report = tagger.fit(tweets[:40], tweets[100:120])
    path = tmp_path_factory.mktemp("autotune") / "tagger"
    tagger.save(path)
    check = json.loads((path / inference.CACHE_DIR / autotune.CACHE_FILE).read_text())
    assert check["fast_check"] == report["fast_check"]  # made at training, saved with it
    assert check["fast_check"]["fp32_f1"] == report["best_dev_f1"]
    assert set(report["fast_check"]["candidates"]) == set(autotune.fast_candidates())
    return path


@pytest.fixture
def fresh(trained, tmp_path) -> Path:
    d = tmp_path / "tagger"
    shutil.copytree(trained, d)
    shutil.rmtree(d / inference.CACHE_DIR, ignore_errors=True)
    return d


def _tags(preds):
    return [p.tags for p in preds]


def _cache(d: Path) -> dict:
    return json.loads((d / inference.CACHE_DIR / autotune.CACHE_FILE).read_text())


def _bucket_cost(lengths, buckets, overhead):
    return sum(overhead + len(b) * (max(lengths[i] for i in b) + training.SPECIAL) for b in buckets)


def test_padded_buckets_cover_every_index_once_sorted_and_bounded():
    rng = random.Random(0)
    lengths = [rng.choice([5, 8, 12, 20, 35, 60, 90]) for _ in range(200)]
    buckets = padded_buckets(lengths, 64)
    assert sorted(i for b in buckets for i in b) == list(range(200))
    assert all(len(b) <= 64 for b in buckets)
    flat = [lengths[i] for b in buckets for i in b]
    assert flat == sorted(flat)  # runs of the length-sorted order
    # 64 in arrival order would pad each to 90; the buckets pad far less.
    padded = sum(len(b) * max(lengths[i] for i in b) for b in buckets)
    assert padded < 0.7 * 200 * 90


def test_padded_buckets_are_the_cheapest_cuts():
    """The dynamic programme's cuts cost no more than any other cut of the sorted
    order (checked exhaustively on a small case), and the two extremes behave:
    free calls never pad, costly calls fill every batch."""
    rng = random.Random(4)
    lengths = [rng.randint(1, 40) for _ in range(10)]
    ordered = sorted(range(10), key=lambda i: lengths[i])
    best = float("inf")
    for mask in range(1 << 9):  # every set of cut points between sorted neighbours
        runs, start = [], 0
        for k in range(1, 10):
            if mask >> (k - 1) & 1:
                runs.append(ordered[start:k])
                start = k
        runs.append(ordered[start:])
        if all(len(r) <= 4 for r in runs):
            best = min(best, _bucket_cost(lengths, runs, 30))
    got = padded_buckets(lengths, 4, overhead=30)
    assert _bucket_cost(lengths, got, 30) == best
    free = padded_buckets([3, 3, 7, 7, 7, 12], 64, overhead=0)
    assert all(len({[3, 3, 7, 7, 7, 12][i] for i in b}) == 1 for b in free)
    costly = padded_buckets(list(range(1, 101)), 32, overhead=10**6)
    assert len(costly) == 4  # the fewest calls 32 per call allows


def test_bucketed_predict_returns_results_in_input_order(trained, tweets):
    tagger = BertCrfTagger.load(trained, AUTO)
    samples = list(tweets[60:90])
    random.Random(1).shuffle(samples)
    together = tagger.predict(samples)
    assert [p.sample_id for p in together] == [s.id for s in samples]
    one_by_one = [tagger.predict([s])[0] for s in samples]
    assert _tags(together) == _tags(one_by_one)


def test_auto_measures_exact_back_ends_and_keeps_one_with_torch_tags(fresh, tweets):
    samples = tweets[60:90]
    want = _tags(BertCrfTagger.load(fresh, {"inference": "torch"}).predict(samples))
    tagger = BertCrfTagger.load(fresh, AUTO)  # auto, nothing cached: waits for real sentences
    assert tagger.inference_mode is None
    assert _tags(tagger.predict(samples[:3])) == want[:3]  # too few to measure on: torch
    assert tagger.inference_mode is None and tagger.tuning is None
    got = tagger.predict(samples)
    assert tagger.inference_mode in autotune.EXACT
    assert tagger.tuning["measured"] and not tagger.tuning["cached"]
    assert set(tagger.tuning["sentences_per_s"]) <= set(autotune.EXACT)
    assert "torch" in tagger.tuning["sentences_per_s"]  # the reference always runs
    assert _tags(got) == want
    report = tagger.inference_report()
    assert report["mode"] == tagger.inference_mode and report["precision"] == "exact"


def test_an_exact_candidate_whose_tags_differ_is_never_chosen(fresh, tweets):
    """A 'claimed exact' int8 path with a broken quantiser: its tags differ from
    torch's on the probe, so it is rejected however fast it runs."""
    tagger = BertCrfTagger.load(fresh, {"inference": "torch"})
    probe = autotune.probe_sentences(tagger.encode(tweets[:40]))

    def broken(encoder):
        import copy

        bad = copy.deepcopy(encoder)
        with torch.no_grad():
            for p in bad.parameters():
                p.mul_(-3.0)
        return bad

    entry = tagger._measure(
        ["torch", "int8"], probe, {}, exact=("torch", "int8"), quantizers={"int8": broken}
    )
    assert "int8" in entry["rejected"] and "tags differ" in entry["rejected"]["int8"]
    assert entry["mode"] == "torch"


def test_choice_is_cached_per_machine_key_and_remeasured_after_new_weights(
    fresh, tweets, monkeypatch
):
    samples = tweets[60:90]
    first = BertCrfTagger.load(fresh, AUTO)
    first.predict(samples)
    doc = _cache(fresh)
    key, where = autotune.choice_key("exact", torch.get_num_threads())
    assert doc["choices"][key]["mode"] == first.inference_mode
    assert doc["choices"][key]["machine"]["cpu"] == where["cpu"]

    again = BertCrfTagger.load(fresh, AUTO)  # same machine: no measuring, chosen at load
    assert again.inference_mode == first.inference_mode and again.tuning["cached"]

    # Another machine (here: a choice recorded under a foreign key) is not trusted.
    other = dict(doc)
    other["choices"] = {"exact:another-machine": {"mode": "onnx", "measured": True}}
    (fresh / inference.CACHE_DIR / autotune.CACHE_FILE).write_text(json.dumps(other))
    assert BertCrfTagger.load(fresh, AUTO).inference_mode is None  # measures again on predict

    # The thread count is part of the machine key.
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if before != 1 else 2)
        assert autotune.choice_key("exact", torch.get_num_threads())[0] != key
    finally:
        torch.set_num_threads(before)

    # New weights: the whole cache is stale and measured again.
    tagger = BertCrfTagger.load(fresh, {"inference": "torch"})
    tagger.fit(tweets[100:110])
    tagger.save(fresh)
    retrained = BertCrfTagger.load(fresh, AUTO)
    assert retrained.inference_mode is None  # the old choice belongs to other weights
    retrained.predict(samples)
    assert retrained.tuning["measured"] and not retrained.tuning["cached"]
    assert _cache(fresh)["weights_sha256"] != doc["weights_sha256"]


def test_fast_path_refused_when_its_f1_drops_and_kept_when_it_holds(fresh, tweets):
    """The check runs on the real tagger; the int8 quantiser is replaced (a parameter)
    by a broken one (weights negated) and by an exact one (identity)."""
    dev = list(tweets[:40])  # its own training tweets: a tiny tagger scores well there

    def broken(encoder):
        import copy

        bad = copy.deepcopy(encoder)
        with torch.no_grad():
            for p in bad.parameters():
                p.mul_(-3.0)
        return bad

    tagger = BertCrfTagger.load(fresh, {**AUTO, "precision": "fast"})
    assert tagger.wants_dev_check()
    record = tagger.check_precision(dev, quantizers={"int8": broken}, modes=["int8", "bf16"])
    assert record["fp32_f1"] > 0.05, "the tagger must find entities for the check to mean much"
    assert not record["candidates"]["int8"]["accepted"]
    assert "points below fp32" in record["candidates"]["int8"]["reason"]
    assert "int8" not in record["accepted"]
    assert not tagger.wants_dev_check()
    tagger.predict(tweets[60:90])
    assert tagger.inference_mode != "int8"
    assert "int8" not in tagger.tuning.get("sentences_per_s", {})  # never even timed
    saved = _cache(fresh)["fast_check"]
    assert saved["candidates"]["int8"]["accepted"] is False  # recorded beside the tagger

    held = BertCrfTagger.load(fresh, {**AUTO, "precision": "fast"})
    record = held.check_precision(dev, quantizers={"int8": lambda enc: enc}, modes=["int8"])
    assert record["candidates"]["int8"]["accepted"]
    assert record["candidates"]["int8"]["f1"] == pytest.approx(record["fp32_f1"])


def test_fast_precision_without_dev_stays_exact_and_says_why(fresh, tweets):
    tagger = BertCrfTagger.load(fresh, {**AUTO, "precision": "fast"})
    assert tagger.check_precision(None) is None
    tagger.predict(tweets[60:90])
    assert tagger.inference_mode in autotune.EXACT
    assert "data.dev" in tagger.inference_report()["autotune"]["note"]


def test_judge_fast_allows_at_most_the_tolerance():
    assert autotune.judge_fast(0.75, 0.7471) is None  # 0.29 points
    assert autotune.judge_fast(0.75, 0.76) is None  # better is fine
    assert "0.40 points below" in autotune.judge_fast(0.75, 0.746)


def test_the_run_summary_says_which_back_end_ran_and_fast_checks_on_data_dev(fresh, tmp_path):
    """``refineg predict`` with ``precision = "fast"`` and data.dev: the first load
    checks the fast paths on dev, and summary.json reports the choice and the check."""
    import textwrap

    from refineg_core.testing import run_cli
    from tests.stagedata import TWITTER_LABELS_TOML

    cfg = tmp_path / "c.toml"
    cfg.write_text(
        textwrap.dedent(f"""
            run_dir = "{tmp_path / "run"}"
            [data.predict]
            path = "{TWITTER / "dev.txt"}"
            limit = 20
            [data.dev]
            path = "{TWITTER / "dev.txt"}"
            limit = 20
            [stages]
            refine = false
            ground = false
            [tagger]
            load_from = "{fresh}"
            [tagger.options]
            precision = "fast"
            inference = "auto"
        """)
        + TWITTER_LABELS_TOML,
        encoding="utf-8",
    )
    done = run_cli(["predict", "-c", str(cfg)])
    assert done.code == 0, done.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    report = summary["stages"]["predict"]["tagger_inference"]
    assert report["precision"] == "fast" and report["requested"] == "auto"
    check = report["fast_check"]
    assert set(check["candidates"]) == set(autotune.fast_candidates())
    assert report["mode"] in autotune.EXACT + tuple(check["accepted"])
    assert _cache(fresh)["fast_check"]["dev_sentences"] == 20
