"""A token-score gate's calibration data, and its threshold chosen with a guarantee.

:mod:`refineg_gates.guarantee` holds the statistics on plain arrays; this module
turns gold samples and the tagger's predictions into those arrays, the same way
the gate decides:

* entity items: every predicted entity, scored by its uncertainty, wrong when
  its (span, type) is not a gold entity's (the MNER rule of
  ``refineg_core.evaluation``: a tagger predicts each span once, so the
  one-to-one matching reduces to membership);
* sample items: every post, scored by the uncertainty that would delegate it
  (its highest entity uncertainty, and its missed-entity score when
  ``missed_entities`` is on), wrong when its predicted (span, type) set differs
  from the gold set.

``refineg plan``, the report and ``benchmarks/bench_gate_guarantee.py`` use
the same functions, so every number about a target comes from one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import numpy as np

from refineg_core.errors import DataError
from refineg_core.types import Sample, TaggerPrediction
from refineg_gates.guarantee import Choice, learn_then_test


@attrs.frozen
class ScoredPost:
    """One calibration post as the gate sees it, with its right/wrong marks."""

    sample_id: str
    entity_scores: tuple[float, ...]
    entity_wrong: tuple[bool, ...]
    missed: float
    exact: bool  # the tagger's (span, type) set equals the gold's

    def priority(self, missed_entities: bool) -> float:
        """The score that delegates the whole post (``decide``'s rule)."""
        return max([*self.entity_scores, self.missed if missed_entities else 0.0])


def score_posts(
    gate: Any, samples: Sequence[Sample], predictions: Sequence[TaggerPrediction]
) -> list[ScoredPost]:
    """Each gold sample scored by ``gate`` (a ``TokenScoreGate``) and marked against gold."""
    if len(samples) != len(predictions):
        raise DataError(
            f"{len(samples)} samples but {len(predictions)} predictions",
            where="uncertainty.calibrate",
        )
    posts = []
    for sample, pred in zip(samples, predictions, strict=True):
        entities, missed = gate.score(sample, pred)
        gold = {e.key for e in sample.entities}
        keys = [e.key for e in entities]
        posts.append(
            ScoredPost(
                sample.id,
                tuple(float(e.uncertainty) for e in entities),
                tuple(k not in gold for k in keys),
                float(missed),
                set(keys) == gold,
            )
        )
    return posts


def items(
    posts: Sequence[ScoredPost], unit: str, missed_entities: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, wrong) of the guarantee's items: entities or posts."""
    if unit == "entity":
        scores = [s for p in posts for s in p.entity_scores]
        wrong = [w for p in posts for w in p.entity_wrong]
    else:
        scores = [p.priority(missed_entities) for p in posts]
        wrong = [not p.exact for p in posts]
    return np.asarray(scores, dtype=np.float64), np.asarray(wrong, dtype=bool)


def delegated(
    posts: Sequence[ScoredPost], tau: float, tau_missed: float, missed_entities: bool
) -> int:
    """Posts the gate sends to the MLLM with these thresholds (one request each)."""
    return sum(
        1
        for p in posts
        if any(s > tau for s in p.entity_scores) or (missed_entities and p.missed > tau_missed)
    )


def thresholds_for(choice_tau: float, unit: str, threshold: float) -> tuple[float, float]:
    """(entity, missed-entity) thresholds of a guarantee-mode gate (see ``decision``)."""
    return (choice_tau, choice_tau) if unit == "sample" else (choice_tau, threshold)


def choose(
    posts: Sequence[ScoredPost],
    *,
    target: float,
    risk: float,
    unit: str,
    missed_entities: bool,
) -> Choice:
    scores, wrong = items(posts, unit, missed_entities)
    return learn_then_test(scores, wrong, target, risk)


def describe(
    choice: Choice, posts: Sequence[ScoredPost], unit: str, threshold: float, missed: bool
) -> dict[str, Any]:
    """The summary's record of a guarantee: what was promised, on what, and the result."""
    what = (
        "precision of the entities the gate keeps"
        if unit == "entity"
        else "share of kept (not delegated) posts whose tagger output equals the gold"
    )
    report: dict[str, Any] = {
        "promise": f"{what} >= {choice.target:g} with probability >= {1 - choice.risk:g}",
        "method": "Learn-then-Test: fixed-sequence exact binomial tests over a fixed "
        "threshold grid, most conservative first (refineg_gates.guarantee)",
        "unit": unit,
        "target_precision": choice.target,
        "risk": choice.risk,
        "calibration_samples": len(posts),
        "calibration_entities": sum(len(p.entity_scores) for p in posts),
        "calibration_items": choice.items,
        "min_kept_items": choice.min_kept,
        "threshold": choice.threshold,
    }
    if choice.threshold is not None:
        tau, tau_missed = thresholds_for(choice.threshold, unit, threshold)
        report.update(
            kept_items=choice.kept,
            wrong_kept_items=choice.wrong,
            realized_precision=round(choice.realized_precision, 4),
            p_value=float(f"{choice.p_value:.4g}"),
            missed_entity_threshold=tau_missed if missed else None,
            delegated_samples=delegated(posts, tau, tau_missed, missed),
        )
    report["stopped"] = choice.stop_reason
    return report


def choose_threshold(
    gate: Any, samples: Sequence[Sample], predictions: Sequence[TaggerPrediction]
) -> tuple[float, dict[str, Any]]:
    """The gate's guarantee-mode threshold on gold ``samples``, or a located refusal."""
    opts = gate.options
    posts = score_posts(gate, samples, predictions)
    choice = choose(
        posts,
        target=opts.target_precision,
        risk=opts.risk,
        unit=opts.guarantee,
        missed_entities=opts.missed_entities,
    )
    report = describe(choice, posts, opts.guarantee, opts.threshold, opts.missed_entities)
    if choice.threshold is None:
        raise DataError(
            f"the calibration split ({len(posts)} samples, {choice.items} "
            f"{opts.guarantee} items) cannot support {report['promise']}: "
            f"{choice.stop_reason}. Use more calibration data, a lower target_precision "
            "or a higher risk",
            where="uncertainty.options.target_precision",
        )
    return choice.threshold, report
