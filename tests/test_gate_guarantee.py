"""Learn-then-Test threshold selection on hand-made scores (answers worked out by hand).

The simulation on real predictions and the end-to-end run are in
``tests/test_gate_guarantee_real.py`` (slow: they train a real tagger).
"""

from __future__ import annotations

import math

import numpy as np
import pydantic
import pytest
from refineg_gates.guarantee import (
    binomial_cdf,
    hoeffding_threshold,
    kept_counts,
    learn_then_test,
    min_kept,
    start_count,
)
from refineg_gates.guarantee_gate import ScoredPost, delegated, items
from refineg_gates.span import SpanGate

from refineg_core.errors import PluginError


def test_binomial_cdf_matches_hand_values():
    assert binomial_cdf(1, 3, 0.5) == pytest.approx(0.5)
    assert binomial_cdf(0, 10, 0.1) == pytest.approx(0.9**10)
    assert binomial_cdf(1, 25, 0.1) == pytest.approx(0.9**25 + 25 * 0.1 * 0.9**24)
    assert binomial_cdf(5, 5, 0.3) == 1.0 and binomial_cdf(-1, 5, 0.3) == 0.0
    # large n stays finite and exact enough: P(Bin(2000, 0.1) <= 200) is about one half
    assert 0.5 < binomial_cdf(200, 2000, 0.1) < 0.53


def test_fewest_kept_items_that_can_pass():
    # 0.9^21 = 0.109 > 0.1 >= 0.9^22 = 0.098
    assert min_kept(0.1, 0.1) == 22
    # 0.95^59 = 0.0485 > 0.05 ... 0.95^58 = 0.0510: 59
    assert min_kept(0.05, 0.05) == 59


def line(n: int) -> np.ndarray:
    """Scores 0.01, 0.02, ..., n/100 (item i has score (i+1)/100)."""
    return np.arange(1, n + 1) / 100


def test_ltt_keeps_up_to_the_last_rejection():
    scores = line(30)
    wrong = np.zeros(30, bool)
    wrong[24:] = True  # items with score 0.25 .. 0.30 are wrong
    choice = learn_then_test(scores, wrong, target=0.9, risk=0.1, grid=scores)
    # 0.22 keeps 22 right items: p = 0.9^22 = 0.098 <= 0.1 (the first tested);
    # 0.24 keeps 24: p = 0.080; 0.25 keeps 25 with 1 wrong: p = 0.271 > 0.1: stop.
    assert choice.first_tested == pytest.approx(0.22)
    assert choice.threshold == pytest.approx(0.24)
    assert (choice.kept, choice.wrong) == (24, 0)
    assert choice.p_value == pytest.approx(0.9**24)
    assert choice.realized_precision == 1.0
    assert "0.25" in choice.stop_reason and "1 of 25" in choice.stop_reason


def test_fixed_sequence_stops_at_the_first_non_rejection():
    """A later threshold that would pass on its own is never reached."""
    scores = line(60)
    wrong = np.zeros(60, bool)
    wrong[21] = True  # the 22nd item: the first tested threshold keeps 1 wrong of 22
    assert binomial_cdf(1, 60, 0.1) < 0.1  # 0.60 alone would pass ...
    choice = learn_then_test(scores, wrong, target=0.9, risk=0.1, grid=scores)
    assert choice.threshold is None  # ... but 0.22 does not (p = 0.339), so nothing passes
    assert "1 of 22" in choice.stop_reason


def test_the_sequence_starts_late_enough_for_one_confident_mistake():
    """400 items, only the most confident one wrong. Starting at n_min = 22 the first
    test (1 wrong of 22, p = 0.339) would stop everything; the sequence starts at
    min(50, 400 // 4) = 50 kept items instead: 1 of 50 wrong, p = 0.034, and on."""
    assert start_count(0.1, 0.1, 400) == 50 and start_count(0.1, 0.1, 60) == 22
    scores = np.arange(1, 401) / 1000
    wrong = np.zeros(400, bool)
    wrong[0] = True
    choice = learn_then_test(scores, wrong, 0.9, 0.1, grid=scores)
    assert choice.first_tested == pytest.approx(0.05)
    assert choice.threshold == pytest.approx(0.4) and (choice.kept, choice.wrong) == (400, 1)


def test_too_few_items_is_a_refusal_with_the_reason():
    choice = learn_then_test(line(21), np.zeros(21, bool), 0.9, 0.1)
    assert choice.threshold is None and choice.items == 21
    assert "no threshold keeps 22" in choice.stop_reason


def test_all_right_passes_every_threshold():
    choice = learn_then_test(line(40), np.zeros(40, bool), 0.9, 0.1)
    assert choice.threshold == 1.0 and choice.kept == 40
    assert choice.stop_reason == "every threshold passed"


def test_kept_counts_use_score_at_most_threshold():
    n, k = kept_counts([0.2, 0.1, 0.3], [True, False, True], np.array([0.0, 0.1, 0.2, 0.3]))
    assert n.tolist() == [0, 1, 2, 3] and k.tolist() == [0, 0, 1, 2]
    with pytest.raises(ValueError, match="3 scores but 2"):
        kept_counts([0.1, 0.2, 0.3], [True, False], np.array([0.5]))


def test_hoeffding_rule_needs_a_margin_that_shrinks_with_n():
    # 24 right items: margin sqrt(log 10 / 48) = 0.219, 1.0 < 0.9 + 0.219: nothing passes
    assert hoeffding_threshold(line(24), np.zeros(24, bool), 0.9, 0.1, grid=line(24)) is None
    # 200 items, item 200 wrong: at n = 199 margin 0.076, precision 1 >= 0.976 passes;
    # at n = 200 precision 0.995 >= 0.976 passes too: the largest is chosen
    scores = np.arange(1, 201) / 1000
    wrong = np.zeros(200, bool)
    wrong[-1] = True
    assert hoeffding_threshold(scores, wrong, 0.9, 0.1, grid=scores) == pytest.approx(0.2)
    # 190 right then 10 wrong: at n = 190 margin 0.078 -> 1 >= 0.978 passes, at n = 191
    # precision 190/191 = 0.9948 >= 0.9 + 0.0776 passes ... at n = 200: 0.95 < 0.976
    wrong = np.zeros(200, bool)
    wrong[190:] = True
    tau = hoeffding_threshold(scores, wrong, 0.9, 0.1, grid=scores)
    n = round(tau * 1000)
    assert 1 - (n - 190) / n >= 0.9 + math.sqrt(math.log(10) / (2 * n))
    assert 1 - (n + 1 - 190) / (n + 1) < 0.9 + math.sqrt(math.log(10) / (2 * (n + 1)))


def post(scores, wrong, missed=0.0, exact=None):
    exact = (not any(wrong)) if exact is None else exact
    return ScoredPost("s", tuple(scores), tuple(wrong), missed, exact)


def test_items_and_delegation_follow_the_gate_rules():
    posts = [
        post([0.1, 0.5], [False, True]),
        post([], [], missed=0.7, exact=False),
        post([0.2], [False]),
    ]
    s, w = items(posts, "entity", True)
    assert s.tolist() == [0.1, 0.5, 0.2] and w.tolist() == [False, True, False]
    s, w = items(posts, "sample", True)
    assert s.tolist() == [0.5, 0.7, 0.2] and w.tolist() == [True, True, False]
    s, _ = items(posts, "sample", False)
    assert s.tolist() == [0.5, 0.0, 0.2]
    assert delegated(posts, 0.4, 0.4, True) == 2
    assert delegated(posts, 0.4, 0.8, True) == 1
    assert delegated(posts, 0.05, 0.8, False) == 2


def test_target_and_budget_do_not_combine():
    with pytest.raises(pydantic.ValidationError, match="do not combine"):
        SpanGate.Options(target_precision=0.9, budget=0.3)
    with pytest.raises(pydantic.ValidationError):
        SpanGate.Options(target_precision=1.0)


def test_an_uncalibrated_guarantee_gate_refuses_to_decide():
    gate = SpanGate(SpanGate.Options(target_precision=0.9))
    assert gate.calibrates and not SpanGate(SpanGate.Options()).calibrates
    with pytest.raises(PluginError, match=r"data\.dev"):
        gate.thresholds()
