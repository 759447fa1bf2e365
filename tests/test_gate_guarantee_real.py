"""The precision guarantee on real predictions: a simulation, and ``refineg run``.

A real MiniLM ``bert_crf`` tagger is trained for one epoch on 300 real
Twitter-GMNER train tweets and predicts 600 real dev tweets. The simulation
draws 200 random 50/50 splits of those posts (the post is the unit: its
entities stay together, as they would in a real calibration split), chooses
the threshold on one half with Learn-then-Test and measures the precision of
what the gate keeps on the other half. The guarantee says the kept precision
misses the target with probability at most ``risk``; the test part's own
sampling noise adds to that, and the splits overlap, so the allowed number of
misses is the 99.9% quantile of Binomial(200, risk) - a tolerance, not a
second guarantee.
"""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
from refineg_bert_crf.tagger import BertCrfTagger
from refineg_gates.guarantee import binomial_cdf
from refineg_gates.guarantee_gate import choose, items, score_posts
from refineg_gates.span import SpanGate

from refineg_core.formats import load_dataset
from refineg_core.formats.native import read_results
from refineg_core.labels import LabelSet
from refineg_core.testing import run_cli
from tests.conftest import TWITTER
from tests.stagedata import TWITTER_LABELS_TOML

pytestmark = pytest.mark.slow

LABELS = LabelSet({"PER": "person", "LOC": "location", "ORG": "organisation", "OTHER": "other"})
TRAIN_N, DEV_N, SPLITS, RISK = 300, 600, 200, 0.1
#: Targets the 1-epoch tagger can support on 300 calibration posts (its kept
#: precision at the most confident thresholds is well above them).
ENTITY_TARGET, SAMPLE_TARGET = 0.8, 0.8


def options(minilm_path=None) -> BertCrfTagger.Options:
    extra = {"encoder": str(minilm_path), "epochs": 1, "seed": 3} if minilm_path else {}
    return BertCrfTagger.Options(
        batch_size=16, max_length=64, device="cpu", inference="torch", **extra
    )


@pytest.fixture(scope="module")
def tagger_dir(minilm_path, tmp_path_factory):
    if not TWITTER.exists():
        pytest.skip(f"real data not found at {TWITTER}")
    tagger = BertCrfTagger(options(minilm_path), LABELS)
    tagger.fit(load_dataset(TWITTER / "train.txt", limit=TRAIN_N).samples)
    path = tmp_path_factory.mktemp("guarantee") / "tagger"
    tagger.save(path)
    return path


@pytest.fixture(scope="module")
def dev_posts(tagger_dir):
    """The 600 dev posts scored by the span gate, with right/wrong marks against gold."""
    dev = list(load_dataset(TWITTER / "dev.txt", limit=DEV_N).samples)
    predictions = BertCrfTagger.load(tagger_dir, options(), LABELS).predict(dev)
    return score_posts(SpanGate(), dev, predictions)


def allowed_misses(splits: int, risk: float, level: float = 0.001) -> int:
    """The smallest m with P(Binomial(splits, risk) > m) <= level."""
    m = 0
    while 1 - binomial_cdf(m, splits, risk) > level:
        m += 1
    return m


def simulate(posts, unit: str, target: float, seed: int = 0) -> tuple[int, int, list[float]]:
    """(splits with a promise, of them the misses on the test half, kept shares)."""
    rng = np.random.default_rng(seed)
    half = len(posts) // 2
    promised = misses = 0
    kept_share = []
    for _ in range(SPLITS):
        order = rng.permutation(len(posts))
        cal = [posts[i] for i in order[:half]]
        test = [posts[i] for i in order[half:]]
        choice = choose(cal, target=target, risk=RISK, unit=unit, missed_entities=True)
        if choice.threshold is None:
            continue  # refused: nothing promised
        promised += 1
        scores, wrong = items(test, unit, True)
        kept = scores <= choice.threshold
        kept_share.append(float(kept.mean()))
        if kept.any() and 1 - wrong[kept].mean() < target:
            misses += 1
    return promised, misses, kept_share


@pytest.mark.parametrize(("unit", "target"), [("entity", ENTITY_TARGET), ("sample", SAMPLE_TARGET)])
def test_guarantee_holds_on_random_splits_of_real_predictions(dev_posts, unit, target):
    scores, wrong = items(dev_posts, unit, True)
    assert len(scores) > 200  # enough real items for the splits to mean something
    promised, misses, kept_share = simulate(dev_posts, unit, target)
    print(
        f"{unit}: target {target}, promised on {promised}/{SPLITS} splits, missed {misses}, "
        f"kept share median {np.median(kept_share) if kept_share else 0:.3f}, "
        f"overall precision {1 - wrong.mean():.3f}"
    )
    assert promised >= 0.9 * SPLITS  # the test is not vacuous: it promises on most splits
    assert np.median(kept_share) > 0.2  # and keeps a real share of the items
    assert misses <= allowed_misses(SPLITS, RISK)


def test_point_estimate_without_correction_misses_more_often(dev_posts):
    """What the guarantee buys: the largest threshold whose calibration precision
    merely reaches the target misses it on the test half far more often."""
    from refineg_gates.guarantee import default_grid, kept_counts

    rng = np.random.default_rng(1)
    half = len(dev_posts) // 2
    naive = ltt = 0
    for _ in range(SPLITS):
        order = rng.permutation(len(dev_posts))
        cal = [dev_posts[i] for i in order[:half]]
        test = [dev_posts[i] for i in order[half:]]
        s, w = items(cal, "entity", True)
        n, k = kept_counts(s, w, default_grid())
        ok = [
            t
            for t, a, b in zip(default_grid(), n, k, strict=True)
            if a and 1 - b / a >= ENTITY_TARGET
        ]
        ts, tw = items(test, "entity", True)
        for tau, counter in ((max(ok) if ok else None, "naive"), (None, "ltt")):
            if counter == "ltt":
                tau = choose(
                    cal, target=ENTITY_TARGET, risk=RISK, unit="entity", missed_entities=True
                ).threshold
            if tau is None:
                continue
            kept = ts <= tau
            if kept.any() and 1 - tw[kept].mean() < ENTITY_TARGET:
                naive += counter == "naive"
                ltt += counter == "ltt"
    assert naive > ltt


def config(tmp_path, tagger_dir, dev_limit: int, target: float) -> str:
    path = tmp_path / f"c{dev_limit}.toml"
    path.write_text(
        textwrap.dedent(f"""
            run_dir = "{tmp_path / f"run{dev_limit}"}"
            [data.dev]
            path = "{TWITTER / "dev.txt"}"
            limit = {dev_limit}
            [data.predict]
            path = "{TWITTER / "train.txt"}"
            limit = 40
            [stages]
            refine = false
            ground = false
            [tagger]
            load_from = "{tagger_dir}"
            [tagger.options]
            inference = "torch"
            [uncertainty]
            plugin = "span"
            [uncertainty.options]
            target_precision = {target}
            risk = {RISK}
        """)
        + TWITTER_LABELS_TOML,
        encoding="utf-8",
    )
    return str(path)


def test_run_promises_on_enough_data_and_refuses_on_too_little(tagger_dir, tmp_path):
    done = run_cli(["run", "-c", config(tmp_path, tagger_dir, DEV_N, ENTITY_TARGET)])
    assert done.code == 0, done.stderr
    assert f"precision of the entities the gate keeps >= {ENTITY_TARGET:g}" in done.stderr
    summary = json.loads((tmp_path / f"run{DEV_N}" / "summary.json").read_text())
    g = summary["calibration"]["guarantee"]
    assert g["promise"] == (
        f"precision of the entities the gate keeps >= {ENTITY_TARGET:g} with probability >= 0.9"
    )
    assert g["calibration_samples"] == DEV_N and g["calibration_entities"] == g["calibration_items"]
    assert g["realized_precision"] >= ENTITY_TARGET and g["kept_items"] >= g["min_kept_items"]
    tau = g["threshold"]
    results = read_results(tmp_path / f"run{DEV_N}" / "predict.jsonl")
    assert len(results) == 40
    for r in results:  # the run used the chosen threshold: kept <= tau < delegated
        for e in r.entities:
            assert (e.key in r.gate.delegated) == (e.uncertainty > tau), (r.id, e, tau)

    refused = run_cli(["run", "-c", config(tmp_path, tagger_dir, 15, ENTITY_TARGET)])
    assert refused.code == 2
    assert "cannot support" in refused.stderr and "15 samples" in refused.stderr
    assert "target_precision" in refused.stderr
    assert not (tmp_path / "run15" / "predict.jsonl").exists()
