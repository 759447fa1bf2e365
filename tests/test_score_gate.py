"""A gate that only scores: the core's ``ScoreGate`` owns threshold, priority and budget.

The plugin writes ``score``; these tests pin the rule the core applies to any
scores (hand-set here, so the rule is seen apart from any scoring) and check
that a score the threshold cannot compare is refused, never read as "keep".
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import pytest
from refineg_entropy.gate import EntropyGate

from refineg_core.errors import DataError
from refineg_core.gating import DecisionOptions, ScoreGate
from refineg_core.interfaces import UncertaintyEstimator
from refineg_core.types import Entity, Sample, TaggerPrediction

LABELS = ("O", "B-PER", "I-PER")


class Scripted(ScoreGate):
    """Scores from a table: sample id -> (entity uncertainties, missed score)."""

    table: ClassVar[dict] = {}

    def score(self, sample, prediction):
        uncertainties, missed = self.table[sample.id]
        entities = [
            Entity(i, i + 1, "PER", sample.tokens[i], uncertainty=u, confidence=None)
            for i, u in enumerate(uncertainties)
        ]
        return entities, missed


def _inputs(table):
    samples, preds = [], []
    for sid, (uncertainties, _) in table.items():
        n = max(len(uncertainties), 1)
        tokens = tuple(f"w{i}" for i in range(n))
        samples.append(Sample(sid, tokens, " ".join(tokens)))
        preds.append(TaggerPrediction(sid, ("O",) * n, LABELS, np.tile([1.0, 0, 0], (n, 1))))
    return samples, preds


def _gate(table, **options):
    gate = Scripted(DecisionOptions(**options))
    gate.table = table
    return gate


def test_threshold_splits_entities_and_priority_is_the_highest_score():
    table = {"a": ([0.1, 0.7], 0.2), "b": ([0.3], 0.9), "c": ([0.2], 0.1)}
    a, b, c = _gate(table, threshold=0.5).decide(*_inputs(table))
    assert [e.uncertainty for e in a.delegated] == [0.7] and [e.uncertainty for e in a.kept] == [
        0.1
    ]
    assert a.delegate_sample and a.priority == pytest.approx(0.7)
    # b: no uncertain entity, but a likely missed one: the sample goes, its entity stays kept.
    assert b.delegate_sample and b.delegated == () and b.priority == pytest.approx(0.9)
    assert not c.delegate_sample and c.kept[0].uncertainty == 0.2


def test_missed_entities_off_ignores_the_missed_score():
    table = {"b": ([0.3], 0.9)}
    (b,) = _gate(table, threshold=0.5, missed_entities=False).decide(*_inputs(table))
    assert not b.delegate_sample and b.missed_uncertainty == 0.9


def test_budget_keeps_the_highest_priorities_and_counts_the_capped():
    table = {f"s{k}": ([u], 0.0) for k, u in enumerate([0.9, 0.6, 0.8, 0.7])}
    gate = _gate(table, threshold=0.5, budget=0.5)
    decisions = gate.decide(*_inputs(table))
    assert [d.delegate_sample for d in decisions] == [True, False, True, False]
    assert gate.last_stats["capped_by_budget"] == 2
    capped = decisions[1]
    assert capped.delegated == () and [e.uncertainty for e in capped.kept] == [0.6]
    # decide_each is the same decisions without the cap (what streaming stages rank).
    assert all(d.delegate_sample for d in gate.decide_each(*_inputs(table)))
    assert gate.budget == 0.5


@pytest.mark.parametrize("bad", [None, math.nan])
def test_an_entity_without_a_comparable_uncertainty_is_refused(bad):
    table = {"a": ([0.1, bad], 0.0)}
    with pytest.raises(DataError, match=r"sample a.*without a finite uncertainty"):
        _gate(table).decide(*_inputs(table))


def test_a_non_finite_missed_score_is_refused():
    table = {"a": ([0.1], math.inf)}
    with pytest.raises(DataError, match="missed-entity score"):
        _gate(table).decide(*_inputs(table))


def test_a_count_mismatch_is_refused():
    samples, preds = _inputs({"a": ([0.1], 0.0), "b": ([0.1], 0.0)})
    with pytest.raises(DataError, match="2 samples but 1 predictions"):
        _gate({}).decide(samples, preds[:1])


def test_the_built_in_token_gates_are_score_gates_with_the_cores_options():
    assert issubclass(EntropyGate, ScoreGate) and issubclass(ScoreGate, UncertaintyEstimator)
    assert issubclass(EntropyGate.Options, DecisionOptions)
    # One method to write: ScoreGate's only abstract method is score.
    abstract = {
        n for n in dir(ScoreGate) if getattr(getattr(ScoreGate, n), "__isabstractmethod__", 0)
    }
    assert abstract == {"score"}
    assert "decide" not in vars(EntropyGate) and "decide_each" not in vars(EntropyGate)
