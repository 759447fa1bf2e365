"""A stage's counts. Imports nothing of the project: the kinds table reaches it."""

from __future__ import annotations

from collections import Counter
from typing import Any

import attrs


@attrs.define
class StageSummary:
    stage: str
    total: int = 0
    processed: int = 0
    resumed: int = 0
    failed: int = 0
    seconds: float = 0.0
    failure_kinds: Counter = attrs.field(factory=Counter)
    counters: Counter = attrs.field(factory=Counter)
    #: Free-text facts a user must see (e.g. which backend was unavailable and why).
    notes: dict[str, str] = attrs.field(factory=dict)

    def merge(self, other: StageSummary) -> StageSummary:
        """Add a later chunk's summary (its notes win)."""
        self.total += other.total
        self.processed += other.processed
        self.resumed += other.resumed
        self.failed += other.failed
        self.seconds += other.seconds
        self.failure_kinds.update(other.failure_kinds)
        self.counters.update(other.counters)
        self.notes.update(other.notes)
        return self

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StageSummary:
        counts = {k: Counter(data[k]) for k in ("failure_kinds", "counters")}
        return cls(
            **{**data, **counts, "seconds": float(data["seconds"]), "notes": dict(data["notes"])}
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "total": self.total,
            "processed": self.processed,
            "resumed": self.resumed,
            "failed": self.failed,
            "seconds": round(self.seconds, 3),
            "failure_kinds": dict(self.failure_kinds),
            **{k: v for k, v in sorted(self.counters.items())},
            **self.notes,
        }
