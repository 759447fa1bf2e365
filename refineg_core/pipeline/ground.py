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

import threading
from collections import Counter
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import attrs
import pydantic

from refineg_core.boxcodecs import BoxCodec
from refineg_core.errors import PluginError
from refineg_core.interfaces import ContextSelector, MLLMBackend, PluginOptions
from refineg_core.labels import LabelSet, TypeResolver
from refineg_core.pipeline.answers import ParsedAnswer
from refineg_core.pipeline.prompts import (
    GROUND_QUERY_FIELDS,
    GROUND_SYSTEM_FIELDS,
    PromptWording,
    build_ground_request,
    original_size,
    validate_template,
)
from refineg_core.pipeline.runner import StageSummary, load_done
from refineg_core.pipeline.stagekit import (
    Counters,
    StageHealth,
    ask,
    is_skipped,
    no_usable_item,
    note_answer,
    run_mllm_stage,
)
from refineg_core.registry import backend_frame
from refineg_core.types import (
    SOURCE_MLLM,
    Box,
    Demonstration,
    Entity,
    Failure,
    Sample,
    SampleResult,
)

STAGE = "ground"
NAME_KEYS = ("entity", "name", "text", "mention", "label")
BOX_KEYS = ("boxes", "bbox_2d", "bbox", "box", "bboxes", "region", "regions")
_CORNER_KEYS = (("x1", "y1", "x2", "y2"), ("xmin", "ymin", "xmax", "ymax"))


class GroundSettings(PluginOptions):
    """``[ground]`` in the config."""

    enabled: bool = True
    k: int = pydantic.Field(3, ge=0, le=16)
    max_tokens: int = pydantic.Field(1024, ge=16)
    temperature: float = pydantic.Field(0.1, ge=0.0, le=2.0)
    #: ``string.Template`` overrides (see refineg_core.pipeline.prompts for placeholders).
    system_prompt: str | None = None
    query_prompt: str | None = None
    #: Domain wording; the run fills it from the config's ``[prompts]``.
    wording: PromptWording = pydantic.Field(default_factory=PromptWording)

    @pydantic.field_validator("system_prompt")
    @classmethod
    def _check_system(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return validate_template(value, GROUND_SYSTEM_FIELDS, ())

    @pydantic.field_validator("query_prompt")
    @classmethod
    def _check_query(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return validate_template(value, GROUND_QUERY_FIELDS, ("text", "entities"))


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


def usable_demos(
    demos: Sequence[Demonstration], query_id: str, k: int
) -> tuple[list[Demonstration], int]:
    """Demonstrations that can be shown: not the query itself, image present, size known."""
    out: list[Demonstration] = []
    dropped = 0
    for d in demos:
        if d.sample.id == query_id:
            continue
        if d.sample.image is None or not d.sample.image.available:
            dropped += 1
            continue
        if original_size(d.sample.image) is None:
            dropped += 1
            continue
        out.append(d)
    return out[:k], dropped


def ground_query(item: SampleResult) -> Sample:
    """What the selector sees: the sample with its *predicted* entities, never gold."""
    return attrs.evolve(item.sample, entities=item.entities)


class DemoBook:
    """Demonstrations for the items a stage will call, selected ahead of the calls.

    A background thread asks ``selector.select_many`` for one block of queries
    at a time, in the order the stage submits them, so the selector embeds and
    scores a whole block in one pass while the calls of earlier blocks run; no
    lock is held around any call. A worker's ``get`` waits only for its own
    block. A block the selector fails on is retried query by query, so a bad
    query costs only its own item (``get`` raises its error, which the stage
    records as that item's failure).
    """

    def __init__(
        self,
        items: Sequence[SampleResult],
        selector: ContextSelector,
        k: int,
        *,
        block: int = 32,
        skip: Collection[str] = (),
    ) -> None:
        self.selector = selector
        self.k = k
        wanted = [r for r in items if needs_grounding_call(r) and r.id not in skip]
        self._blocks = [wanted[i : i + block] for i in range(0, len(wanted), max(1, block))]
        self._block_of = {r.id: b for b, chunk in enumerate(self._blocks) for r in chunk}
        self._ready = [threading.Event() for _ in self._blocks]
        self._chosen: dict[str, list[Demonstration] | Exception] = {}
        self._start_lock = threading.Lock()
        self._selector_lock = threading.Lock()  # selectors hold models not thread-safe
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def _run(self) -> None:
        for b, chunk in enumerate(self._blocks):
            try:
                if not self._stop.is_set():
                    self._chosen.update(self._select(chunk))
            finally:
                self._ready[b].set()

    def _select(self, chunk: Sequence[SampleResult]) -> dict[str, list[Demonstration] | Exception]:
        queries = [ground_query(r) for r in chunk]
        with self._selector_lock:
            return self._select_locked(chunk, queries)

    def _select_locked(
        self, chunk: Sequence[SampleResult], queries: list[Sample]
    ) -> dict[str, list[Demonstration] | Exception]:
        try:
            chosen: list = self.selector.select_many(queries, self.k)
            if len(chosen) != len(queries):
                raise PluginError(
                    f"select_many returned {len(chosen)} lists for {len(queries)} queries",
                    where="selector",
                )
        except Exception:  # one bad query must not cost the block: retry one by one
            chosen = []
            for q in queries:
                try:
                    chosen.append(self.selector.select(q, self.k))
                except Exception as exc:
                    chosen.append(exc)
        return {r.id: c for r, c in zip(chunk, chosen, strict=True)}

    def get(self, item: SampleResult) -> list[Demonstration]:
        """The item's demonstrations (selected now, under a lock, if it was not planned)."""
        b = self._block_of.get(item.id)
        if b is None:
            with self._selector_lock:
                return self.selector.select(ground_query(item), self.k)
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="demo-book", daemon=True)
                self._thread.start()
        self._ready[b].wait()
        chosen = self._chosen.get(item.id)
        if chosen is None:
            raise PluginError("demonstration selection was stopped", where="selector")
        if isinstance(chosen, Exception):
            raise chosen
        return chosen

    def close(self) -> None:
        """Stop selecting blocks nobody will ask for (the stage ended early)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def _ground_one(
    item: SampleResult,
    demo_book: DemoBook | None,
    backend: MLLMBackend,
    labels: LabelSet,
    settings: GroundSettings,
    counters: Counters,
    debug: bool,
) -> SampleResult:
    if not item.entities:
        counters.add("skipped_no_entities")
        return item
    image = item.sample.image
    size = original_size(image) if image is not None and image.available else None
    if size is None:
        counters.add("skipped_no_image")
        return item
    query = ground_query(item)
    demos: list[Demonstration] = []
    if demo_book is not None:
        demos, dropped = usable_demos(demo_book.get(item), item.id, settings.k)
        counters.add("demos_without_image", dropped)
    codec = backend_frame(backend)
    request = build_ground_request(
        query,
        item.entities,
        [d.sample for d in demos],
        labels,
        codec,
        system_template=settings.system_prompt,
        query_template=settings.query_prompt,
        max_tokens=settings.max_tokens,
        temperature=settings.temperature,
        wording=settings.wording,
    )
    meta: dict[str, Any] = {
        **item.meta,
        "demos": [{"id": d.sample.id, "score": round(float(d.score), 6)} for d in demos],
    }
    info: dict[str, Any] = {}
    judged: dict[str, Grounding] = {}

    def usable(parsed: ParsedAnswer) -> Failure | None:
        """An answer none of whose items is usable is a failure (the entities stay
        ungrounded, not "not groundable"), and is not cached."""
        grounding = judged["grounding"] = match_answer(
            parsed.items, item.entities, codec, size, TypeResolver(labels)
        )
        if parsed.items and not grounding.usable:
            return no_usable_item(
                STAGE, len(parsed.items), grounding.counts, "the entities were left ungrounded"
            )
        return None

    parsed = ask(backend, request, STAGE, counters, info, debug, usable=usable)
    if isinstance(parsed, Failure):
        if parsed.kind == "no_usable_item":
            counts = Counter(judged["grounding"].counts)
            counters.update(counts)
            counters.add("answers_without_usable_item")
            info.update({k: v for k, v in counts.items() if v})
            info["outcome"] = "no_usable_item"
        return attrs.evolve(item, failures=(*item.failures, parsed), meta={**meta, STAGE: info})
    grounding = judged["grounding"]
    entities = []
    for e in item.entities:
        if e.key in grounding.boxes:
            entities.append(
                attrs.evolve(e, boxes=tuple(grounding.boxes[e.key]), grounded_by=SOURCE_MLLM)
            )
        else:
            entities.append(e)
    answered = sum(1 for e in item.entities if e.key in grounding.boxes)
    counts = Counter(grounding.counts)
    counts["entities_grounded"] = answered
    counts["entities_with_boxes"] = sum(
        1 for e in entities if e.grounded_by == SOURCE_MLLM and e.boxes
    )
    counts["entities_unanswered"] = len(item.entities) - answered
    counters.update(counts)
    info.update({k: v for k, v in counts.items() if v})
    failures = note_answer(
        parsed, STAGE, counters, info, item.failures, "entities it did not reach have no boxes"
    )
    return attrs.evolve(
        item, entities=tuple(entities), failures=failures, meta={**meta, STAGE: info}
    )


def needs_grounding_call(r: SampleResult) -> bool:
    img = r.sample.image
    return bool(r.entities) and img is not None and img.available


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
    required: bool = False,
    health: StageHealth | None = None,
) -> tuple[list[SampleResult], StageSummary]:
    """Ground every result's entities through ``backend``; resumable through ``out_path``.

    ``selector`` must already be indexed on ``pool`` (the labelled samples with
    gold boxes); ``pool`` is only used for the summary. Without a selector (or
    with ``k = 0``) the prompts are zero-shot.
    """
    unusable = None
    if not backend.supports_images:
        unusable = f"{backend.describe()} is text-only; grounding needs a backend that sees images"
    book = None
    if selector is not None and settings.k > 0:
        finished = {r.id for r in load_done(out_path).values() if not is_skipped(r, STAGE)}
        book = DemoBook(
            results,
            selector,
            settings.k + 1,  # one spare: the query itself may come back
            block=max(8, 2 * backend.max_concurrency),
            skip=finished,
        )

    def process(item: SampleResult, counters: Counters) -> SampleResult:
        return _ground_one(item, book, backend, labels, settings, counters, debug)

    try:
        out, summary = run_mllm_stage(
            STAGE,
            results,
            backend,
            out_path,
            enabled=settings.enabled,
            needs_call=needs_grounding_call,
            process=process,
            debug=debug,
            unusable=unusable,
            required=required,
            health=health,
        )
    finally:
        if book is not None:
            book.close()
    summary.counters["samples_without_image"] = sum(
        1 for r in results if r.entities and not (r.sample.image and r.sample.image.available)
    )
    if "passed_through" in summary.counters:  # skipped: no calls were made
        return out, summary
    summary.notes["demo_pool"] = f"{len(pool)} samples"
    if selector is None or settings.k == 0:
        summary.notes["demonstrations"] = "none (zero-shot): no selector or k = 0"
    summary.notes["box_frame"] = backend_frame(backend).describe()
    return out, summary
