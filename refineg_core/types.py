"""Value objects shared by every stage and plugin, frozen so a plugin cannot edit
its input ("changing" one means ``attrs.evolve``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from refineg_core.errors import DataError
from refineg_core.extras import EXTRAS, check_extras

# Who decided an entity's span and type (``Entity.source``).
SOURCE_GOLD = "gold"
SOURCE_TAGGER = "tagger"
SOURCE_MLLM = "mllm"
SOURCE_RULE = "rule"


@attrs.frozen
class Box:
    """An axis-aligned box in pixels of the *original* image (floats, however made:
    a box reads and writes the same whether it came from an answer or a file)."""

    x1: float = attrs.field(converter=float)
    y1: float = attrs.field(converter=float)
    x2: float = attrs.field(converter=float)
    y2: float = attrs.field(converter=float)

    def __attrs_post_init__(self) -> None:
        values = (self.x1, self.y1, self.x2, self.y2)
        if not all(np.isfinite(v) for v in values):
            raise DataError(f"box has a non-finite coordinate: {values}")
        if not (self.x1 < self.x2 and self.y1 < self.y2):
            raise DataError(f"box needs x1<x2 and y1<y2, got {values}")

    @property
    def area(self) -> float:
        return (self.x2 - self.x1) * (self.y2 - self.y1)

    def iou(self, other: Box) -> float:
        ix = max(0.0, min(self.x2, other.x2) - max(self.x1, other.x1))
        iy = max(0.0, min(self.y2, other.y2) - max(self.y1, other.y1))
        inter = ix * iy
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0

    def as_list(self) -> list[float]:
        return [self.x1, self.y1, self.x2, self.y2]

    @classmethod
    def clipped(
        cls, x1: float, y1: float, x2: float, y2: float, size: tuple[int, int] | None
    ) -> Box | None:
        """Clipped to the image, or None when nothing valid is left (an untrusted answer
        becomes "no box", never an exception in the middle of a long run)."""
        try:
            x1, y1, x2, y2 = (float(v) for v in (x1, y1, x2, y2))
        except (TypeError, ValueError, OverflowError):  # OverflowError: a 400-digit int
            return None
        if size is not None:
            w, h = size
            x1, x2 = min(max(x1, 0.0), w), min(max(x2, 0.0), w)
            y1, y2 = min(max(y1, 0.0), h), min(max(y2, 0.0), h)
        try:
            return cls(x1, y1, x2, y2)
        except DataError:
            return None


@attrs.frozen
class ImageRef:
    """Where a sample's image is, and its size when known (even without the pixels)."""

    image_id: str
    path: Path | None = None
    width: int | None = None
    height: int | None = None

    @property
    def size(self) -> tuple[int, int] | None:
        if self.width is None or self.height is None:
            return None
        return (self.width, self.height)

    @property
    def available(self) -> bool:
        return self.path is not None and self.path.is_file()


@attrs.frozen
class Entity:
    """A typed token span (end exclusive) with its boxes. ``boxes is None``: grounding
    never attempted (so an outage never passes for an answer); ``()``: judged "not
    groundable". ``source``/``grounded_by``: the stage that decided span/boxes."""

    start: int
    end: int
    type: str
    text: str
    boxes: tuple[Box, ...] | None = None
    confidence: float | None = None
    uncertainty: float | None = None
    #: None when nobody stamped it (read from a file): it never claims to be gold.
    source: str | None = None
    grounded_by: str | None = None
    #: Offsets into the Python API caller's text; not part of equality.
    char_start: int | None = attrs.field(default=None, eq=False)
    char_end: int | None = attrs.field(default=None, eq=False)

    def __attrs_post_init__(self) -> None:
        if not (0 <= self.start < self.end):
            raise DataError(f"entity span [{self.start}, {self.end}) is empty or negative")

    @property
    def span(self) -> tuple[int, int]:
        return (self.start, self.end)

    @property
    def key(self) -> tuple[int, int, str]:
        return (self.start, self.end, self.type)

    @property
    def grounding_attempted(self) -> bool:
        return self.boxes is not None

    @property
    def box_list(self) -> tuple[Box, ...]:
        """The boxes, with "not attempted" read as none (for drawing and scoring)."""
        return self.boxes or ()


@attrs.frozen
class Sample:
    """One post: tokens, raw text, optional image and (gold or predicted) entities."""

    id: str
    tokens: tuple[str, ...]
    text: str
    image: ImageRef | None = None
    entities: tuple[Entity, ...] = ()
    meta: Mapping[str, Any] = attrs.field(factory=dict, eq=False, hash=False)

    def span_text(self, start: int, end: int) -> str:
        return " ".join(self.tokens[start:end])


@attrs.frozen
class Failure:
    """Something that went wrong for one sample; recorded, never fatal to a run."""

    stage: str
    kind: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"stage": self.stage, "kind": self.kind, "message": self.message}


@attrs.frozen
class GateVerdict:
    """The gate's decision as it travels between stages: ``delegated`` holds the keys
    of the entities sent to the MLLM (possibly none: a possibly missed entity)."""

    delegate_sample: bool
    missed_uncertainty: float
    delegated: frozenset[tuple[int, int, str]] = frozenset()
    #: How urgently a delegated sample wants the MLLM (a budget keeps the highest).
    priority: float = attrs.field(default=0.0, eq=False)

    def as_dict(self) -> dict[str, Any]:
        d = {
            "delegate_sample": self.delegate_sample,
            "missed_uncertainty": round(float(self.missed_uncertainty), 6),
            "delegated": [list(k) for k in sorted(self.delegated)],
        }
        if self.delegate_sample:
            d["priority"] = round(float(self.priority), 6)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GateVerdict:
        """Strict: a malformed gate record is a DataError, never a silent "keep"."""
        try:
            delegated = frozenset((int(s), int(e), str(t)) for s, e, t in d.get("delegated") or ())
            return cls(
                bool(d["delegate_sample"]),
                float(d["missed_uncertainty"]),
                delegated,
                float(d.get("priority") or 0.0),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"malformed gate record {dict(d)!r}: {exc}") from None

    def capped(self) -> GateVerdict:
        """The verdict of a sample the budget keeps whole (see ``GateDecision.capped``)."""
        return GateVerdict(False, self.missed_uncertainty, frozenset())

    @classmethod
    def of(cls, decision: GateDecision) -> GateVerdict:
        return cls(
            decision.delegate_sample,
            float(decision.missed_uncertainty),
            frozenset(e.key for e in decision.delegated),
            float(decision.priority),
        )


@attrs.frozen
class SampleResult:
    """A sample with its predicted entities, what failed on the way, and the gate's
    verdict (None before or without a gate), carried unchanged by later stages."""

    sample: Sample
    entities: tuple[Entity, ...]
    failures: tuple[Failure, ...] = ()
    meta: Mapping[str, Any] = attrs.field(factory=dict, eq=False, hash=False)
    gate: GateVerdict | None = None

    @property
    def id(self) -> str:
        return self.sample.id

    @property
    def text(self) -> str:
        return self.sample.text

    @property
    def tokens(self) -> tuple[str, ...]:
        return self.sample.tokens

    def as_sample(self) -> Sample:
        """The sample carrying the predicted entities (what writers and evaluators read)."""
        return attrs.evolve(self.sample, entities=self.entities)

    def with_failure(self, failure: Failure) -> SampleResult:
        return attrs.evolve(self, failures=(*self.failures, failure))


def _extras_dict(extras: Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """A private copy, so the caller's dict cannot change a frozen prediction."""
    return dict(extras or {})


@attrs.frozen(eq=False)
class TaggerPrediction:
    """Decoded tags plus per-token label marginals (``marginals[i, j]`` = P(token i
    has ``label_names[j]``), which the gate needs), and extras named in
    ``extras.EXTRAS``: a wrong name or shape fails here, where the tagger builds it."""

    sample_id: str
    tags: tuple[str, ...]
    label_names: tuple[str, ...]
    marginals: np.ndarray
    extras: Mapping[str, np.ndarray] = attrs.field(factory=dict, converter=_extras_dict)

    def __attrs_post_init__(self) -> None:
        n, n_labels = len(self.tags), len(self.label_names)
        if self.marginals.shape != (n, n_labels):
            raise DataError(
                f"{self.sample_id}: marginals shape {self.marginals.shape} does not match "
                f"{len(self.tags)} tokens x {len(self.label_names)} labels"
            )
        check_extras(self.extras, self.sample_id, n, n_labels)

    def extra(self, name: str) -> np.ndarray | None:
        """The extra ``name``, or None when not given (an undeclared name raises)."""
        if name not in EXTRAS:
            raise KeyError(f"{name!r} is not a declared extra; they are {sorted(EXTRAS)}")
        return self.extras.get(name)


@attrs.frozen
class GateDecision:
    """The gate's verdict on one sample: ``kept`` entities are final, ``delegated``
    ones go to the MLLM, and an uncertain O token can delegate a sample alone.
    ``priority`` ranks samples under a budget (higher first)."""

    sample_id: str
    kept: tuple[Entity, ...]
    delegated: tuple[Entity, ...]
    missed_uncertainty: float
    delegate_sample: bool
    priority: float = 0.0

    def capped(self) -> GateDecision:
        """The same sample kept whole: over the budget, nothing goes to the MLLM."""
        return GateDecision(self.sample_id, self.entities, (), self.missed_uncertainty, False)

    @property
    def entities(self) -> tuple[Entity, ...]:
        return tuple(sorted((*self.kept, *self.delegated), key=lambda e: e.span))


@attrs.frozen
class Demonstration:
    """An in-context example chosen for a query, with the scores that chose it."""

    sample: Sample
    score: float
    components: Mapping[str, float] = attrs.field(factory=dict, eq=False, hash=False)


@attrs.frozen
class SynthesisCandidate:
    """An LLM-written sentence with the (name, type) pairs it claims (still unchecked)."""

    text: str
    entities: tuple[tuple[str, str], ...]
    kind: str = "rewrite"  # "rewrite" (reuses the seed's entities) or "new"
    seed_id: str | None = None
