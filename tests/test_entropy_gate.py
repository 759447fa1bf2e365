"""The entropy gate on hand-computed marginals: scores, threshold and budget modes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from refineg_entropy.gate import EntropyGate, token_entropy

from refineg_core import registry
from refineg_core.errors import DataError, PluginError
from refineg_core.types import Sample, TaggerPrediction

NAMES = ("O", "B-PER", "I-PER")
LN3 = math.log(3)


def h(*p: float) -> float:
    """Normalised entropy by hand."""
    return -sum(x * math.log(x) for x in p if x > 0) / LN3


def make(sid: str, tokens, tags, rows) -> tuple[Sample, TaggerPrediction]:
    sample = Sample(sid, tuple(tokens), " ".join(tokens))
    return sample, TaggerPrediction(
        sid, tuple(tags), NAMES, np.array(rows, dtype=float).reshape(len(tags), len(NAMES))
    )


def bob() -> tuple[Sample, TaggerPrediction]:
    return make(
        "s1",
        ["Bob", "Smith", "runs"],
        ["B-PER", "I-PER", "O"],
        [[0, 1, 0], [0, 0.5, 0.5], [0.8, 0.2, 0]],
    )


def test_token_entropy_hand_computed():
    got = token_entropy(np.array([[1, 0, 0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0]]))
    assert got == pytest.approx([0.0, 1.0, math.log(2) / LN3])
    assert token_entropy(np.zeros((0, 3))).shape == (0,)


def test_entity_mean_vs_max_and_missed_score():
    sample, pred = bob()
    mean = EntropyGate(EntropyGate.Options(aggregate="mean")).decide([sample], [pred])[0]
    mx = EntropyGate(EntropyGate.Options(aggregate="max", threshold=0.9)).decide([sample], [pred])[
        0
    ]
    (e_mean,) = mean.entities
    (e_max,) = mx.entities
    assert (e_mean.start, e_mean.end, e_mean.type, e_mean.text) == (0, 2, "PER", "Bob Smith")
    assert e_mean.source == "tagger"
    assert e_mean.uncertainty == pytest.approx((0 + h(0.5, 0.5)) / 2)
    assert e_max.uncertainty == pytest.approx(h(0.5, 0.5))
    assert e_mean.confidence == pytest.approx(0.75)  # mean P(decoded tag)
    assert e_max.confidence == pytest.approx(0.5)  # min P(decoded tag)
    assert mean.missed_uncertainty == pytest.approx(h(0.8, 0.2))


def test_threshold_mode():
    sample, pred = bob()
    # mean 0.315 <= 0.4 keeps the entity, but the O token (0.456) is uncertain: a missed entity?
    d = EntropyGate(EntropyGate.Options(threshold=0.4)).decide([sample], [pred])[0]
    assert len(d.kept) == 1 and not d.delegated and d.delegate_sample
    d = EntropyGate(EntropyGate.Options(threshold=0.5)).decide([sample], [pred])[0]
    assert len(d.kept) == 1 and not d.delegate_sample
    d = EntropyGate(EntropyGate.Options(threshold=0.5, aggregate="max")).decide([sample], [pred])[0]
    assert not d.kept and len(d.delegated) == 1 and d.delegate_sample
    d = EntropyGate(EntropyGate.Options(threshold=0.4, missed_entities=False)).decide(
        [sample], [pred]
    )[0]
    assert not d.delegate_sample


def test_budget_caps_most_uncertain_samples_first():
    def one(sid: str, p_o: float):
        return make(sid, ["a", "b"], ["O", "O"], [[1, 0, 0], [p_o, 1 - p_o, 0]])

    pairs = [one("low", 0.95), one("high", 0.5), one("mid", 0.7), one("top", 0.4)]
    samples, preds = zip(*pairs, strict=True)
    gate = EntropyGate(EntropyGate.Options(threshold=0.0, budget=0.5))
    chosen = {d.sample_id for d in gate.decide(samples, preds) if d.delegate_sample}
    assert chosen == {"top", "high"}  # floor(0.5 * 4) = 2 highest missed-entity scores
    assert gate.last_stats["capped_by_budget"] == 2
    # Scores: high 0.631 > top 0.613 > mid 0.556 > low 0.181. The budget only caps:
    # with tau above 'mid', fewer samples than the budget allows are delegated.
    assert h(0.5, 0.5) > h(0.4, 0.6) > 0.58 > h(0.7, 0.3)
    gate = EntropyGate(EntropyGate.Options(threshold=0.58, budget=0.75))
    chosen = {d.sample_id for d in gate.decide(samples, preds) if d.delegate_sample}
    assert chosen == {"top", "high"}
    gate = EntropyGate(EntropyGate.Options(threshold=0.58, budget=0.25))
    chosen = {d.sample_id for d in gate.decide(samples, preds) if d.delegate_sample}
    assert chosen == {"high"}


def test_budget_ranks_by_entity_and_missed_scores():
    a = make("a", ["Ann", "x"], ["B-PER", "O"], [[0.3, 0.4, 0.3], [1, 0, 0]])  # entity u ~0.99
    b = make("b", ["Bo", "y"], ["B-PER", "O"], [[0.1, 0.9, 0], [0.6, 0.4, 0]])  # missed 0.61
    c = make("c", ["Cy", "z"], ["B-PER", "O"], [[0, 1, 0], [1, 0, 0]])  # certain
    samples, preds = zip(a, b, c, strict=True)
    decisions = EntropyGate(EntropyGate.Options(threshold=0.2, budget=0.34)).decide(samples, preds)
    assert [d.delegate_sample for d in decisions] == [True, False, False]
    assert len(decisions[0].delegated) == 1 and not decisions[1].delegated
    assert decisions[1].kept and decisions[2].kept


def test_broken_tags_are_repaired_and_counted():
    s, p = make(
        "r", ["Ann", "Lee", "x"], ["I-PER", "I-PER", "O"], [[0, 0, 1], [0, 0, 1], [1, 0, 0]]
    )
    gate = EntropyGate()
    (d,) = gate.decide([s], [p])
    assert [(e.start, e.end, e.type) for e in d.entities] == [(0, 2, "PER")]
    assert gate.last_stats["tag_repairs"] == 1


def test_empty_sentence_and_mismatches():
    s, p = make("e", [], [], np.zeros((0, 3)))
    (d,) = EntropyGate().decide([s], [p])
    assert d.entities == () and d.missed_uncertainty == 0.0 and not d.delegate_sample
    s1, p1 = bob()
    s2, _ = make("other", ["x"], ["O"], [[1, 0, 0]])
    with pytest.raises(DataError, match="paired with sample"):
        EntropyGate().decide([s2], [p1])
    with pytest.raises(DataError, match="1 samples but 2 predictions"):
        EntropyGate().decide([s1], [p1, p1])


def test_created_through_the_registry_with_validated_options():
    gate = registry.create("uncertainty", "entropy", {"threshold": 0.3, "aggregate": "max"})
    assert isinstance(gate, EntropyGate) and gate.options.threshold == 0.3
    with pytest.raises(PluginError, match="threshold"):
        registry.create("uncertainty", "entropy", {"threshold": 1.5})
    with pytest.raises(PluginError):
        registry.create("uncertainty", "entropy", {"treshold": 0.3})
