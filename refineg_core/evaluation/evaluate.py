"""Align predictions with gold by sample id and score GMNER, MNER and EEG. Every gold
sample counts, also an empty one (skipping them inflates precision), and one never
predicted counts as all-missed."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs

from refineg_core.errors import DataError, RefinegError
from refineg_core.evaluation.matching import Counts, Item, count_sample, normalize_name
from refineg_core.evaluation.report import EvaluationReport, Score, TypeScore
from refineg_core.formats.ids import SeenIds
from refineg_core.hooks import Hooks, get_hooks
from refineg_core.types import Box, Entity, Sample, SampleResult

Prediction = Sample | SampleResult


def _unique_ids(items: Iterable[Prediction], what: str) -> dict[str, Prediction]:
    by_id: dict[str, Prediction] = {}
    for item in items:
        if item.id in by_id:
            raise DataError(f"sample id {item.id!r} occurs twice in the {what}")
        by_id[item.id] = item
    return by_id


def _check_tokens(gold: Sample, pred: Sample) -> None:
    """Spans only compare when both sides tokenized the text the same way."""
    tokens = pred.tokens
    if tokens and tuple(tokens) != tuple(gold.tokens):
        pairs = zip(tokens, gold.tokens, strict=False)
        at = next(
            (i for i, (a, b) in enumerate(pairs) if a != b), min(len(tokens), len(gold.tokens))
        )
        raise DataError(
            f"predicted tokens differ from the gold tokens at token {at} "
            f"({len(tokens)} vs {len(gold.tokens)} tokens), so token spans cannot be "
            "compared; use the name-based variant (--by-name)",
            where=f"sample {gold.id!r}",
        )


def _numbers(metrics: dict[str, Any]) -> dict[str, Any]:
    """Plugin metrics as JSON-safe values (numpy scalars become floats)."""
    out: dict[str, Any] = {}
    for name, value in metrics.items():
        try:
            out[str(name)] = float(value)
        except (TypeError, ValueError):
            out[str(name)] = str(value)
    return out


def _span_items(entities: Iterable[Entity]) -> list[Item]:
    return [Item(e.span, e.type, e.box_list) for e in entities]


def _gold_unaligned(sample: Sample) -> list[tuple[str, str, tuple[Box, ...]]]:
    """``meta["unaligned"]`` entries ``{"name", "label", "boxes"}`` as (name, type, boxes)."""
    out = []
    for i, entry in enumerate(sample.meta.get("unaligned", ()) or ()):
        try:
            boxes = tuple(Box(*map(float, b)) for b in entry.get("boxes") or ())
            out.append((str(entry["name"]), str(entry["label"]), boxes))
        except (KeyError, TypeError, ValueError, AttributeError, DataError) as exc:
            raise DataError(
                f"bad unaligned gold entry: {exc}", where=f"{sample.id}.meta.unaligned[{i}]"
            ) from None
    return out


def _name_items(
    named: Iterable[tuple[str, str, tuple[Box, ...]]], *, with_type: bool
) -> list[Item]:
    """Mentions sharing a normalised name (and type) as one entity with the union of
    their boxes in order: without spans they cannot be told apart from duplicates."""
    merged: dict[tuple[str, str], list[Box]] = {}
    for name, etype, boxes in named:
        key = (normalize_name(name), etype if with_type else "")
        merged.setdefault(key, []).extend(boxes)
    return [Item(n, t, tuple(dict.fromkeys(b))) for (n, t), b in merged.items()]


def _named(sample: Sample, entities: Iterable[Entity]):
    for e in entities:
        yield (e.text or sample.span_text(e.start, e.end), e.type, e.box_list)


@attrs.define
class _Scoring:
    """Counts accumulated one (gold, prediction) pair at a time."""

    iou_threshold: float
    by_name: bool
    totals: dict[str, Counts] = attrs.field(factory=lambda: {t: Counts() for t in TASKS})
    per_type: dict[str, dict] = attrs.field(factory=lambda: {"gmner": {}, "mner": {}})
    missing: list[str] = attrs.field(factory=list)
    n_gold: int = 0
    gold_entities: int = 0
    multi_box: int = 0
    failed: int = 0
    unaligned: int = 0
    gold_unknown: int = 0
    not_attempted: int = 0

    def add(self, g: Sample, pred: Prediction | None) -> Prediction:
        """Score one gold sample against its prediction (None: not predicted)."""
        self.n_gold += 1
        self.gold_entities += len(g.entities)
        if pred is None:
            self.missing.append(g.id)
            pred = SampleResult(attrs.evolve(g, entities=(), meta={}), ())
        pred_sample = pred.sample if isinstance(pred, SampleResult) else pred
        if not self.by_name:
            _check_tokens(g, pred_sample)
        p_ents = pred.entities  # a result's predictions, not its input sample's
        self.gold_unknown += sum(e.boxes is None for e in g.entities)
        self.not_attempted += sum(e.boxes is None for e in p_ents)
        self.multi_box += sum(len(e.box_list) > 1 for e in p_ents)
        self.failed += bool(isinstance(pred, SampleResult) and pred.failures)
        extra_gold = _gold_unaligned(g)
        self.unaligned += len(extra_gold)
        for task, with_type, with_region in TASK_RULES:
            if self.by_name:
                golds = _name_items([*_named(g, g.entities), *extra_gold], with_type=with_type)
                preds = _name_items(_named(pred_sample, p_ents), with_type=with_type)
            else:
                golds, preds = _span_items(g.entities), _span_items(p_ents)
            count_sample(
                golds,
                preds,
                with_type=with_type,
                with_region=with_region,
                iou_threshold=self.iou_threshold,
                totals=self.totals[task],
                per_type=self.per_type.get(task),
            )
        return pred

    def report(self, n_pred: int, extra: dict[str, Any]) -> EvaluationReport:
        def score(c: Counts, *, region: bool = False) -> Score | None:
            # Unknown gold regions would count as "not groundable": a wrong number, so none.
            return None if region and self.gold_unknown else Score(c.tp, c.fp, c.fn)

        per_type = self.per_type
        types = per_type["gmner"].keys() | per_type["mner"].keys()
        table = {
            t: TypeScore(
                score(per_type["gmner"].get(t, Counts()), region=True),
                Score(**attrs.asdict(per_type["mner"].get(t, Counts()))),
            )
            for t in types
        }
        return EvaluationReport(
            gmner=score(self.totals["gmner"], region=True),
            mner=Score(**attrs.asdict(self.totals["mner"])),
            eeg=score(self.totals["eeg"], region=True),
            per_type=table,
            iou_threshold=self.iou_threshold,
            by_name=self.by_name,
            n_gold_samples=self.n_gold,
            n_pred_samples=n_pred,
            missing_predictions=tuple(self.missing),
            failed_samples=self.failed,
            multi_box_predictions=self.multi_box,
            gold_unaligned=self.unaligned,
            extra=extra,
            gold_regions_unknown=self.gold_unknown,
            pred_grounding_not_attempted=self.not_attempted,
        )


TASKS = ("gmner", "mner", "eeg")
#: (task, entity type counts, region counts)
TASK_RULES = (("gmner", True, True), ("mner", True, False), ("eeg", False, True))


def _check_iou(iou_threshold: float) -> None:
    if not 0.0 <= iou_threshold < 1.0:
        raise RefinegError(
            f"IoU threshold must be in [0, 1), got {iou_threshold}", where="iou_threshold"
        )


def evaluate(
    gold: Sequence[Sample],
    predicted: Sequence[Prediction],
    *,
    iou_threshold: float = 0.5,
    by_name: bool = False,
    hooks: Hooks | None = None,
    extra_metrics: bool = True,
) -> EvaluationReport:
    """Micro P/R/F1 for GMNER, MNER and EEG plus a per-type table. ``by_name``: entities
    by normalised name + type (gold without spans), ``meta["unaligned"]`` included;
    ``refineg_extra_metrics`` hook plugins add numbers under ``extra``."""
    _check_iou(iou_threshold)
    gold_by_id = _unique_ids(gold, "gold data")
    pred_by_id = _unique_ids(predicted, "predictions")
    unknown = [i for i in pred_by_id if i not in gold_by_id]
    if unknown:
        shown = ", ".join(repr(i) for i in unknown[:5])
        more = f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else ""
        raise DataError(
            f"{len(unknown)} predicted sample id(s) are not in the gold data: {shown}{more}"
        )
    scoring = _Scoring(iou_threshold, by_name)
    aligned = [scoring.add(g, pred_by_id.get(sid)) for sid, g in gold_by_id.items()]
    extra: dict[str, Any] = {}
    if extra_metrics:
        extra = _numbers((hooks or get_hooks()).extra_metrics(list(gold_by_id.values()), aligned))
    return scoring.report(len(pred_by_id), extra)


def evaluate_stream(
    gold: Callable[[], Iterable[Sample]],
    predicted: Mapping[str, Callable[[], Iterable[Prediction]]],
    *,
    iou_threshold: float = 0.5,
) -> dict[str, EvaluationReport] | None:
    """``evaluate`` of several prediction streams against one gold stream in one pass
    (None when gold has no entity); streams that do not pair up id by id, or plugin
    metrics (which see the whole set), fall back to loading everything."""
    _check_iou(iou_threshold)
    if get_hooks().has_extra_metrics():
        return _whole(gold, predicted, iou_threshold)
    names = list(predicted)
    scorings = {name: _Scoring(iou_threshold, False) for name in names}
    streams = [iter(predicted[name]()) for name in names]
    seen = SeenIds()
    end = object()
    for n, g in enumerate(gold(), start=1):
        preds = [next(stream, end) for stream in streams]
        if seen.add(g.id, n) is not None or any(p is end or p.id != g.id for p in preds):
            return _whole(gold, predicted, iou_threshold)
        for name, pred in zip(names, preds, strict=True):
            scorings[name].add(g, pred)
    if any(next(stream, end) is not end for stream in streams):
        return _whole(gold, predicted, iou_threshold)
    first = next(iter(scorings.values()))
    if not first.n_gold or not first.gold_entities:
        return None
    return {name: sc.report(sc.n_gold, {}) for name, sc in scorings.items()}


def _whole(gold, predicted, iou_threshold: float) -> dict[str, EvaluationReport] | None:
    gold_samples = list(gold())
    if not any(s.entities for s in gold_samples):
        return None
    return {
        name: evaluate(gold_samples, list(stream()), iou_threshold=iou_threshold)
        for name, stream in predicted.items()
    }
