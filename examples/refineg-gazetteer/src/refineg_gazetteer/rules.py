"""A rule-based uncertainty gate: two readable rules instead of an entropy threshold.

1. An entity is delegated when the tagger was unsure of it: its uncertainty
   (1 - mean probability of its own tags) exceeds ``max_uncertainty``. With
   the gazetteer tagger that is exactly the names seen with several labels.
2. A sample is delegated when a capitalised word was tagged ``O`` (outside a
   sentence start): a name the tagger has never seen is the typical miss of a
   gazetteer, and capitalisation is the cheapest hint that one is there.

It works with any tagger's marginals, not only the gazetteer's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pydantic

from refineg.plugin import (
    SOURCE_TAGGER,
    DataError,
    Entity,
    GateDecision,
    PluginOptions,
    Sample,
    TaggerPrediction,
    UncertaintyEstimator,
    tags_to_spans,
)

SENTENCE_END = {".", "!", "?", ":", ";", "…", '"'}


class RuleOptions(PluginOptions):
    max_uncertainty: float = pydantic.Field(
        0.2, ge=0.0, le=1.0, description="delegate entities whose uncertainty is above this"
    )
    capitalized_o: bool = pydantic.Field(
        True, description="delegate samples with capitalised words tagged O"
    )
    min_capitalized: int = pydantic.Field(
        1, ge=1, description="how many such words make a sample uncertain"
    )
    skip_sentence_start: bool = pydantic.Field(
        True, description="ignore capitals at the start of a sentence"
    )
    ignore_words: tuple[str, ...] = pydantic.Field(
        ("I", "RT"), description="capitalised words that never hint at a name"
    )


class RuleGate(UncertaintyEstimator):
    Options = RuleOptions
    options: RuleOptions

    def decide(
        self, samples: Sequence[Sample], predictions: Sequence[TaggerPrediction]
    ) -> list[GateDecision]:
        by_id = {p.sample_id: p for p in predictions}
        decisions = []
        for sample in samples:
            pred = by_id.get(sample.id)
            if pred is None:
                raise DataError(
                    "the tagger returned no prediction for this sample", where=sample.id
                )
            if len(pred.tags) != len(sample.tokens):
                raise DataError(
                    f"{len(pred.tags)} tags for {len(sample.tokens)} tokens", where=sample.id
                )
            decisions.append(self._decide_one(sample, pred))
        return decisions

    def _decide_one(self, sample: Sample, pred: TaggerPrediction) -> GateDecision:
        index = {t: i for i, t in enumerate(pred.label_names)}
        tag_prob = np.array([pred.marginals[i, index[t]] for i, t in enumerate(pred.tags)])
        kept, delegated = [], []
        for start, end, etype in tags_to_spans(pred.tags).spans:
            confidence = float(tag_prob[start:end].mean())
            entity = Entity(
                start,
                end,
                etype,
                sample.span_text(start, end),
                confidence=confidence,
                uncertainty=1.0 - confidence,
                source=SOURCE_TAGGER,
            )
            (delegated if 1.0 - confidence > self.options.max_uncertainty else kept).append(entity)
        outside = [i for i, t in enumerate(pred.tags) if t == "O"]
        suspicious = [i for i in outside if self._looks_like_name(sample.tokens, i)]
        missed = len(suspicious) / len(outside) if outside else 0.0
        flagged = self.options.capitalized_o and len(suspicious) >= self.options.min_capitalized
        return GateDecision(
            sample_id=sample.id,
            kept=tuple(kept),
            delegated=tuple(delegated),
            missed_uncertainty=missed if self.options.capitalized_o else 0.0,
            delegate_sample=bool(delegated) or flagged,
        )

    def _looks_like_name(self, tokens: Sequence[str], i: int) -> bool:
        token = tokens[i]
        if not token[:1].isupper() or token in self.options.ignore_words:
            return False
        return not (self.options.skip_sentence_start and (i == 0 or tokens[i - 1] in SENTENCE_END))
