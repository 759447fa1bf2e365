"""Refinement stage: the MLLM re-decides the entities the uncertainty gate delegated.

Input: one ``SampleResult`` per sample from the prediction stage, entities from
the tagger (with ``uncertainty``) and ``meta["gate"] = {"delegate_sample",
"missed_uncertainty", "delegated": [[start, end, type], ...]}``. Confident
entities are final. For a delegated sample the MLLM sees the image, the text,
the type descriptions and every candidate with its uncertainty, reasons briefly
and answers with a JSON list of ``{name, type}``. Each item is validated (name
on word boundaries in the text, type in the label set, no clash with a
confident entity); the delegated entities are replaced by the validated
decision. Type names go through ``TypeResolver`` ("Person", "organisation",
"place" and the user's ``type_synonyms`` name labels too). Anything invalid is
dropped and counted; an answer that cannot be used at all (no JSON list, or a
non-empty list none of whose items is usable) keeps the tagger's prediction
and records the failure, so no sample and no confident entity is ever lost. An
empty list is an answer: "no entities".
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from refineg_core.errors import ConfigError, DataError
from refineg_core.interfaces import MLLMBackend
from refineg_core.labels import LabelSet, find_token_spans
from refineg_core.pipeline.call_health import StageHealth
from refineg_core.pipeline.mllm_stage import run_mllm_stage
from refineg_core.pipeline.runner import StageSummary
from refineg_core.pipeline.stage_contract import (
    Applied,
    Call,
    Judgement,
    MLLMStage,
    Skip,
)
from refineg_core.stage_settings import RefineSettings
from refineg_core.types import SOURCE_MLLM, Entity, SampleResult
from refineg_stages.answers import parse_answer
from refineg_stages.prompts import build_refine_request
from refineg_stages.type_names import TypeResolver

STAGE = "refine"
NAME_KEYS = ("name", "entity", "text", "mention")
TYPE_KEYS = ("type", "label", "category", "entity_type")


@attrs.frozen
class Delegation:
    """What the MLLM is asked to decide for one sample."""

    send: bool
    delegated: frozenset[tuple[int, int, str]] = frozenset()


def delegation(result: SampleResult, policy: str) -> Delegation:
    """Read the gate's decision (or apply the ``entities``/``all`` policy)."""
    keys = frozenset(e.key for e in result.entities)
    if policy == "all":
        return Delegation(True, keys)
    if policy == "entities":
        return Delegation(bool(keys), keys)
    gate = result.gate
    if gate is None:
        raise DataError(
            f"sample {result.id} has no gate verdict: the predict stage's output is "
            'needed, or set refine.delegate = "entities" / "all"'
        )
    if not gate.delegate_sample:
        return Delegation(False)
    return Delegation(True, frozenset(gate.delegated & keys))


def _first_str(item: dict, keys: Sequence[str]) -> str | None:
    for k in keys:
        v = item.get(k)
        if isinstance(v, str) and v.strip():
            return v.strip()
    return None


@attrs.frozen
class Decision:
    """The validated MLLM spans for one sample and why other items were refused.

    ``usable`` counts the items that were understood (accepted, or repeating a
    confident entity or another item); ``unread`` holds the token spans of
    items whose name is in the text but whose type could not be read, so the
    delegated entities there are kept rather than dropped on a misread.
    """

    spans: tuple[tuple[int, int, str], ...]
    invalid: Counter
    usable: int = 0
    unread: tuple[tuple[int, int], ...] = ()


def validate_items(
    items: Sequence[Any],
    tokens: Sequence[str],
    kept: Sequence[Entity],
    labels: LabelSet | TypeResolver,
) -> Decision:
    """Map answer items to token spans; refuse what cannot be trusted.

    A name must spell whole tokens of the text (every occurrence is tagged, as
    an annotator would); its type must be in the label set; it must not clash
    with a confident entity (repeating one unchanged is fine) or with another
    accepted item. Longer names go first so "New York Times" wins over "New York".
    """
    types = labels if isinstance(labels, TypeResolver) else TypeResolver(labels)
    invalid: Counter = Counter()
    unread: list[tuple[int, int]] = []
    taken: dict[int, tuple[int, int, str]] = {}
    kept_keys = {e.key for e in kept}
    for e in kept:
        for i in range(e.start, e.end):
            taken[i] = e.key
    accepted: list[tuple[int, int, str]] = []
    parsed: list[tuple[str, str]] = []
    for item in items:
        if not isinstance(item, dict):
            invalid["not_an_object"] += 1
            continue
        name, etype = _first_str(item, NAME_KEYS), _first_str(item, TYPE_KEYS)
        norm_type = types.resolve(etype) if etype is not None else None
        if name is None or norm_type is None:
            invalid["missing_field" if name is None or etype is None else "unknown_type"] += 1
            if name is not None:
                unread.extend(find_token_spans(tokens, name))
            continue
        parsed.append((name, norm_type))
    usable = 0
    seen: set[tuple[str, str]] = set()
    for name, etype in sorted(parsed, key=lambda p: -len(p[0])):
        key = ("".join(name.split()).casefold(), etype)
        if key in seen:
            usable += 1
            continue  # the same item twice: harmless
        seen.add(key)
        spans = find_token_spans(tokens, name)
        if not spans:
            invalid["name_not_in_text"] += 1
            continue
        used = 0
        clash = None
        for s, e in spans:
            owners = {taken[i] for i in range(s, e) if i in taken}
            if not owners:
                accepted.append((s, e, etype))
                for i in range(s, e):
                    taken[i] = (s, e, etype)
                used += 1
            elif owners == {(s, e, etype)}:
                used += 1  # repeats a confident entity or an accepted item exactly
            else:
                clash = "contradicts_confident" if owners & kept_keys else "overlaps_other_item"
        if used:
            usable += 1
        elif clash:
            invalid[clash] += 1
    return Decision(tuple(sorted(accepted)), invalid, usable, tuple(sorted(set(unread))))


def _overlaps(a: tuple[int, int, str], b: tuple[int, int, str]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def apply_decision(
    result: SampleResult,
    delegated: frozenset[tuple[int, int, str]],
    decision: Decision,
    *,
    partial: bool = False,
) -> tuple[tuple[Entity, ...], Counter]:
    """Confident entities unchanged; delegated ones replaced by the MLLM's spans.

    With ``partial`` (a truncated answer) a delegated entity the answer never
    reached is kept as the tagger had it instead of being dropped; so is one
    under an item whose type could not be read (``decision.unread``).
    """
    counts: Counter = Counter()
    tokens = result.sample.tokens
    kept = [e for e in result.entities if e.key not in delegated]
    by_key = {e.key: e for e in result.entities if e.key in delegated}
    out = list(kept)
    counts["entities_kept"] += len(kept)
    for span in decision.spans:
        if span in by_key:
            out.append(attrs.evolve(by_key[span], source=SOURCE_MLLM))
            counts["entities_confirmed"] += 1
        else:
            out.append(
                Entity(
                    span[0],
                    span[1],
                    span[2],
                    " ".join(tokens[span[0] : span[1]]),
                    source=SOURCE_MLLM,
                )
            )
            if any(_overlaps(span, d) for d in delegated):
                counts["entities_changed"] += 1
            else:
                counts["entities_added"] += 1
    for key, ent in by_key.items():
        if key in decision.spans or any(_overlaps(key, s) for s in decision.spans):
            continue
        if partial:
            out.append(ent)
            counts["entities_unanswered"] += 1
        elif any(key[0] < e and s < key[1] for s, e in decision.unread):
            out.append(ent)
            counts["entities_kept_unread_type"] += 1
        else:
            counts["entities_dropped"] += 1
    return tuple(sorted(out, key=lambda e: (e.start, e.end))), counts


class RefineStage(MLLMStage):
    """Refinement as an MLLM stage: delegated samples are asked, answers validated,
    delegated entities replaced by the validated decision."""

    name = STAGE
    kept_on_failure = "the tagger's entities were kept"
    unreached = "delegated entities it did not reach were kept as the tagger had them"

    def __init__(self, backend: MLLMBackend, labels: LabelSet, settings: RefineSettings) -> None:
        super().__init__(backend)
        self.labels = labels
        self.settings = settings
        try:
            self.types = TypeResolver(labels, settings.type_synonyms)
        except DataError as exc:
            raise ConfigError(str(exc), where="refine.type_synonyms") from None

    def start(self, results: Sequence[SampleResult], out_path: Path) -> None:
        if self.settings.delegate == "gate":
            ungated = [r.id for r in results if r.gate is None]
            if ungated:
                raise DataError(
                    f"{len(ungated)} samples (first: {ungated[0]}) have no gate verdict; refine "
                    'them after the predict stage, or set refine.delegate = "entities" or "all"'
                )

    def needs_call(self, result: SampleResult) -> bool:
        return delegation(result, self.settings.delegate).send

    def request(self, result: SampleResult) -> Call | Skip:
        plan = delegation(result, self.settings.delegate)
        if not plan.send:
            return Skip("not_delegated")
        settings = self.settings
        request = build_refine_request(
            result.sample,
            result.entities,
            set(plan.delegated),
            self.labels,
            with_image=self.backend.supports_images,
            template=settings.prompt,
            max_tokens=settings.max_tokens,
            temperature=settings.temperature,
            wording=settings.wording,
        )
        return Call(
            request,
            info={"delegated": [list(k) for k in sorted(plan.delegated)]},
            counts={"delegated_samples": 1, "delegated_entities": len(plan.delegated)},
            context=plan,
        )

    def judge(self, result: SampleResult, call: Call, text: str) -> Judgement:
        answer = parse_answer(text)
        kept = [e for e in result.entities if e.key not in call.context.delegated]
        decision = validate_items(answer.items, result.sample.tokens, kept, self.types)
        return Judgement(
            decision,
            decision.usable,
            items=len(answer.items),
            truncated=answer.truncated,
            repaired=answer.repaired,
            refused=decision.invalid,
            counts={f"invalid_{k}": v for k, v in decision.invalid.items()},
            info={"invalid": dict(decision.invalid)},
        )

    def apply(self, result: SampleResult, call: Call, judgement: Judgement) -> Applied:
        entities, counts = apply_decision(
            result, call.context.delegated, judgement.value, partial=judgement.truncated
        )
        return Applied(entities, counts, {k: v for k, v in counts.items() if k != "entities_kept"})


def run_refine(
    results: Sequence[SampleResult],
    backend: MLLMBackend,
    labels: LabelSet,
    settings: RefineSettings,
    out_path: Path,
    *,
    debug: bool = False,
    health: StageHealth | None = None,
) -> tuple[list[SampleResult], StageSummary]:
    """Refine delegated samples through ``backend``; resumable through ``out_path``.
    (One chunk: whether the stage failed is the stage driver's verdict.)"""
    stage = RefineStage(backend, labels, settings)
    return run_mllm_stage(
        stage, results, out_path, enabled=settings.enabled, debug=debug, health=health
    )
