"""A rule-based uncertainty gate: two readable rules instead of an entropy threshold.

1. An entity is delegated when the tagger was unsure of it: its uncertainty
   (1 - mean probability of its own tags) exceeds ``max_uncertainty``. With
   the gazetteer tagger that is exactly the names seen with several labels.
2. A sample is delegated when a capitalised word was tagged ``O`` (outside a
   sentence start): a name the tagger has never seen is the typical miss of a
   gazetteer, and capitalisation is the cheapest hint that one is there.

It works with any tagger's marginals, not only the gazetteer's. Like every
score-only gate it builds on ``ScoreGate`` and writes one method, ``score``:
each entity's uncertainty, and the sample's missed-entity score (the share of
its ``O`` tokens that look like names, once there are ``min_capitalized`` of
them). The core turns those into decisions: an entity above
``max_uncertainty`` is delegated, and a sample with a delegated entity or a
missed score above 0.
"""

from __future__ import annotations

import numpy as np
import pydantic

from refineg.plugin import (
    SOURCE_TAGGER,
    DataError,
    Entity,
    PluginOptions,
    Sample,
    ScoreGate,
    TaggerPrediction,
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

    # What ScoreGate decides with, in this gate's own option names (so they are
    # not options a user could set twice): the missed score counts only with
    # capitalized_o, and the rules have no budget.
    @property
    def missed_entities(self) -> bool:
        return self.capitalized_o

    @property
    def budget(self) -> float | None:
        return None


class RuleGate(ScoreGate):
    Options = RuleOptions
    options: RuleOptions

    def thresholds(self) -> tuple[float, float]:
        """Entities above ``max_uncertainty``; any missed score (it is 0 below
        ``min_capitalized`` suspicious words)."""
        return self.options.max_uncertainty, 0.0

    def score(self, sample: Sample, prediction: TaggerPrediction) -> tuple[list[Entity], float]:
        if len(prediction.tags) != len(sample.tokens):
            raise DataError(
                f"{len(prediction.tags)} tags for {len(sample.tokens)} tokens", where=sample.id
            )
        index = {t: i for i, t in enumerate(prediction.label_names)}
        tag_prob = np.array(
            [prediction.marginals[i, index[t]] for i, t in enumerate(prediction.tags)]
        )
        entities = []
        for start, end, etype in tags_to_spans(prediction.tags).spans:
            confidence = float(tag_prob[start:end].mean())
            entities.append(
                Entity(
                    start,
                    end,
                    etype,
                    sample.span_text(start, end),
                    confidence=confidence,
                    uncertainty=1.0 - confidence,
                    source=SOURCE_TAGGER,
                )
            )
        outside = [i for i, t in enumerate(prediction.tags) if t == "O"]
        suspicious = [i for i in outside if self._looks_like_name(sample.tokens, i)]
        flagged = self.options.capitalized_o and len(suspicious) >= self.options.min_capitalized
        return entities, len(suspicious) / len(outside) if flagged else 0.0

    def _looks_like_name(self, tokens: tuple[str, ...], i: int) -> bool:
        token = tokens[i]
        if not token[:1].isupper() or token in self.options.ignore_words:
            return False
        return not (self.options.skip_sentence_start and (i == 0 or tokens[i - 1] in SENTENCE_END))
