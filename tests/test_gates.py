"""The margin, MC-dropout, ensemble-MI and temperature-scaled entropy gates.

Scores are checked against hand-computed values; the shared threshold/budget
logic is the entropy gate's (tests/test_entropy_gate.py), so here it is only
checked that every estimator goes through it.
"""

from __future__ import annotations

import math
from importlib import metadata

import numpy as np
import pytest
from refineg_entropy.gate import EntropyGate
from refineg_gates.decision import TokenScoreGate
from refineg_gates.margin import MarginGate, token_margin_uncertainty
from refineg_gates.sampling import EnsembleMIGate, MCDropoutGate, mutual_information
from refineg_gates.span import SpanGate
from refineg_gates.temperature import TemperatureEntropyGate, fit_temperature, nll, scale

from refineg_core import registry
from refineg_core.errors import DataError, PluginError
from refineg_core.interfaces import UncertaintyEstimator
from refineg_core.types import Entity, Sample, TaggerPrediction

LABELS = ("O", "B-PER", "I-PER")


def sample(tokens, entities=()) -> Sample:
    return Sample("s", tuple(tokens), " ".join(tokens), entities=tuple(entities))


def pred(tags, marginals, **kw) -> TaggerPrediction:
    return TaggerPrediction("s", tuple(tags), LABELS, np.asarray(marginals, dtype=float), **kw)


def test_margin_hand_computed():
    got = token_margin_uncertainty(np.array([[1, 0, 0], [0.5, 0.5, 0], [0.6, 0.3, 0.1]]))
    np.testing.assert_allclose(got, [0.0, 1.0, 0.7])
    assert token_margin_uncertainty(np.zeros((0, 3))).shape == (0,)


def test_margin_differs_from_entropy_where_the_tail_spreads():
    # Same top-2 gap, different tails: margin ties them, entropy does not.
    a, c = [0.5, 0.25, 0.25], [0.6, 0.35, 0.05]
    u = token_margin_uncertainty(np.array([a, c]))
    assert u[0] == pytest.approx(0.75) and u[1] == pytest.approx(0.75)
    e = EntropyGate().token_uncertainty(None, np.array([a, c]))
    assert e[0] > e[1]


def test_mutual_information_hand_computed():
    same = np.array([[[0.5, 0.5, 0.0]], [[0.5, 0.5, 0.0]]])
    assert mutual_information(same)[0] == pytest.approx(0.0)
    # Two confident members that disagree: MI = H(mean) = log 2 / log 3.
    split = np.array([[[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]]])
    assert mutual_information(split)[0] == pytest.approx(math.log(2) / math.log(3))


def test_ensemble_gate_uses_member_disagreement_not_the_mean():
    s = sample(["Obama", "spoke"])
    members = np.array([[[0.0, 1.0, 0.0], [1.0, 0, 0]], [[1.0, 0.0, 0.0], [1.0, 0, 0]]])
    p = pred(["B-PER", "O"], members.mean(0), extras={"member_marginals": members})
    (d,) = EnsembleMIGate(EnsembleMIGate.Options(threshold=0.5)).decide([s], [p])
    assert [e.text for e in d.delegated] == ["Obama"]
    assert d.delegated[0].uncertainty == pytest.approx(math.log(2) / math.log(3))
    assert d.delegated[0].confidence == pytest.approx(0.5)  # from the members' mean
    # The same mean without disagreement (both members at 0.5/0.5): MI 0, kept.
    calm = np.array([[[0.5, 0.5, 0.0], [1.0, 0, 0]]] * 2)
    (d,) = EnsembleMIGate().decide(
        [s], [pred(["B-PER", "O"], calm.mean(0), extras={"member_marginals": calm})]
    )
    assert d.delegated == () and d.kept[0].uncertainty == pytest.approx(0.0)


def test_mc_dropout_gate_reads_dropout_marginals_and_scores_either_way():
    s = sample(["Obama", "spoke"])
    passes = np.array(
        [
            [[0.0, 1.0, 0.0], [1.0, 0, 0]],
            [[0.2, 0.8, 0.0], [1.0, 0, 0]],
            [[0.0, 1.0, 0.0], [1.0, 0, 0]],
        ]
    )
    p = pred(["B-PER", "O"], [[0.1, 0.9, 0.0], [1.0, 0, 0]], extras={"dropout_marginals": passes})
    mi = MCDropoutGate().score(s, p)[0][0].uncertainty
    pe = MCDropoutGate(MCDropoutGate.Options(score="predictive_entropy")).score(s, p)[0][0]
    assert mi == pytest.approx(mutual_information(passes)[0])
    assert pe.uncertainty > mi > 0
    assert pe.confidence == pytest.approx(passes[:, 0, 1].mean())


@pytest.mark.parametrize(
    ("gate", "hint"), [(MCDropoutGate, "mc_dropout_samples"), (EnsembleMIGate, "ensemble_size")]
)
def test_sampling_gates_fail_loudly_without_their_samples(gate, hint):
    s = sample(["Obama"])
    with pytest.raises(DataError, match=hint):
        gate().decide([s], [pred(["B-PER"], [[0.1, 0.9, 0.0]])])


def test_prediction_rejects_a_misshapen_stack():
    with pytest.raises(DataError, match="member_marginals"):
        pred(["O"], [[1.0, 0, 0]], extras={"member_marginals": np.ones((2, 2, 3))})
    with pytest.raises(DataError, match="dropout_marginals"):
        pred(["O"], [[1.0, 0, 0]], extras={"dropout_marginals": np.ones((1, 3))})


def test_temperature_fit_recovers_a_known_overconfidence():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, size=(6000, 5))
    truth = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    gold = np.array([rng.choice(5, p=row) for row in truth])
    overconfident = scale(truth, 1 / 3)  # logits x 3
    t = fit_temperature(overconfident, gold)
    assert t == pytest.approx(3.0, rel=0.1)
    assert nll(overconfident, gold, t) < nll(overconfident, gold, 1.0)


def test_calibrate_through_the_interface_then_decide():
    # Dev: the tagger says 0.9 "B-PER" everywhere but is right only half the time.
    samples, preds = [], []
    for k in range(40):
        right = k % 2 == 0
        gold = [Entity(0, 1, "PER", "Obama")] if right else []
        samples.append(Sample(f"s{k}", ("Obama",), "Obama", entities=tuple(gold)))
        preds.append(TaggerPrediction(f"s{k}", ("B-PER",), LABELS, np.array([[0.1, 0.9, 0.0]])))
    gate: UncertaintyEstimator = TemperatureEntropyGate()
    with pytest.raises(PluginError, match="not calibrated"):
        gate.decide(samples, preds)
    report = gate.calibrate(samples, preds)
    assert report["fitted"] and report["temperature"] > 1.5
    assert report["nll_after"] < report["nll_before"]
    scaled = gate.decide(samples, preds)[0].entities[0]
    plain = EntropyGate().decide(samples, preds)[0].entities[0]
    # Right half the time: the calibrated confidence moves from 0.9 to near 0.5 (the third
    # label's ~0 mass grows with T too, so the optimum sits a little above 0.5).
    assert 0.5 <= scaled.confidence < 0.65
    assert scaled.uncertainty > plain.uncertainty


def test_fixed_temperature_needs_no_calibration_and_one_is_the_entropy_gate():
    s = sample(["Obama", "spoke"])
    p = pred(["B-PER", "O"], [[0.3, 0.7, 0.0], [0.9, 0.05, 0.05]])
    fixed = TemperatureEntropyGate(TemperatureEntropyGate.Options(temperature=1.0))
    assert fixed.calibrate([s], [p]) == {"temperature": 1.0, "fitted": False}
    a, b = fixed.score(s, p), EntropyGate().score(s, p)
    assert a[0][0].uncertainty == pytest.approx(b[0][0].uncertainty)
    assert a[1] == pytest.approx(b[1])


def test_default_calibrate_is_a_no_op():
    assert EntropyGate().calibrate([], []) == {}
    assert MarginGate().calibrate([], []) == {}


def test_every_estimator_is_registered_and_shares_the_decision_logic():
    names = {ep.name: ep for ep in metadata.entry_points(group="refineg.uncertainty")}
    expected = {
        "entropy": EntropyGate,
        "margin": MarginGate,
        "mc_dropout": MCDropoutGate,
        "ensemble_mi": EnsembleMIGate,
        "temperature_entropy": TemperatureEntropyGate,
        "span": SpanGate,
    }
    for name, cls in expected.items():
        assert names[name].load() is cls
        assert registry.load_class("uncertainty", name) is cls
        assert issubclass(cls, TokenScoreGate)
        assert "decide" not in vars(cls) and "score" not in vars(cls)


@pytest.mark.parametrize("gate_cls", [MarginGate, TemperatureEntropyGate, SpanGate])
def test_budget_mode_applies_to_every_estimator(gate_cls):
    samples, preds = [], []
    for k, p in enumerate([0.99, 0.6, 0.8, 0.55]):
        samples.append(Sample(f"s{k}", ("Obama",), "Obama"))
        preds.append(
            TaggerPrediction(
                f"s{k}",
                ("B-PER",),
                LABELS,
                np.array([[1 - p, p, 0.0]]),
                {"transition_marginals": np.zeros((0, 3, 3))},  # one token: no pairs
            )
        )
    extra = {"temperature": 2.0} if gate_cls is TemperatureEntropyGate else {}
    gate = gate_cls(gate_cls.Options(threshold=0.0, budget=0.5, **extra))
    decisions = gate.decide(samples, preds)
    assert [d.delegate_sample for d in decisions] == [False, True, False, True]
    assert gate.last_stats["capped_by_budget"] == 2


def _bench():
    """benchmarks/bench_tagger_gate.py as a module (benchmarks/ is not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_tagger_gate.py"
    spec = importlib.util.spec_from_file_location("bench_tagger_gate", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_risk_coverage_area_orders_perfect_random_and_reversed_rankings():
    bench = _bench()
    wrong = [False] * 8 + [True] * 2  # error rate 0.2
    perfect = bench.risk_coverage_area(list(range(10)), wrong)
    reverse = bench.risk_coverage_area(list(range(10))[::-1], wrong)
    assert perfect == pytest.approx(np.mean([max(0, k - 8) / k for k in range(1, 11)]))
    assert perfect < 0.2 < reverse
    assert bench.risk_coverage_area([], []) is None


def test_estimator_quality_scores_a_gate_on_gold():
    bench = _bench()
    samples, preds = [], []
    for k, (p, right) in enumerate([(0.99, True), (0.95, True), (0.6, False), (0.55, False)]):
        gold = (Entity(0, 1, "PER", "Obama"),) if right else ()
        samples.append(Sample(f"s{k}", ("Obama",), "Obama", entities=gold))
        preds.append(TaggerPrediction(f"s{k}", ("B-PER",), LABELS, np.array([[1 - p, p, 0.0]])))
    row = bench.estimator_quality(MarginGate, samples, preds, budgets=(0.5,))
    assert row["auroc"] == 1.0 and row["wrong_entities"] == 2
    (budget,) = row["budget_rows"]
    assert budget["samples_delegated"] == 0.5 and budget["kept_precision"] == 1.0
    assert budget["oracle_f1"] == 1.0  # the two wrong samples delegated, returned as gold


def ents(*spans) -> tuple[Entity, ...]:
    return tuple(Entity(*x) for x in spans)


def test_error_audit_sorts_kinds_and_flags_errors_the_training_labels_agree_with():
    bench = _bench()
    train = [
        Sample(f"t{k}", ("Lee", "won"), "Lee won", entities=ents((0, 1, "PER", "Lee")))
        for k in range(3)
    ]
    tokens = ("Lee", "Ann", "met", "Kim")
    samples = [
        # predicted "Lee" PER: gold misses it (spurious), but train labels "Lee" PER 3x
        Sample("a", tokens, " ".join(tokens), entities=ents((3, 4, "PER", "Kim"))),
        # predicted "Lee Ann" PER: gold has "Lee" only (boundary)
        Sample(
            "b", tokens, " ".join(tokens), entities=ents((0, 1, "PER", "Lee"), (3, 4, "PER", "Kim"))
        ),
        # predicted "Kim" PER: gold says LOC (type)
        Sample("c", tokens, " ".join(tokens), entities=ents((3, 4, "LOC", "Kim"))),
    ]
    tags = {
        "a": ("B-PER", "O", "O", "B-PER"),
        "b": ("B-PER", "I-PER", "O", "B-PER"),
        "c": ("O", "O", "O", "B-PER"),
    }
    confident, unsure = [0.02, 0.98, 0.0], [0.4, 0.6, 0.0]
    preds = []
    for s in samples:
        rows = [
            [1.0, 0.0, 0.0]
            if t == "O"
            else (confident if s.id == "a" and i == 0 else unsure)
            if t == "B-PER"
            else [0.3, 0.0, 0.7]
            for i, t in enumerate(tags[s.id])
        ]
        preds.append(TaggerPrediction(s.id, tags[s.id], LABELS, np.array(rows)))
    doc = bench.error_audit(MarginGate(MarginGate.Options(aggregate="max")), samples, preds, train)
    kinds = {(r["sample"], r["text"]): r["kind"] for r in doc["errors"]}
    assert kinds == {("a", "Lee"): "spurious", ("b", "Lee Ann"): "boundary", ("c", "Kim"): "type"}
    first = doc["errors"][0]  # most confident first
    assert (first["sample"], first["text"], first["train_agrees"]) == ("a", "Lee", True)
    assert first["train_labels"] == {"PER": 3}
    assert doc["all_errors"] == {
        "wrong": 3,
        "train_agrees": 1,
        "type": 1,
        "boundary": 1,
        "spurious": 1,
    }
    assert doc["confident_errors"]["wrong"] == 1
    # Dropping the one train-agreeing error (the most confident one) can only raise AUROC here.
    assert doc["auroc_without_train_agreeing_errors"] > doc["auroc"]
