"""The evaluation result and its two renderings: a terminal table and a JSON dict."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

TASKS = ("gmner", "mner", "eeg")


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _ratio(num: int, den: int) -> float:
    return 100.0 * num / den if den else 0.0


@attrs.frozen
class Score:
    """Micro counts of one task; P/R/F1 in percent, 0 when undefined (the counts tell
    an empty evaluation from a bad one)."""

    tp: int
    fp: int
    fn: int

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float:
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def support(self) -> int:
        """Number of gold items."""
        return self.tp + self.fn

    def to_dict(self) -> dict[str, float | int]:
        return {
            "precision": round(self.precision, 4),
            "recall": round(self.recall, 4),
            "f1": round(self.f1, 4),
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
        }


@attrs.frozen
class TypeScore:
    """GMNER and MNER for one entity type (EEG ignores types, so it has no row)."""

    gmner: Score | None  # None: gold regions unknown
    mner: Score

    def to_dict(self) -> dict[str, Any]:
        return {"gmner": _score_dict(self.gmner), "mner": self.mner.to_dict()}


def _score_dict(score: Score | None) -> dict[str, Any] | None:
    return None if score is None else score.to_dict()


@attrs.frozen
class EvaluationReport:
    """Scores of one evaluation; ``gmner``/``eeg`` are None when gold regions are unknown."""

    gmner: Score | None
    mner: Score
    eeg: Score | None
    per_type: Mapping[str, TypeScore]
    iou_threshold: float
    by_name: bool
    n_gold_samples: int
    n_pred_samples: int
    #: gold ids with no prediction: every gold entity of them counted as missed
    missing_predictions: tuple[str, ...] = ()
    #: predicted samples that carry recorded failures (their entities still count)
    failed_samples: int = 0
    #: predicted entities with more than one box (only the first box is scored)
    multi_box_predictions: int = 0
    #: gold names that match no token span: scored by name only, not in span mode
    gold_unaligned: int = 0
    extra: Mapping[str, float] = attrs.field(factory=dict)
    #: gold entities whose region is unknown (boxes None): GMNER and EEG are not scored
    gold_regions_unknown: int = 0
    #: predicted entities never grounded (boxes None), scored as region None
    pred_grounding_not_attempted: int = 0

    def task(self, name: str) -> Score | None:
        return getattr(self, name)

    def headline(self) -> dict[str, float]:
        """Each task's F1 rounded once, as ``format_table`` prints it (not the JSON's
        four decimals rounded again: 50.49 where ``refineg eval`` prints 50.50)."""
        return {t: round(s.f1, 2) for t in TASKS if (s := self.task(t)) is not None}

    def to_dict(self) -> dict[str, Any]:
        return {
            "protocol": {
                "identity": "name" if self.by_name else "span",
                "iou_threshold": self.iou_threshold,
                "region": "first predicted box vs any gold box (IoU > threshold); None == None",
                "matching": "one-to-one: a duplicated prediction is a false positive"
                + (
                    "; mentions sharing a normalised name (and type) are one entity"
                    if self.by_name
                    else ""
                ),
            },
            **{t: _score_dict(self.task(t)) for t in TASKS},
            "per_type": {k: v.to_dict() for k, v in sorted(self.per_type.items())},
            "samples": {
                "gold": self.n_gold_samples,
                "predicted": self.n_pred_samples,
                "missing_predictions": list(self.missing_predictions),
                "failed": self.failed_samples,
            },
            "regions": {
                "gold_unknown": self.gold_regions_unknown,
                "pred_grounding_not_attempted": self.pred_grounding_not_attempted,
            },
            "multi_box_predictions": self.multi_box_predictions,
            "gold_unaligned": self.gold_unaligned,
            "extra": dict(self.extra),
        }

    def format_table(self) -> str:
        """A fixed-width table for the terminal (percentages with two decimals)."""
        identity = "name + type" if self.by_name else "span + type"
        lines = [
            f"entities identified by {identity}; region correct when IoU > "
            f"{self.iou_threshold:g} (first predicted box vs any gold box) or both None",
            f"{self.n_gold_samples} gold samples, {self.n_pred_samples} predicted, "
            f"{len(self.missing_predictions)} without prediction (counted as missed)",
            "",
            f"{'task':<8}{'P':>8}{'R':>8}{'F1':>8}{'TP':>8}{'FP':>8}{'FN':>8}",
        ]
        for t in TASKS:
            s = self.task(t)
            if s is None:
                lines.append(f"{t.upper():<8}{'n/a (gold regions unknown)':>32}")
                continue
            lines.append(
                f"{t.upper():<8}{s.precision:>8.2f}{s.recall:>8.2f}{s.f1:>8.2f}"
                f"{s.tp:>8}{s.fp:>8}{s.fn:>8}"
            )
        if self.per_type:
            width = max(8, *(len(k) + 2 for k in self.per_type))
            lines += [
                "",
                f"{'type':<{width}}{'gold':>6}{'GMNER-P':>9}{'GMNER-R':>9}{'GMNER-F1':>10}"
                f"{'MNER-P':>9}{'MNER-R':>9}{'MNER-F1':>9}",
            ]
            for name, row in sorted(self.per_type.items()):
                g, m = row.gmner, row.mner
                gmner = (
                    f"{g.precision:>9.2f}{g.recall:>9.2f}{g.f1:>10.2f}"
                    if g is not None
                    else f"{'n/a':>9}{'n/a':>9}{'n/a':>10}"
                )
                lines.append(
                    f"{name:<{width}}{m.support:>6}{gmner}"
                    f"{m.precision:>9.2f}{m.recall:>9.2f}{m.f1:>9.2f}"
                )
        notes = []
        if self.missing_predictions:
            shown = ", ".join(self.missing_predictions[:5])
            more = len(self.missing_predictions) - 5
            notes.append(f"no prediction for: {shown}" + (f" (+{more} more)" if more > 0 else ""))
        if self.gold_regions_unknown:
            notes.append(
                f"{self.gold_regions_unknown} gold entities have no box annotation (region "
                "unknown), so GMNER and EEG are not scored; give the boxes (the gold "
                "format's option, e.g. options = {xml_dir = ...} / --gold-option xml_dir=DIR) "
                "or say the data has none (boxes = false / --no-boxes)"
            )
        if self.pred_grounding_not_attempted:
            notes.append(
                f"{self.pred_grounding_not_attempted} predicted entities were never grounded "
                "(boxes null) and were scored as region None"
            )
        if self.failed_samples:
            notes.append(f"{self.failed_samples} predicted samples recorded failures")
        if self.multi_box_predictions:
            notes.append(
                f"{self.multi_box_predictions} predicted entities had several boxes; "
                "only the first was scored"
            )
        if self.gold_unaligned and not self.by_name:
            notes.append(
                f"{self.gold_unaligned} gold names match no token span and are not scored; "
                "use the name-based variant (--by-name) to count them"
            )
        if self.extra:
            lines += ["", "extra metrics:"]
            lines += [f"  {k}: {_fmt(v)}" for k, v in sorted(self.extra.items())]
        if notes:
            lines += ["", *(f"note: {n}" for n in notes)]
        return "\n".join(lines)
