"""The scoring every token-score gate shares (the decision is the core's).

A gate plugin supplies one thing: a per-token uncertainty in 0..1
(:meth:`TokenScoreGate.token_uncertainty`), optionally from recalibrated
probabilities (:meth:`TokenScoreGate.probabilities`). This base turns it into
the scores the core's :class:`refineg_core.gating.ScoreGate` decides on:

- entity uncertainty: mean or max of the token scores over its tokens
  (``aggregate``); its confidence is the mean (with ``max``: the minimum)
  probability of the decoded tag over its tokens. A gate that scores whole
  spans overrides :meth:`TokenScoreGate.entity_score` instead (``span``);
- sample "missed entity" uncertainty: the highest token score among tokens
  decoded as ``O`` (0 when there is none).

Threshold mode (the core applies it): an entity is delegated when its uncertainty is > τ, a sample
when it has a delegated entity or its missed-entity score is > τ.

Budget mode (``budget`` = a fraction of samples): the threshold decision is
capped. Delegated samples cost one MLLM call each, so the budget counts
*samples*: every sample that the threshold would delegate is ranked by its
score ``max(missed-entity score, uncertainty of its delegated entities)``,
highest first (ties: input order), and only the first ``floor(budget * N)``
stay delegated; the others keep all their entities. Set ``threshold: 0`` to
delegate exactly the budget's most uncertain samples.

Guarantee mode (``target_precision``, ``risk``): the threshold is not given but
chosen on the calibration split (``data.dev``) by Learn-then-Test
(:mod:`refineg_gates.guarantee`), so that what the gate keeps is right at
least ``target_precision`` of the time with probability ``>= 1 - risk``.
``guarantee = "entity"``: precision of the kept entities (an entity is kept
when its uncertainty is ``<= tau``); the missed-entity rule keeps
``threshold``, since delegating a post for a possible missed entity changes no
kept entity. ``guarantee = "sample"``: the share of kept (not delegated) posts
whose tagger output equals the gold exactly; one ``tau`` then decides posts by
their priority (highest entity or missed-entity uncertainty). A budget would
keep entities the guarantee did not cover, so the two do not combine.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pydantic

from refineg_core.errors import DataError, PluginError
from refineg_core.gating import DecisionOptions, ScoreGate
from refineg_core.labels import tags_to_spans
from refineg_core.types import SOURCE_TAGGER, Entity, Sample, TaggerPrediction


class ThresholdOptions(DecisionOptions):
    """Options of every gate built on :class:`TokenScoreGate` (subclasses add their own):
    the core's ``threshold``, ``budget``, ``missed_entities``, and the guarantee mode."""

    target_precision: pydantic.confloat(gt=0, lt=1) | None = pydantic.Field(
        None,
        description="choose the threshold on data.dev so that the precision of what is kept "
        "is >= this with probability >= 1 - risk (Learn-then-Test)",
    )
    risk: pydantic.confloat(gt=0, lt=1) = pydantic.Field(
        0.1, description="allowed probability that the kept precision misses target_precision"
    )
    guarantee: Literal["entity", "sample"] = pydantic.Field(
        "entity",
        description="entity: precision of kept entities; sample: share of kept posts "
        "whose tagger output equals the gold",
    )

    @pydantic.model_validator(mode="after")
    def _one_mode(self):
        if self.target_precision is not None and self.budget is not None:
            raise ValueError(
                "target_precision and budget do not combine: a budget keeps whole posts "
                "that the precision guarantee would delegate"
            )
        return self


class GateOptions(ThresholdOptions):
    """A gate whose entity score aggregates its token scores."""

    aggregate: Literal["mean", "max"] = "mean"


def normalised_entropy(p: np.ndarray) -> np.ndarray:
    """Entropy over the last axis divided by log(#labels): [..., L] -> [...] in 0..1."""
    p = np.asarray(p, dtype=np.float64)
    n_labels = p.shape[-1]
    if n_labels < 2 or p.size == 0:
        return np.zeros(p.shape[:-1])
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=-1)
    return np.clip(h / math.log(n_labels), 0.0, 1.0)


class TokenScoreGate(ScoreGate):
    """A gate over a per-token uncertainty that subclasses define; the core's
    :class:`~refineg_core.gating.ScoreGate` turns its scores into decisions."""

    Options = GateOptions

    def __init__(self, options=None, labels=None):
        super().__init__(options, labels)
        self.options: GateOptions
        #: The threshold chosen by :meth:`calibrate` in guarantee mode.
        self.chosen_threshold: float | None = None

    @property
    def calibrates(self) -> bool:
        """Only in guarantee mode: a threshold gate must not depend on dev."""
        return self.options.target_precision is not None

    def calibrate(self, samples: Sequence[Sample], predictions: Sequence[TaggerPrediction]) -> dict:
        """Guarantee mode: choose the threshold on gold ``samples`` (see the module doc)."""
        if self.options.target_precision is None:
            return {}
        from refineg_gates.guarantee_gate import choose_threshold

        self.chosen_threshold, report = choose_threshold(self, samples, predictions)
        return {"guarantee": report}

    def thresholds(self) -> tuple[float, float]:
        """(entity threshold, missed-entity threshold) the decisions use."""
        opts = self.options
        if opts.target_precision is None:
            return opts.threshold, opts.threshold
        if self.chosen_threshold is None:
            raise PluginError(
                f"the gate has target_precision = {opts.target_precision} but was not "
                "calibrated: configure data.dev (the calibration split) to choose its threshold",
                where="uncertainty",
            )
        if opts.guarantee == "sample":
            return self.chosen_threshold, self.chosen_threshold
        return self.chosen_threshold, opts.threshold

    # ---------------------------------------------------------------- the plugin's part
    @abc.abstractmethod
    def token_uncertainty(self, pred: TaggerPrediction, probs: np.ndarray) -> np.ndarray:
        """Uncertainty of each token in 0..1, shape [T]; ``probs`` = :meth:`probabilities`."""

    def probabilities(self, pred: TaggerPrediction) -> np.ndarray:
        """The per-token label probabilities the gate trusts (default: the marginals)."""
        return np.asarray(pred.marginals, dtype=np.float64)

    def entity_score(
        self, pred: TaggerPrediction, u: np.ndarray, p_tag: np.ndarray, start: int, end: int
    ) -> tuple[float, float]:
        """(uncertainty, confidence) of the span ``[start, end)``; default: ``aggregate``
        of its token uncertainties ``u`` and decoded-tag probabilities ``p_tag``."""
        if self.options.aggregate == "max":
            return float(u[start:end].max()), float(p_tag[start:end].min())
        return float(u[start:end].mean()), float(p_tag[start:end].mean())

    # ---------------------------------------------------------------- shared logic
    def score(self, sample: Sample, pred: TaggerPrediction) -> tuple[list[Entity], float]:
        """The sample's predicted entities with uncertainty/confidence, and its missed score
        (the one method the core's ``ScoreGate`` asks for)."""
        if pred.sample_id != sample.id:
            raise DataError(
                f"prediction for {pred.sample_id!r} paired with sample {sample.id!r}",
                where="uncertainty",
            )
        if len(pred.tags) != len(sample.tokens):
            raise DataError(
                f"{len(pred.tags)} predicted tags for {len(sample.tokens)} tokens",
                where=f"uncertainty: sample {sample.id}",
            )
        probs = self.probabilities(pred)
        u = np.asarray(self.token_uncertainty(pred, probs), dtype=np.float64)
        if u.shape != (len(pred.tags),) or not np.all(np.isfinite(u)):
            raise DataError(
                f"token uncertainty has shape {u.shape} or non-finite values",
                where=f"uncertainty: sample {sample.id}",
            )
        index = {t: i for i, t in enumerate(pred.label_names)}
        decoded = tags_to_spans(pred.tags)
        self.last_stats["tag_repairs"] = self.last_stats.get("tag_repairs", 0) + decoded.repairs
        p_tag = np.array(
            [probs[i, index[t]] if t in index else 0.0 for i, t in enumerate(pred.tags)]
        )
        entities = []
        for start, end, etype in decoded.spans:
            unc, conf = self.entity_score(pred, u, p_tag, start, end)
            if not (math.isfinite(unc) and math.isfinite(conf)):
                raise DataError(
                    f"entity score of tokens {start}..{end} is not finite ({unc}, {conf})",
                    where=f"uncertainty: sample {sample.id}",
                )
            entities.append(
                Entity(
                    start,
                    end,
                    etype,
                    sample.span_text(start, end),
                    source=SOURCE_TAGGER,
                    uncertainty=unc,
                    confidence=conf,
                )
            )
        outside = [i for i, t in enumerate(pred.tags) if t == "O"]
        missed = float(u[outside].max()) if outside else 0.0
        return entities, missed
