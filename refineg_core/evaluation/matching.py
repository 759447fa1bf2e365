"""The scoring rules in one place (Twitter-GMNER's H-Index protocol, made precise):

* An entity is its token span, or its normalised name in the name-based variant.
* A gold region is the *set* of its boxes; a predicted one is its **first** box
  (listing many guesses cannot help), correct when both are None or its IoU with
  *any* gold box is strictly above the threshold.
* Matching is one-to-one and maximal within a key, so a duplicate is a false
  positive and the order of duplicates never changes the counts.
"""

from __future__ import annotations

import unicodedata
from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence

import attrs

from refineg_core.types import Box


@attrs.frozen
class Item:
    """One entity as the scorer sees it: identity, type and region."""

    ident: Hashable  # (start, end) or a normalised name
    type: str
    boxes: tuple[Box, ...]  # gold: every box; prediction: used through ``region``

    @property
    def region(self) -> Box | None:
        return self.boxes[0] if self.boxes else None


def normalize_name(text: str) -> str:
    """NFKC, case-folded, no whitespace: like ``labels.find_token_spans``, "F-35 A" and
    "f-35A" are one entity."""
    return "".join(unicodedata.normalize("NFKC", text).casefold().split())


def region_correct(pred: Item, gold: Item, iou_threshold: float) -> bool:
    box = pred.region
    if box is None:
        return not gold.boxes
    return any(box.iou(g) > iou_threshold for g in gold.boxes)


def _max_matching(
    preds: Sequence[Item], golds: Sequence[Item], ok: Callable[[Item, Item], bool]
) -> int:
    """Size of a maximum one-to-one matching (Kuhn's algorithm; groups are tiny)."""
    edges = [[g for g, gold in enumerate(golds) if ok(pred, gold)] for pred in preds]
    owner: dict[int, int] = {}

    def augment(p: int, seen: set[int]) -> bool:
        for g in edges[p]:
            if g in seen:
                continue
            seen.add(g)
            if g not in owner or augment(owner[g], seen):
                owner[g] = p
                return True
        return False

    return sum(augment(p, set()) for p in range(len(preds)))


@attrs.define
class Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def add(self, tp: int, fp: int, fn: int) -> None:
        self.tp += tp
        self.fp += fp
        self.fn += fn


def count_sample(
    golds: Sequence[Item],
    preds: Sequence[Item],
    *,
    with_type: bool,
    with_region: bool,
    iou_threshold: float,
    totals: Counts,
    per_type: dict[str, Counts] | None = None,
) -> None:
    """Add one sample's tp/fp/fn to ``totals`` (and per type when keys have one)."""

    def key(item: Item) -> Hashable:
        return (item.ident, item.type) if with_type else item.ident

    def ok(pred: Item, gold: Item) -> bool:
        return not with_region or region_correct(pred, gold, iou_threshold)

    gold_groups: dict[Hashable, list[Item]] = defaultdict(list)
    pred_groups: dict[Hashable, list[Item]] = defaultdict(list)
    for g in golds:
        gold_groups[key(g)].append(g)
    for p in preds:
        pred_groups[key(p)].append(p)
    for k in gold_groups.keys() | pred_groups.keys():
        gs, ps = gold_groups.get(k, []), pred_groups.get(k, [])
        tp = _max_matching(ps, gs, ok) if gs and ps else 0
        totals.add(tp, len(ps) - tp, len(gs) - tp)
        if per_type is not None and with_type:
            etype = (gs or ps)[0].type
            per_type.setdefault(etype, Counts()).add(tp, len(ps) - tp, len(gs) - tp)
