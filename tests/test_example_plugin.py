"""The example third-party package ``examples/refineg-gazetteer``, used as a user would.

Skips (with the install command) when the package is not installed; CI installs it.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from refineg_core import registry
from refineg_core.errors import PluginError, TaggerError
from refineg_core.evaluation import evaluate
from refineg_core.formats import load_dataset
from refineg_core.formats.native import read_results
from refineg_core.hooks import get_hooks
from refineg_core.labels import LabelSet, tags_to_spans
from refineg_core.testing import run_cli
from refineg_core.types import Entity, Sample

gazetteer_pkg = pytest.importorskip(
    "refineg_gazetteer",
    reason="example plugin not installed: pip install -e examples/refineg-gazetteer",
)
from refineg_gazetteer.tagger import GazetteerTagger  # noqa: E402

CCKS_TYPES = ("vehicle", "aircraft", "vessel", "weapon", "location", "other")
LABELS = LabelSet({t: f"a named {t}" for t in CCKS_TYPES})


def sample(sid: str, text: str, *spans: tuple[int, int, str]) -> Sample:
    tokens = tuple(text.split())
    ents = tuple(Entity(s, e, t, " ".join(tokens[s:e])) for s, e, t in spans)
    return Sample(sid, tokens, text, entities=ents)


def entities_of(pred) -> list[tuple[int, int, str]]:
    return list(tags_to_spans(pred.tags).spans)


def test_installed_with_distribution_and_version():
    version = metadata.version("refineg-gazetteer")
    assert version == gazetteer_pkg.__version__
    found = {(p.group, p.name): p for p in registry.installed()}
    for key in (("refineg.taggers", "gazetteer"), ("refineg.uncertainty", "rules")):
        assert key in found, f"{key} not among installed plugins"
        assert found[key].distribution == "refineg-gazetteer"
        assert found[key].version == version


def test_unknown_or_bad_option_names_the_dotted_path():
    with pytest.raises(PluginError) as err:
        registry.create("tagger", "gazetteer", {"case_sensitve": True}, LABELS)
    assert err.value.where == "tagger.options.case_sensitve"
    assert "case_sensitive" in str(err.value)  # the valid options are listed
    with pytest.raises(PluginError) as err:
        registry.create("tagger", "gazetteer", {"smoothing": 1.5}, LABELS)
    assert err.value.where == "tagger.options.smoothing"
    with pytest.raises(PluginError) as err:
        registry.create("uncertainty", "rules", {"threshold": 0.3}, LABELS)
    assert err.value.where == "uncertainty.options.threshold"


# --- the tagger on small hand-made cases ------------------------------------

TRAIN = [
    sample("t1", "The Tiger flew over the M1 Abrams", (1, 2, "aircraft"), (5, 7, "vehicle")),
    sample("t2", "A Tiger helicopter landed", (1, 2, "aircraft")),
    sample("t3", "The Tiger tank rolled past an M1", (1, 2, "vehicle"), (6, 7, "vehicle")),
    sample("t4", "Javelin missiles were used", (0, 1, "weapon")),
    sample("t5", "He threw a javelin and a Javelin", (6, 7, "weapon")),
]


def make(**options) -> GazetteerTagger:
    tagger = registry.create("tagger", "gazetteer", options, LABELS)
    assert isinstance(tagger, GazetteerTagger)
    return tagger


def test_longest_match_on_word_boundaries_and_majority_type():
    tagger = make(outside_evidence=False)
    report = tagger.fit(TRAIN)
    # Names: Tiger (aircraft 2, vehicle 1), M1 Abrams, M1, Javelin -> 4; Tiger is ambiguous.
    assert report["names"] == 4 and report["ambiguous_names"] == 1
    [pred] = tagger.predict([sample("q", "A Tiger and M1 Abrams and M1s and Tigers")])
    # "M1 Abrams" wins over "M1"; "M1s"/"Tigers" are other words; Tiger -> aircraft (2:1).
    assert entities_of(pred) == [(1, 2, "aircraft"), (3, 5, "vehicle")]


def test_marginals_split_ambiguous_names_by_their_counts():
    eps = 0.1
    tagger = make(smoothing=eps, outside_evidence=False)
    tagger.fit(TRAIN)
    [pred] = tagger.predict([sample("q", "Tiger seen")])
    names = list(pred.label_names)
    n = len(names)  # 13 BIO tags for 6 types
    assert n == 13
    np.testing.assert_allclose(pred.marginals.sum(axis=1), 1.0)
    # By hand: (1 - eps) * count share + eps / n on each tag.
    row = pred.marginals[0]
    assert row[names.index("B-aircraft")] == pytest.approx(0.9 * 2 / 3 + eps / n)
    assert row[names.index("B-vehicle")] == pytest.approx(0.9 * 1 / 3 + eps / n)
    assert row[names.index("O")] == pytest.approx(eps / n)
    assert pred.marginals[1, names.index("O")] == pytest.approx(0.9 + eps / n)


def test_case_insensitive_option_and_outside_evidence():
    # Case-sensitive: lower-case "javelin" (t5) is another word; the capitalised
    # "Javelin" in t5 is tagged, so no O evidence.
    strict = make()
    strict.fit(TRAIN)
    assert entities_of(strict.predict([sample("q", "a javelin")])[0]) == []
    # Case-insensitive: "javelin" in t5 was seen untagged once and tagged twice
    # (t4, t5) -> still weapon, but with 1/3 of the mass on O.
    loose = make(case_sensitive=False, smoothing=0.0)
    loose.fit(TRAIN)
    [pred] = loose.predict([sample("q", "a javelin")])
    assert entities_of(pred) == [(1, 2, "weapon")]
    names = list(pred.label_names)
    assert pred.marginals[1, names.index("O")] == pytest.approx(1 / 3)
    assert pred.marginals[1, names.index("B-weapon")] == pytest.approx(2 / 3)


def test_bioes_scheme():
    tagger = make(scheme="BIOES", outside_evidence=False)
    tagger.fit(TRAIN)
    [pred] = tagger.predict([sample("q", "the M1 Abrams and Javelin")])
    assert pred.tags == ("O", "B-vehicle", "E-vehicle", "O", "S-weapon")
    np.testing.assert_allclose(pred.marginals.sum(axis=1), 1.0)


def test_save_load_roundtrip_and_clear_errors(tmp_path: Path):
    tagger = make(case_sensitive=False)
    tagger.fit(TRAIN)
    tagger.save(tmp_path / "tg")
    loaded = GazetteerTagger.load(tmp_path / "tg")
    assert loaded.options == tagger.options
    queries = [sample("q1", "Tiger and M1 Abrams"), sample("q2", "the javelin")]
    for a, b in zip(tagger.predict(queries), loaded.predict(queries), strict=True):
        assert a.tags == b.tags
        np.testing.assert_allclose(a.marginals, b.marginals)
    with pytest.raises(TaggerError, match=r"no gazetteer\.json") as err:
        GazetteerTagger.load(tmp_path / "empty")
    assert err.value.where == str(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "gazetteer.json").write_text('{"format": "refineg-gazetteer/1", "entr', "utf-8")
    with pytest.raises(TaggerError, match="corrupt") as err:
        GazetteerTagger.load(bad)
    assert err.value.where == str(bad / "gazetteer.json")
    (bad / "gazetteer.json").write_text(
        json.dumps(
            {
                "format": "refineg-gazetteer/1",
                "options": {},
                "labels": {"x": "x"},
                "entries": [{"tokens": ["A"], "counts": {"x": 0}}],
            }
        ),
        "utf-8",
    )
    with pytest.raises(TaggerError, match="corrupt"):
        GazetteerTagger.load(bad)
    with pytest.raises(TaggerError, match="fit"):
        make().predict(queries)


# --- the rule gate ----------------------------------------------------------


def test_rule_gate_delegates_ambiguous_names_and_capitalised_misses():
    tagger = make(outside_evidence=False)
    tagger.fit(TRAIN)
    gate = registry.create("uncertainty", "rules", {"max_uncertainty": 0.2}, LABELS)
    queries = [
        sample("amb", "the Tiger and the M1 Abrams"),  # Tiger 2:1 ambiguous
        sample("cap", "Troops met near Bakhmut today"),  # Bakhmut: capitalised, tagged O
        sample("plain", "Troops met the M1 Abrams . Then left"),  # capitals only at starts
    ]
    amb, cap, plain = gate.decide(queries, tagger.predict(queries))
    # Tiger's confidence = 0.9 * 2/3 + 0.1/13 ~ 0.61 -> uncertainty 0.39 > 0.2: delegated;
    # M1 Abrams: 0.9 + 0.1/13 ~ 0.91 -> 0.09: kept.
    assert [e.span for e in amb.delegated] == [(1, 2)]
    assert [e.span for e in amb.kept] == [(4, 6)]
    assert amb.delegated[0].uncertainty == pytest.approx(1 - (0.9 * 2 / 3 + 0.1 / 13))
    assert amb.delegate_sample
    # One of the 5 O tokens is a capitalised non-initial word.
    assert cap.kept == cap.delegated == ()
    assert cap.delegate_sample and cap.missed_uncertainty == pytest.approx(1 / 5)
    # "Troops" starts the sentence and "Then" follows ".": nothing suspicious.
    assert not plain.delegate_sample and plain.missed_uncertainty == 0.0
    off = registry.create("uncertainty", "rules", {"capitalized_o": False}, LABELS)
    assert not off.decide([queries[1]], tagger.predict([queries[1]]))[0].delegate_sample


# --- real data, and selection through a config -------------------------------


def test_rule_gate_is_a_score_gate_deciding_its_two_rules_on_real_tweets(twitter_dir: Path):
    """The rule gate writes only ``score`` (the core's ScoreGate decides); on real
    tweets its decisions are exactly the two documented rules, for one and for two
    capitalised O words, and its options are still its own."""
    from refineg_gazetteer.rules import SENTENCE_END

    from refineg.plugin import ScoreGate

    labels = LabelSet({"PER": "p", "ORG": "o", "LOC": "l", "OTHER": "x"})
    train = list(load_dataset(twitter_dir / "train.txt").samples[:300])
    dev = list(load_dataset(twitter_dir / "dev.txt").samples[:300])
    tagger = registry.create("tagger", "gazetteer", {}, labels)
    tagger.fit(train)
    preds = tagger.predict(dev)
    flagged_by = {}
    for m in (1, 2):
        gate = registry.create("uncertainty", "rules", {"min_capitalized": m}, labels)
        assert isinstance(gate, ScoreGate) and gate.budget is None
        decisions = gate.decide(dev, preds)
        flagged_by[m] = set()
        for s, p, d in zip(dev, preds, decisions, strict=True):
            assert d.sample_id == s.id
            entities = [*d.kept, *d.delegated]
            assert sorted(e.span for e in entities) == sorted((a, b) for a, b, _ in entities_of(p))
            assert all(e.uncertainty > 0.2 for e in d.delegated)
            assert all(e.uncertainty <= 0.2 for e in d.kept)
            outside = [i for i, t in enumerate(p.tags) if t == "O"]
            caps = [
                i
                for i in outside
                if s.tokens[i][:1].isupper()
                and s.tokens[i] not in ("I", "RT")
                and not (i == 0 or s.tokens[i - 1] in SENTENCE_END)
            ]
            flagged = len(caps) >= m
            assert d.delegate_sample == (bool(d.delegated) or flagged), s.id
            assert d.missed_uncertainty == (len(caps) / len(outside) if flagged else 0.0)
            if flagged:
                flagged_by[m].add(s.id)
    assert flagged_by[2] < flagged_by[1]  # both rules were met, and the count matters
    for key in ("threshold", "budget", "missed_entities"):  # the core's names are not options
        with pytest.raises(PluginError) as err:
            registry.create("uncertainty", "rules", {key: 0.3}, LABELS)
        assert err.value.where == f"uncertainty.options.{key}"


def test_fit_and_predict_on_ccks_gold(ccks_dir: Path):
    gold = list(load_dataset(ccks_dir / "gold-500.conll").samples)
    tagger = make(case_sensitive=True)
    report = tagger.fit(gold[:400], gold[400:])
    assert report["train_samples"] == 400 and report["names"] > 50
    assert 0.0 < report["dev"]["mner_f1"] <= 100.0
    preds = tagger.predict(gold)
    assert [p.sample_id for p in preds] == [s.id for s in gold]
    for s, p in zip(gold, preds, strict=True):
        assert len(p.tags) == len(s.tokens)
        np.testing.assert_allclose(p.marginals.sum(axis=1), 1.0)


def test_training_set_errors_are_exactly_the_ambiguities(ccks_dir: Path):
    """Fit on all 500 gold sentences and tag them again.

    A gazetteer recalls its own names, so every error is explained by its table:
    a mention of a name's minority type is 1 fn + 1 fp, an untagged occurrence of a
    name whose majority is a type is 1 fp (names whose majority is O are never tagged).
    """
    gold = list(load_dataset(ccks_dir / "gold-500.conll").samples)
    tagger = make()
    tagger.fit(gold)
    assert tagger.gazetteer is not None
    exp_fp = exp_fn = 0
    for counts in tagger.gazetteer.entries.values():
        typed = {k: v for k, v in counts.items() if k != "O"}
        best = max(counts, key=lambda k: (counts[k], k != "O"))
        if best == "O":
            exp_fn += sum(typed.values())
        else:
            wrong = sum(typed.values()) - typed[best]
            exp_fn += wrong
            exp_fp += wrong + counts.get("O", 0)
    preds = [
        Sample(
            s.id,
            s.tokens,
            s.text,
            entities=tuple(Entity(a, b, t, s.span_text(a, b)) for a, b, t in entities_of(p)),
        )
        for s, p in zip(gold, tagger.predict(gold), strict=True)
    ]
    r = evaluate(gold, preds, extra_metrics=False)
    n_gold = sum(len(s.entities) for s in gold)
    assert (r.mner.fp, r.mner.fn) == (exp_fp, exp_fn)
    assert r.mner.tp == n_gold - exp_fn


def test_selected_through_a_config_file(ccks_dir: Path, tmp_path: Path, monkeypatch):
    # Only this package's plugins matter here: load no pluggy hook plugins.
    monkeypatch.setenv("REFINEG_HOOK_PLUGINS", "")
    get_hooks.cache_clear()
    gold = ccks_dir / "gold-500.conll"
    labels = "\n".join(f'{t} = "a named {t}"' for t in CCKS_TYPES)
    config = tmp_path / "gazetteer.toml"
    config.write_text(
        f"""
run_dir = "run"
[labels]
{labels}
[data.train]
path = "{gold}"
format = "conll"
[data.predict]
path = "{gold}"
format = "conll"
limit = 50
[stages]
train = true
predict = true
refine = false
ground = false
[tagger]
plugin = "gazetteer"
[tagger.options]
case_sensitive = false
[uncertainty]
plugin = "rules"
""",
        encoding="utf-8",
    )
    try:
        res = run_cli(["run", "--config", str(config)])
        assert res.code == 0, res.stderr
        saved = json.loads((tmp_path / "run" / "tagger" / "gazetteer.json").read_text())
        assert saved["options"]["case_sensitive"] is False
        results = read_results(tmp_path / "run" / "predict.jsonl")
        assert len(results) == 50
        assert any(r.entities for r in results)
        assert all(
            e.source == "tagger" and e.uncertainty is not None for r in results for e in r.entities
        )
        bad = run_cli(["run", "--config", str(config), "--set", "tagger.options.colour=1"])
        assert bad.code == 2 and "tagger.options.colour" in bad.stderr
    finally:
        get_hooks.cache_clear()
