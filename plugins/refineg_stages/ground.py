"""Grounding stage: boxes for the final entities by multimodal in-context learning.

For each sample with entities and an image: K demonstrations chosen by the
context selector (image, text, entities, gold boxes in the model's frame),
then the query; the MLLM answers ``[{entity, type, boxes}]``. Answer items are
matched to the input entities by name (and type); boxes go back to original
pixels through the backend's codec, and an invalid box is dropped and counted.
Every input entity comes out, with the MLLM's boxes or none; names the MLLM
invents are ignored and counted; a failed call or an unusable answer keeps the
entities as they were and records why. An item whose boxes are all invalid
does not say "not groundable": its entity stays ungrounded (never attempted),
and an answer none of whose items is usable is a recorded failure.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from refineg_core.interfaces import BoxCodec, ContextSelector, MLLMBackend
from refineg_core.labels import LabelSet
from refineg_core.pipeline.call_health import StageHealth
from refineg_core.pipeline.mllm_stage import run_mllm_stage
from refineg_core.pipeline.retry import is_skipped
from refineg_core.pipeline.runner import StageSummary, load_done
from refineg_core.pipeline.stage_contract import (
    Applied,
    Call,
    Judgement,
    MLLMStage,
    Skip,
    StageSetup,
)
from refineg_core.registry import backend_frame
from refineg_core.stage_settings import GroundSettings
from refineg_core.types import SOURCE_MLLM, Box, Demonstration, Entity, Sample, SampleResult
from refineg_stages.answers import parse_answer
from refineg_stages.demos import DemoBook, ground_query, usable_demos
from refineg_stages.prompts import build_ground_request, original_size
from refineg_stages.type_names import TypeResolver

__all__ = ["GroundSettings", "GroundStage", "ground_query", "needs_grounding_call", "run_ground"]

STAGE = "ground"
NAME_KEYS = ("entity", "name", "text", "mention", "label")
BOX_KEYS = ("boxes", "bbox_2d", "bbox", "box", "bboxes", "region", "regions")
_CORNER_KEYS = (("x1", "y1", "x2", "y2"), ("xmin", "ymin", "xmax", "ymax"))


def _norm(name: str) -> str:
    return "".join(name.split()).casefold()


def box_candidates(value: Any) -> list[Any]:
    """Every box-like thing in an answer's ``boxes`` value (still untrusted).

    Accepts ``[x1, y1, x2, y2]``, a list of those, ``{"x1"..}``/``{"xmin"..}``
    dicts and ``{"bbox_2d": [...]}`` wrappers; ``None``/``[]``/"none" mean no box.
    """
    if value is None or isinstance(value, bool):
        return []
    if isinstance(value, str):
        return [] if value.strip().lower() in {"", "none", "null", "[]", "n/a"} else [value]
    if isinstance(value, dict):
        for keys in _CORNER_KEYS:
            if all(k in value for k in keys):
                return [[value[k] for k in keys]]
        for k in BOX_KEYS:
            if k in value:
                return box_candidates(value[k])
        return [value]
    if isinstance(value, (list, tuple)):
        if not value:
            return []
        if not any(isinstance(v, (list, tuple, dict)) for v in value):
            return [list(value)]  # one flat box (the codec rejects a wrong length)
        out: list[Any] = []
        for v in value:
            out.extend(box_candidates(v) if isinstance(v, (list, tuple, dict)) else [v])
        return out
    return [value]


def _item_boxes(item: dict) -> Any:
    for k in BOX_KEYS:
        if k in item:
            return item[k]
    return None


@attrs.frozen
class Grounding:
    """Answer items matched to input entities (by entity key) plus what was refused.

    ``usable`` counts the items that named an input entity and gave valid boxes
    or an explicit "no box".
    """

    boxes: dict[tuple[int, int, str], list[Box]]
    counts: Counter
    usable: int = 0


def match_answer(
    items: Sequence[Any],
    entities: Sequence[Entity],
    codec: BoxCodec,
    size: tuple[int, int],
    types: TypeResolver | None = None,
) -> Grounding:
    """Give each input entity the boxes of the answer items that name it.

    Name match ignores case and spaces; when several input entities share the
    name, the item's type picks among them (a type the answer got wrong still
    matches by name alone, counted). Items naming no input entity are ignored;
    so are items all of whose boxes are invalid (counted), which must not make
    their entity "not groundable".
    """
    counts: Counter = Counter()
    usable = 0
    by_name: dict[str, list[Entity]] = {}
    for e in entities:
        by_name.setdefault(_norm(e.text), []).append(e)
    boxes: dict[tuple[int, int, str], list[Box]] = {}
    for item in items:
        if not isinstance(item, dict):
            counts["invalid_not_an_object"] += 1
            continue
        name = next(
            (item[k] for k in NAME_KEYS if isinstance(item.get(k), str) and item[k].strip()),
            None,
        )
        if name is None:
            counts["invalid_missing_entity"] += 1
            continue
        targets = by_name.get(_norm(name))
        if not targets:
            counts["invented_entities"] += 1
            continue
        etype = item.get("type")
        resolved = _resolve(etype, types)
        typed = [e for e in targets if resolved is not None and e.type == resolved]
        if not typed:
            if etype is not None:
                counts["type_mismatch"] += 1
            typed = targets
        decoded, invalid = codec.decode_all(box_candidates(_item_boxes(item)), size)
        counts["boxes_invalid"] += invalid
        if invalid and not decoded:
            counts["items_only_invalid_boxes"] += 1
            continue
        usable += 1
        for e in typed:
            slot = boxes.setdefault(e.key, [])
            for b in decoded:
                if b not in slot:
                    slot.append(b)
    return Grounding(boxes, counts, usable)


def _resolve(etype: Any, types: TypeResolver | None) -> str | None:
    if not isinstance(etype, str):
        return None
    if types is not None:
        return types.resolve(etype)
    return etype.strip()


def needs_grounding_call(r: SampleResult) -> bool:
    img = r.sample.image
    return bool(r.entities) and img is not None and img.available


class GroundStage(MLLMStage):
    """Grounding as an MLLM stage: each sample with entities and an image is asked
    for boxes, with demonstrations; answer items are matched to its entities."""

    name = STAGE
    kept_on_failure = "the entities were left ungrounded"
    unreached = "entities it did not reach have no boxes"

    def __init__(
        self,
        backend: MLLMBackend,
        labels: LabelSet,
        settings: GroundSettings,
        *,
        selector: ContextSelector | None = None,
        pool_size: int = 0,
        demos: Callable[[SampleResult], Sequence[Demonstration]] | None = None,
    ) -> None:
        """``selector`` must already be indexed on the demonstration pool (of
        ``pool_size`` samples, for the summary); without one (or with ``k = 0``) the
        prompts are zero-shot. ``demos`` replaces the selector's choice (a plan
        that selected every query's demonstrations at once)."""
        super().__init__(backend)
        self.labels = labels
        self.settings = settings
        self.selector = selector
        self.pool_size = pool_size
        self.types = TypeResolver(labels)
        self._demos = demos
        self._book: DemoBook | None = None

    @classmethod
    def build(cls, setup: StageSetup, items: Sequence[SampleResult]) -> GroundStage:
        """The stage for one chunk: the selector is indexed on the pool (embedding it
        is the costly part) only when calls follow; the unindexed one still tells
        the summary how demonstrations are chosen."""
        pool_size = setup.pool_size()
        will_call = setup.enabled and any(map(needs_grounding_call, items)) and setup.reachable()
        selector = setup.indexed_selector() if will_call else setup.selector()
        return cls(
            setup.backend, setup.labels, setup.settings, selector=selector, pool_size=pool_size
        )

    def unusable(self) -> str | None:
        if not self.backend.supports_images:
            return (
                f"{self.backend.describe()} is text-only; grounding needs a backend that "
                "sees images"
            )
        return None

    def start(self, results: Sequence[SampleResult], out_path: Path) -> None:
        if self._demos is None and self.selector is not None and self.settings.k > 0:
            finished = {r.id for r in load_done(out_path).values() if not is_skipped(r, STAGE)}
            self._book = DemoBook(
                results,
                self.selector,
                self.settings.k + 1,  # one spare: the query itself may come back
                block=max(8, 2 * self.backend.max_concurrency),
                skip=finished,
                wanted=needs_grounding_call,
            )

    def stop(self) -> None:
        if self._book is not None:
            self._book.close()
            self._book = None

    def needs_call(self, result: SampleResult) -> bool:
        return needs_grounding_call(result)

    def _candidates(self, result: SampleResult) -> Sequence[Demonstration] | None:
        """The selector's demonstrations for this query (k + 1: the query itself may
        come back): chosen ahead in blocks during a run, one by one in a dry run."""
        if self._demos is not None:
            return self._demos(result)
        if self._book is not None:
            return self._book.get(result)
        if self.selector is not None and self.settings.k > 0:
            return self.selector.select(ground_query(result), self.settings.k + 1)
        return None

    def request(self, result: SampleResult) -> Call | Skip:
        if not result.entities:
            return Skip("skipped_no_entities")
        image = result.sample.image
        size = original_size(image) if image is not None and image.available else None
        if size is None:
            return Skip("skipped_no_image")
        demos: list[Demonstration] = []
        dropped = 0
        candidates = self._candidates(result)
        if candidates is not None:
            demos, dropped = usable_demos(candidates, result.id, self.settings.k)
        settings = self.settings
        request = build_ground_request(
            ground_query(result),
            result.entities,
            [d.sample for d in demos],
            self.labels,
            backend_frame(self.backend),
            system_template=settings.system_prompt,
            query_template=settings.query_prompt,
            max_tokens=settings.max_tokens,
            temperature=settings.temperature,
            wording=settings.wording,
        )
        shown = [{"id": d.sample.id, "score": round(float(d.score), 6)} for d in demos]
        return Call(
            request, meta={"demos": shown}, counts={"demos_without_image": dropped}, context=size
        )

    def judge(self, result: SampleResult, call: Call, text: str) -> Judgement:
        answer = parse_answer(text)
        grounding = match_answer(
            answer.items, result.entities, backend_frame(self.backend), call.context, self.types
        )
        return Judgement(
            grounding,
            grounding.usable,
            items=len(answer.items),
            truncated=answer.truncated,
            repaired=answer.repaired,
            refused=grounding.counts,
            counts=grounding.counts,
            info={k: v for k, v in grounding.counts.items() if v},
        )

    def apply(self, result: SampleResult, call: Call, judgement: Judgement) -> Applied:
        boxes = judgement.value.boxes
        entities = tuple(
            attrs.evolve(e, boxes=tuple(boxes[e.key]), grounded_by=SOURCE_MLLM)
            if e.key in boxes
            else e
            for e in result.entities
        )
        answered = sum(1 for e in result.entities if e.key in boxes)
        counts = {
            "entities_grounded": answered,
            "entities_with_boxes": sum(
                1 for e in entities if e.grounded_by == SOURCE_MLLM and e.boxes
            ),
            "entities_unanswered": len(result.entities) - answered,
        }
        return Applied(entities, counts, {k: v for k, v in counts.items() if v})

    def notes(self, summary: StageSummary, results: Sequence[SampleResult], skipped: bool) -> None:
        summary.counters["samples_without_image"] = sum(
            1 for r in results if r.entities and not (r.sample.image and r.sample.image.available)
        )
        if skipped:  # no calls were made
            return
        summary.notes["demo_pool"] = f"{self.pool_size} samples"
        if self.selector is None or self.settings.k == 0:
            summary.notes["demonstrations"] = "none (zero-shot): no selector or k = 0"
        summary.notes["box_frame"] = backend_frame(self.backend).describe()


def run_ground(
    results: Sequence[SampleResult],
    pool: Sequence[Sample],
    selector: ContextSelector | None,
    backend: MLLMBackend,
    labels: LabelSet,
    settings: GroundSettings,
    out_path: Path,
    *,
    debug: bool = False,
    health: StageHealth | None = None,
) -> tuple[list[SampleResult], StageSummary]:
    """Ground every result's entities through ``backend``; resumable through ``out_path``.

    ``selector`` must already be indexed on ``pool`` (the labelled samples with
    gold boxes); ``pool`` is only used for the summary. Without a selector (or
    with ``k = 0``) the prompts are zero-shot. (One chunk: whether the stage
    failed is the stage driver's verdict.)
    """
    stage = GroundStage(backend, labels, settings, selector=selector, pool_size=len(pool))
    return run_mllm_stage(
        stage, results, out_path, enabled=settings.enabled, debug=debug, health=health
    )
