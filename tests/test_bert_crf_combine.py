"""Joining bert_crf taggers trained apart into one ensemble (real MiniLM, real tweets).

Training is tiny: the checks are that the joined ensemble *is* its inputs' members
(same marginals, saved and loaded intact), that incompatible inputs are refused
with the reason, and that the command line saves a loadable ensemble.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from refineg_bert_crf.combine import combine, main
from refineg_bert_crf.tagger import BertCrfTagger

from refineg_core.errors import TaggerError
from refineg_core.labels import LabelSet
from tests.test_bert_crf import LABELS, tiny_options


@pytest.fixture(scope="module")
def saved(minilm_path, few_tweets, tmp_path_factory):
    """Two single taggers (seeds 3 and 5) and one ensemble of 2 (seeds 7, 8), saved."""
    train, _ = few_tweets
    root = tmp_path_factory.mktemp("combine")
    dirs = []
    for name, kw in [
        ("a", {"seed": 3}),
        ("b", {"seed": 5}),
        ("pair", {"seed": 7, "ensemble_size": 2}),
    ]:
        tagger = BertCrfTagger(tiny_options(minilm_path, epochs=1, **kw), LABELS)
        tagger.fit(train)
        tagger.save(root / name)
        dirs.append(root / name)
    return dirs


def test_joined_members_are_the_inputs_members(saved, few_tweets):
    _, dev = few_tweets
    a, b, pair = (BertCrfTagger.load(d) for d in saved)
    joined = combine([a, b, pair], names=["a", "b", "pair"])
    assert len(joined.members) == 4 and joined.options.ensemble_size == 4
    assert [o["from"] for o in joined.member_origin] == ["a", "b", "pair", "pair"]
    assert [o["seed"] for o in joined.member_origin] == [3, 5, 7, 8]
    preds = joined.predict(dev)
    singles = [a.predict(dev), b.predict(dev), *(pair.member(k).predict(dev) for k in range(2))]
    for i, p in enumerate(preds):
        if not p.tags:
            continue
        assert p.extra("member_marginals").shape[0] == 4
        one = singles[0][i]  # a single model's pairs agree with its node marginals
        np.testing.assert_allclose(
            one.extra("transition_marginals").sum(2), one.marginals[:-1], atol=1e-4
        )
        np.testing.assert_allclose(
            one.extra("transition_marginals").sum(1), one.marginals[1:], atol=1e-4
        )
        for k in range(4):
            np.testing.assert_allclose(
                p.extra("member_marginals")[k], singles[k][i].marginals, atol=1e-5
            )
            np.testing.assert_allclose(
                p.extra("member_transition_marginals")[k],
                singles[k][i].extra("transition_marginals"),
                atol=1e-5,
            )
        np.testing.assert_allclose(p.marginals, p.extra("member_marginals").mean(0), atol=1e-6)
        np.testing.assert_allclose(
            p.extra("transition_marginals"),
            p.extra("member_transition_marginals").mean(0),
            atol=1e-6,
        )
    # The inputs are untouched: still one model each.
    assert len(a.members) == 1 and len(pair.members) == 2


def test_command_line_saves_a_loadable_ensemble(saved, few_tweets, tmp_path, capsys):
    _, dev = few_tweets
    out = tmp_path / "ens"
    assert main([str(d) for d in saved[:2]] + ["--out", str(out)]) == 0
    assert "2 members" in capsys.readouterr().out
    doc = json.loads((out / "ensemble.json").read_text())
    assert doc["members"] == 2 and [o["seed"] for o in doc["origin"]] == [3, 5]
    loaded = BertCrfTagger.load(out)
    direct = combine([BertCrfTagger.load(d) for d in saved[:2]])
    for x, y in zip(loaded.predict(dev), direct.predict(dev), strict=True):
        assert x.tags == y.tags
        np.testing.assert_allclose(x.marginals, y.marginals, atol=1e-6)
    # A second run refuses to write into the saved ensemble.
    assert main([str(d) for d in saved[:2]] + ["--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err


def test_incompatible_taggers_are_refused_with_the_reason(saved, minilm_path, few_tweets):
    train, _ = few_tweets
    a = BertCrfTagger.load(saved[0])
    bioes = BertCrfTagger(tiny_options(minilm_path, epochs=1, scheme="BIOES"), LABELS)
    bioes.fit(train[:8])
    with pytest.raises(TaggerError, match=r"options\.scheme") as err:
        combine([a, bioes], names=["a", "bioes"])
    assert err.value.where == "bioes"
    other = BertCrfTagger(
        tiny_options(minilm_path, epochs=1), LabelSet({**LABELS.descriptions, "EVENT": "event"})
    )
    other.fit(train[:8])
    with pytest.raises(TaggerError, match="labels"):
        combine([a, other])
    with pytest.raises(TaggerError, match="at least two"):
        combine([a])
    with pytest.raises(TaggerError, match="same model") as err:  # one folder given twice
        combine([a, BertCrfTagger.load(saved[1]), BertCrfTagger.load(saved[0])], names="abc")
    assert err.value.where == "c" and "member of a" in str(err.value)
    untrained = BertCrfTagger(tiny_options(minilm_path), LABELS)
    with pytest.raises(TaggerError, match="not trained"):
        combine([a, untrained])
