"""bert_crf ensembles (seeds, snapshots) and MC dropout, with the real MiniLM on real tweets.

Training is tiny (a few dozen tweets, one or two epochs): the checks are about
how members are trained, combined, saved and loaded, not about quality.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pydantic
import pytest
import torch
from refineg_bert_crf import ensemble
from refineg_bert_crf.tagger import BertCrfTagger

from refineg_core.errors import TaggerError
from refineg_core.labels import LabelSet
from tests.test_bert_crf import LABELS, tiny_options


@pytest.fixture(scope="module")
def pair(minilm_path, few_tweets):
    train, dev = few_tweets
    tagger = BertCrfTagger(tiny_options(minilm_path, epochs=1, ensemble_size=2), LABELS)
    report = tagger.fit(train, [s for s in dev if s.entities])
    return tagger, report


def test_seed_members_are_trained_separately(pair):
    tagger, report = pair
    assert len(tagger.members) == 2 and tagger.model is tagger.members[0]
    assert tagger.member_origin == [{"seed": 3}, {"seed": 4}]
    a, b = (m.emission.weight for m in tagger.members)
    assert not torch.equal(a, b)
    assert len(report["members"]) == 2 and "ensemble_dev" in report
    assert all(len(r["epochs"]) == 1 for r in report["members"])


def test_marginals_are_the_member_mean_and_rows_sum_to_one(pair, few_tweets):
    tagger, _ = pair
    _, dev = few_tweets
    preds = tagger.predict(dev)
    singles = [tagger.member(k).predict(dev) for k in range(2)]
    for i, p in enumerate(preds):
        assert p.extra("member_marginals").shape == (2, len(dev[i].tokens), len(tagger.label_names))
        assert p.extra("dropout_marginals") is None
        np.testing.assert_allclose(p.marginals, p.extra("member_marginals").mean(0), atol=1e-6)
        for k in range(2):  # each member's slice is what that member alone predicts
            np.testing.assert_allclose(
                p.extra("member_marginals")[k], singles[k][i].marginals, atol=1e-5
            )
        if len(p.tags):
            np.testing.assert_allclose(p.marginals.sum(1), 1.0, atol=1e-9)


def test_tags_are_the_best_path_of_the_averaged_potentials(pair, few_tweets):
    """Brute force over all 9^4 paths of a 4-word sentence with the members' mean scores."""
    tagger, _ = pair
    short = next(s for s in few_tweets[1] if s.id == "short")
    ems, scores = [], []
    with torch.inference_mode():
        for k in range(2):
            em, _ = tagger.member(k).emissions_and_mask([short])
            ems.append(em[0].double().numpy())
            scores.append([t.double().numpy() for t in tagger.members[k].crf.scores()])
    em = np.mean(ems, axis=0)
    start, trans, end = (np.mean([s[j] for s in scores], axis=0) for j in range(3))
    n, n_labels = em.shape

    def score(path):
        total = start[path[0]] + em[0, path[0]] + end[path[-1]]
        return total + sum(trans[path[t - 1], path[t]] + em[t, path[t]] for t in range(1, n))

    best = max(itertools.product(range(n_labels), repeat=n), key=score)
    (pred,) = tagger.predict([short])
    assert list(pred.tags) == [tagger.label_names[j] for j in best]


def test_save_load_round_trip_and_inference_options(pair, few_tweets, tmp_path):
    tagger, _ = pair
    _, dev = few_tweets
    tagger.save(tmp_path / "t")
    assert json.loads((tmp_path / "t" / "ensemble.json").read_text())["members"] == 2
    config_options = tiny_options(
        tagger.options.encoder, epochs=7, eval_batch_size=5, mc_dropout_samples=2
    )
    loaded = BertCrfTagger.load(tmp_path / "t", config_options, LABELS)
    assert len(loaded.members) == 2
    assert loaded.options.eval_batch_size == 5 and loaded.options.mc_dropout_samples == 2
    assert loaded.options.epochs == 1 and loaded.options.ensemble_size == 2  # from the save
    before, after = tagger.predict(dev), loaded.predict(dev)
    for a, b in zip(before, after, strict=True):  # other batches -> float32 padding noise
        assert a.tags == b.tags
        np.testing.assert_allclose(a.marginals, b.marginals, atol=1e-5)
        np.testing.assert_allclose(
            a.extra("member_marginals"), b.extra("member_marginals"), atol=1e-5
        )
        assert b.extra("dropout_marginals").shape[0] == 2
    other = LabelSet({"PER": "person", "LOC": "location"})
    with pytest.raises(TaggerError, match="trained for types"):
        BertCrfTagger.load(tmp_path / "t", None, other)


def test_a_directory_without_ensemble_json_loads_as_one_model(minilm_path, few_tweets, tmp_path):
    train, dev = few_tweets
    tagger = BertCrfTagger(tiny_options(minilm_path, epochs=1), LABELS)
    tagger.fit(train[:8])
    tagger.save(tmp_path / "t")
    manifest = json.loads((tmp_path / "t" / "manifest.json").read_text())
    del manifest["files"]["ensemble.json"]  # what a tagger saved before ensembles looks like
    (tmp_path / "t" / "ensemble.json").unlink()
    (tmp_path / "t" / "manifest.json").write_text(json.dumps(manifest))
    loaded = BertCrfTagger.load(tmp_path / "t")
    assert len(loaded.members) == 1
    assert [p.tags for p in loaded.predict(dev)] == [p.tags for p in tagger.predict(dev)]
    assert all(p.extra("member_marginals") is None for p in loaded.predict(dev))


def test_mc_dropout_passes_differ_are_reproducible_and_leave_the_rng_alone(pair, few_tweets):
    tagger, _ = pair
    _, dev = few_tweets
    plain = tagger.predict(dev)
    mc = tagger.member(0)
    mc.options = mc.options.model_copy(update={"mc_dropout_samples": 3})
    rng = torch.get_rng_state()
    first = mc.predict(dev)
    assert torch.equal(rng, torch.get_rng_state())
    second = mc.predict(dev)
    single = tagger.member(0).predict(dev)
    for a, b, s, p in zip(first, second, single, plain, strict=True):
        assert a.extra("dropout_marginals").shape == (3, len(s.tags), len(tagger.label_names))
        np.testing.assert_array_equal(a.extra("dropout_marginals"), b.extra("dropout_marginals"))
        assert a.tags == s.tags  # the deterministic pass is unchanged
        np.testing.assert_allclose(a.marginals, s.marginals, atol=1e-9)
        assert p.extra("member_marginals") is None or p.extra("member_marginals").shape[0] == 2
    stacks = [a.extra("dropout_marginals") for a in first if len(a.tags)]
    assert any(not np.allclose(s[0], s[1]) for s in stacks)  # dropout really was on
    assert all(not m.training for m in tagger.members)


def test_snapshot_members_are_epochs_best_first(minilm_path, few_tweets):
    train, dev = few_tweets
    options = tiny_options(
        minilm_path, epochs=2, ensemble_size=2, ensemble_mode="snapshots", patience=None
    )
    tagger = BertCrfTagger(options, LABELS)
    report = tagger.fit(train, [s for s in dev if s.entities])
    best = report["best_epoch"]
    assert sorted(report["snapshot_epochs"]) == [1, 2]
    assert tagger.member_origin[0]["epoch"] == best
    assert len(tagger.members) == 2 and tagger.model is tagger.members[0]
    assert not torch.equal(tagger.members[0].emission.weight, tagger.members[1].emission.weight)
    assert tagger.predict(dev[:3])[0].extra("member_marginals").shape[0] == 2
    with pytest.raises(pydantic.ValidationError, match="at least"):
        tiny_options(minilm_path, epochs=1, ensemble_size=2, ensemble_mode="snapshots")


def test_mean_crf_averages_learned_scores_only(pair):
    tagger, _ = pair
    crf = ensemble.mean_crf(tagger.members)
    for got, *parts in zip(crf.scores(), *(m.crf.scores() for m in tagger.members), strict=True):
        torch.testing.assert_close(got, torch.stack(parts).mean(0))


def test_member_index_is_checked(pair):
    with pytest.raises(TaggerError, match="no member 2"):
        pair[0].member(2)
