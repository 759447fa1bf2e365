"""A gazetteer tagger: remember the names seen in training, find them again.

It has no weights to train, which makes it a useful baseline and a complete
example of the ``Tagger`` contract: ``fit`` / ``predict`` (tags plus per-token
marginals) / ``save`` / ``load``. The marginals are honest about ambiguity: a
name seen as ``vehicle`` twice and ``weapon`` once gets 2/3 vs 1/3 (and a name
often seen untagged gets mass on ``O``), so an entropy gate sees it as uncertain.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pydantic

from refineg.plugin import (
    Entity,
    LabelSet,
    PluginOptions,
    Sample,
    Tagger,
    TaggerError,
    TaggerPrediction,
    evaluate,
    spans_to_tags,
    tags_to_spans,
)
from refineg_gazetteer.gazetteer import OUTSIDE, Gazetteer

FILE = "gazetteer.json"
FORMAT = "refineg-gazetteer/1"


class GazetteerOptions(PluginOptions):
    case_sensitive: bool = pydantic.Field(
        True, description="match names with their case (False: 'puma' finds 'PUMA')"
    )
    smoothing: float = pydantic.Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="probability mass spread evenly over all labels of every token",
    )
    min_count: int = pydantic.Field(1, ge=1, description="times a name must be seen as entity")
    outside_evidence: bool = pydantic.Field(
        True,
        description="count untagged occurrences of a name as evidence for O",
    )
    scheme: Literal["BIO", "BIOES"] = "BIO"


class GazetteerTagger(Tagger):
    """Longest-match lookup of training names; the most frequent label wins."""

    Options = GazetteerOptions
    options: GazetteerOptions

    def __init__(self, options: GazetteerOptions | None = None, labels: LabelSet | None = None):
        super().__init__(options, labels)
        self.gazetteer: Gazetteer | None = None

    # -- training ---------------------------------------------------------

    def fit(self, train: Sequence[Sample], dev: Sequence[Sample] | None = None) -> dict:
        if self.labels is None:  # no label set given: take the types seen in training
            types = sorted({e.type for s in train for e in s.entities})
            if not types:
                raise TaggerError("no entity in the training data and no label set given")
            self.labels = LabelSet({t: t for t in types})
        self.gazetteer, skipped = Gazetteer.build(
            train,
            case_sensitive=self.options.case_sensitive,
            min_count=self.options.min_count,
            types=self.labels.types,
            outside_evidence=self.options.outside_evidence,
        )
        report: dict = {
            "train_samples": len(train),
            "names": len(self.gazetteer.entries),
            "ambiguous_names": self.gazetteer.ambiguous,
            "skipped_unknown_types": skipped,
        }
        if dev:
            preds = [_as_sample(s, p) for s, p in zip(dev, self.predict(dev), strict=True)]
            scores = evaluate(dev, preds, extra_metrics=False)
            report["dev"] = {
                "mner_f1": round(scores.mner.f1, 2),
                "mner_precision": round(scores.mner.precision, 2),
                "mner_recall": round(scores.mner.recall, 2),
            }
        return report

    # -- prediction -------------------------------------------------------

    @property
    def label_names(self) -> tuple[str, ...]:
        if self.labels is None:
            raise TaggerError("the gazetteer has no label set; call fit() or load() first")
        return self.labels.tags(self.options.scheme)

    def predict(self, samples: Sequence[Sample]) -> list[TaggerPrediction]:
        if self.gazetteer is None:
            raise TaggerError("the gazetteer is empty: call fit() or load() before predict()")
        return [self._predict_one(s) for s in samples]

    def _predict_one(self, sample: Sample) -> TaggerPrediction:
        names = self.label_names
        index = {t: i for i, t in enumerate(names)}
        n, eps = len(sample.tokens), self.options.smoothing
        probs = np.zeros((n, len(names)))
        probs[:, index["O"]] = 1.0
        spans = []
        assert self.gazetteer is not None and self.labels is not None
        for m in self.gazetteer.matches(sample.tokens):
            total = sum(m.counts.values())
            probs[m.start : m.end] = 0.0
            for label, count in m.counts.items():
                # Where this label would put its tags on the span (B-/I- or S-/B-/I-/E-).
                tags = (
                    ["O"] * (m.end - m.start)
                    if label == OUTSIDE
                    else spans_to_tags(
                        m.end - m.start, [(0, m.end - m.start, label)], self.options.scheme
                    )
                )
                for offset, tag in enumerate(tags):
                    probs[m.start + offset, index[tag]] += count / total
            best = m.best(self.labels.types)
            if best != OUTSIDE:
                spans.append((m.start, m.end, best))
        marginals = (1.0 - eps) * probs + eps / len(names)
        tags = spans_to_tags(n, spans, self.options.scheme)
        return TaggerPrediction(sample.id, tuple(tags), names, marginals)

    # -- persistence ------------------------------------------------------

    def save(self, directory: Path) -> None:
        if self.gazetteer is None or self.labels is None:
            raise TaggerError("nothing to save: call fit() first")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        data = {
            "format": FORMAT,
            "options": self.options.model_dump(mode="json"),
            "labels": dict(self.labels.descriptions),
            "entries": self.gazetteer.to_json(),
        }
        path = directory / FILE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
        tmp.replace(path)

    @classmethod
    def load(cls, directory: Path, options=None, labels=None) -> GazetteerTagger:
        path = Path(directory) / FILE
        if not path.is_file():
            raise TaggerError(
                f"no {FILE} here; train with `refineg train` (fit + save) first",
                where=str(directory),
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise TaggerError(
                f"corrupt gazetteer file ({exc}); retrain it", where=str(path)
            ) from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise TaggerError(f"not a {FORMAT} file", where=str(path))
        try:
            options = GazetteerOptions.model_validate(data["options"])
            tagger = cls(options, LabelSet(data["labels"]))
            tagger.gazetteer = Gazetteer.from_json(data["entries"], options.case_sensitive)
        except (
            KeyError,
            TypeError,
            ValueError,
            AttributeError,
            pydantic.ValidationError,
            TaggerError,
        ) as exc:
            raise TaggerError(
                f"corrupt gazetteer file: {exc}; retrain it", where=str(path)
            ) from None
        return tagger


def _as_sample(sample: Sample, pred: TaggerPrediction) -> Sample:
    """A prediction as a Sample with entities, so the core evaluation can score it."""
    entities = tuple(
        Entity(s, e, t, sample.span_text(s, e), source="tagger")
        for s, e, t in tags_to_spans(pred.tags).spans
    )
    return Sample(sample.id, sample.tokens, sample.text, sample.image, entities)
