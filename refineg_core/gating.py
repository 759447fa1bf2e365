"""How a gate's scores become decisions, the same way for every :class:`ScoreGate`
(which writes only ``score``): an entity whose uncertainty is > τ is delegated, a
sample with one (or with a missed-entity score > τ), at the priority of its highest
score; a ``budget`` keeps the highest priorities. A budget ranks the whole input,
so streaming stages decide chunks uncapped and apply ``within_budget`` at the end,
as an in-memory gate does: both paths give the same answer.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Iterable, Sequence

import pydantic

from refineg_core.errors import DataError
from refineg_core.interfaces import PluginOptions, UncertaintyEstimator
from refineg_core.types import Entity, GateDecision, Sample, TaggerPrediction


def within_budget(
    delegated: Iterable[tuple[int, float]], n_samples: int, budget: float
) -> set[int]:
    """Positions of the (position, priority) ``delegated`` samples that stay: the first
    ``floor(budget * n_samples)`` by priority (ties: earlier input first)."""
    cap = math.floor(budget * n_samples)
    ranked = sorted(delegated, key=lambda item: -item[1])  # stable: ties keep input order
    return {position for position, _ in ranked[:cap]}


def apply_budget(decisions: Sequence[GateDecision], budget: float | None) -> list[GateDecision]:
    """``decisions`` of a whole input with the budget applied (unchanged without one)."""
    if budget is None:
        return list(decisions)
    keep = within_budget(
        ((i, d.priority) for i, d in enumerate(decisions) if d.delegate_sample),
        len(decisions),
        budget,
    )
    return [
        d if (i in keep or not d.delegate_sample) else d.capped() for i, d in enumerate(decisions)
    ]


class DecisionOptions(PluginOptions):
    """The options the core decides with; a :class:`ScoreGate`'s ``Options`` extends them."""

    threshold: pydantic.confloat(ge=0, le=1) = 0.4
    budget: pydantic.confloat(ge=0, le=1) | None = pydantic.Field(
        None, description="delegate at most this fraction of samples, most uncertain first"
    )
    missed_entities: bool = pydantic.Field(
        True, description="delegate samples whose O tokens look uncertain"
    )


class ScoreGate(UncertaintyEstimator):
    """A gate that only scores; threshold, priority and budget are the core's (module doc)."""

    Options = DecisionOptions

    def __init__(self, options=None, labels=None):
        super().__init__(options, labels)
        self.options: DecisionOptions
        #: Counts from the last ``decide`` call (``capped_by_budget``; a gate may add its own).
        self.last_stats: dict[str, int] = {}

    @abc.abstractmethod
    def score(self, sample: Sample, prediction: TaggerPrediction) -> tuple[list[Entity], float]:
        """The sample's predicted entities, each with ``uncertainty`` in 0..1 (and a
        ``confidence``), and its missed-entity score in 0..1 (0 when none)."""

    def thresholds(self) -> tuple[float, float]:
        """(entity threshold, missed-entity threshold); a calibrating gate may choose them."""
        return self.options.threshold, self.options.threshold

    @property
    def budget(self) -> float | None:
        return self.options.budget

    def decide(
        self, samples: Sequence[Sample], predictions: Sequence[TaggerPrediction]
    ) -> list[GateDecision]:
        decisions = self.decide_each(samples, predictions)
        capped = apply_budget(decisions, self.options.budget)
        before = sum(d.delegate_sample for d in decisions)
        self.last_stats["capped_by_budget"] = before - sum(d.delegate_sample for d in capped)
        return capped

    def decide_each(
        self, samples: Sequence[Sample], predictions: Sequence[TaggerPrediction]
    ) -> list[GateDecision]:
        if len(samples) != len(predictions):
            raise DataError(
                f"{len(samples)} samples but {len(predictions)} predictions", where="uncertainty"
            )
        tau, tau_missed = self.thresholds()
        self.last_stats = {"capped_by_budget": 0}
        decisions = []
        for sample, pred in zip(samples, predictions, strict=True):
            entities, missed = self.score(sample, pred)
            _check_scores(sample.id, entities, missed)
            unc = [e.uncertainty for e in entities if e.uncertainty > tau]
            missed_hit = self.options.missed_entities and missed > tau_missed
            delegate = bool(unc) or missed_hit
            priority = max([*unc, missed if self.options.missed_entities else 0.0])
            delegated = tuple(e for e in entities if delegate and e.uncertainty > tau)
            kept = tuple(e for e in entities if e not in delegated)
            decisions.append(GateDecision(sample.id, kept, delegated, missed, delegate, priority))
        return decisions


def _check_scores(sample_id: str, entities: Sequence[Entity], missed: float) -> None:
    """A score the threshold cannot compare (None, NaN) would silently keep an entity."""
    bad = [e.span for e in entities if e.uncertainty is None or not math.isfinite(e.uncertainty)]
    if bad or not math.isfinite(missed):
        raise DataError(
            f"the gate scored entities {bad} without a finite uncertainty"
            if bad
            else f"the gate's missed-entity score {missed} is not finite",
            where=f"uncertainty: sample {sample_id}",
        )
