"""Counting correct triples in one sample: the scoring rules in one place.

The rules (the H-Index protocol of Twitter-GMNER, made precise where the
reference code was silent):

* An entity is identified by its token span, or in the name-based variant by
  its normalised name (see ``normalize_name``).
* Region: a gold entity's region is the *set* of its boxes (empty = None). A
  predicted entity's region is its **first** box (None when it has none): the
  protocol predicts one region per entity, so extra boxes can neither help
  nor hurt, and a system cannot gain by listing many guesses. A predicted
  region is correct when both regions are None, or when the predicted box has
  IoU strictly greater than the threshold with *any* gold box of the entity.
* Matching is one-to-one: a gold entity is matched by at most one prediction,
  so a duplicated prediction is a false positive, never a second true
  positive. Within a key (same span and type) the largest possible matching
  is taken, so the order of duplicates never changes the counts.
* Name-based variant: without spans, mentions that share a normalised name
  (and type) cannot be told apart, so on both sides they are one entity whose
  boxes are the union of the mentions' boxes, in order.
* Every sample counts, also when its gold or its prediction is empty.
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
    """Name identity for the name-based variant: NFKC, case-folded, no whitespace.

    The same rule that aligns a name to tokens (``labels.find_token_spans``
    ignores case and spaces), so "F-35 A" and "f-35A" are one entity.
    """
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
    """Add one sample's tp/fp/fn to ``totals`` (and per type when the key has a type).

    GMNER: ``with_type`` and ``with_region``; MNER: type only; EEG: region only.
    """

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
