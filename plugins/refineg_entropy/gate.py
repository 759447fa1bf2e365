"""The ``entropy`` uncertainty gate: keep confident entities, delegate the rest.

Scores (all in 0..1):

- token uncertainty ``u_t = H(p_t) / log L``, the entropy of the token's CRF
  marginal normalised by the log of the number of labels;
- entity uncertainty: mean or max of ``u_t`` over its tokens (``aggregate``);
  its confidence is the mean (or, with ``max``, the minimum) marginal
  probability of the decoded tag over its tokens;
- sample "missed entity" uncertainty: the highest ``u_t`` among tokens
  decoded as ``O`` (0 when there is none).

Threshold mode: an entity is delegated when its uncertainty is > τ, a sample
when it has a delegated entity or its missed-entity score is > τ.

Budget mode (``budget`` = a fraction of samples): the threshold decision is
capped. Delegated samples cost one MLLM call each, so the budget counts
*samples*: every sample that the threshold would delegate is ranked by its
score ``max(missed-entity score, uncertainty of its delegated entities)``,
highest first (ties: input order), and only the first ``floor(budget * N)``
stay delegated; the others keep all their entities. Set ``threshold: 0`` to
delegate exactly the budget's most uncertain samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pydantic

from refineg_core.errors import DataError
from refineg_core.interfaces import PluginOptions, UncertaintyEstimator
from refineg_core.labels import tags_to_spans
from refineg_core.types import SOURCE_TAGGER, Entity, GateDecision, Sample, TaggerPrediction


def token_entropy(marginals: np.ndarray) -> np.ndarray:
    """Normalised entropy of each row of ``marginals`` [T, L] -> [T] in 0..1."""
    p = np.asarray(marginals, dtype=np.float64)
    if p.shape[0] == 0:
        return np.zeros(0)
    n_labels = p.shape[1]
    if n_labels < 2:
        return np.zeros(p.shape[0])
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
    return np.clip(h / math.log(n_labels), 0.0, 1.0)


class EntropyGate(UncertaintyEstimator):
    """Normalised-entropy gate with threshold and budget modes."""

    class Options(PluginOptions):
        threshold: pydantic.confloat(ge=0, le=1) = 0.4
        aggregate: Literal["mean", "max"] = "mean"
        budget: pydantic.confloat(ge=0, le=1) | None = pydantic.Field(
            None, description="delegate at most this fraction of samples, most uncertain first")
        missed_entities: bool = pydantic.Field(
            True, description="delegate samples whose O tokens look uncertain")

    def __init__(self, options=None, labels=None):
        super().__init__(options, labels)
        self.options: EntropyGate.Options
        #: Counts from the last ``decide`` call (repaired tags, capped samples).
        self.last_stats: dict[str, int] = {}

    def score(self, sample: Sample, pred: TaggerPrediction) -> tuple[list[Entity], float]:
        """The sample's predicted entities with uncertainty/confidence, and its missed score."""
        if pred.sample_id != sample.id:
            raise DataError(f"prediction for {pred.sample_id!r} paired with sample {sample.id!r}",
                            where="uncertainty")
        if len(pred.tags) != len(sample.tokens):
            raise DataError(f"{len(pred.tags)} predicted tags for {len(sample.tokens)} tokens",
                            where=f"uncertainty: sample {sample.id}")
        u = token_entropy(pred.marginals)
        index = {t: i for i, t in enumerate(pred.label_names)}
        decoded = tags_to_spans(pred.tags)
        self.last_stats["tag_repairs"] = self.last_stats.get("tag_repairs", 0) + decoded.repairs
        p_tag = np.array([pred.marginals[i, index[t]] if t in index else 0.0
                          for i, t in enumerate(pred.tags)])
        entities = []
        for start, end, etype in decoded.spans:
            if self.options.aggregate == "max":
                unc, conf = float(u[start:end].max()), float(p_tag[start:end].min())
            else:
                unc, conf = float(u[start:end].mean()), float(p_tag[start:end].mean())
            entities.append(Entity(start, end, etype, sample.span_text(start, end),
                                   source=SOURCE_TAGGER, uncertainty=unc, confidence=conf))
        outside = [i for i, t in enumerate(pred.tags) if t == "O"]
        missed = float(u[outside].max()) if outside else 0.0
        return entities, missed

    def decide(
        self, samples: Sequence[Sample], predictions: Sequence[TaggerPrediction]
    ) -> list[GateDecision]:
        if len(samples) != len(predictions):
            raise DataError(f"{len(samples)} samples but {len(predictions)} predictions",
                            where="uncertainty")
        tau = self.options.threshold
        self.last_stats = {"tag_repairs": 0, "capped_by_budget": 0}
        scored = [self.score(s, p) for s, p in zip(samples, predictions, strict=True)]
        wants: list[bool] = []
        ranks: list[float] = []
        for entities, missed in scored:
            unc = [e.uncertainty for e in entities if e.uncertainty > tau]
            missed_hit = self.options.missed_entities and missed > tau
            wants.append(bool(unc) or missed_hit)
            ranks.append(max([*unc, missed if self.options.missed_entities else 0.0]))
        if self.options.budget is not None:
            cap = math.floor(self.options.budget * len(samples))
            order = sorted((i for i, w in enumerate(wants) if w), key=lambda i: -ranks[i])
            for i in order[cap:]:
                wants[i] = False
            self.last_stats["capped_by_budget"] = max(0, len(order) - cap)
        decisions = []
        for sample, (entities, missed), delegate in zip(samples, scored, wants, strict=True):
            delegated = tuple(e for e in entities if delegate and e.uncertainty > tau)
            kept = tuple(e for e in entities if e not in delegated)
            decisions.append(GateDecision(sample.id, kept, delegated, missed, delegate))
        return decisions
