"""The lookup table: entity surface strings -> how often each label was seen.

Names are token tuples, so matching happens on token (= word) boundaries by
construction: "Puma" never matches inside "Pumas". Besides the types, the
table counts how often a name occurred in training text *without* a tag
(``"O"``), so a name that is usually a plain word gets low confidence instead
of a confident wrong tag.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from refineg.plugin import Sample

OUTSIDE = "O"


@attrs.frozen
class Match:
    start: int
    end: int
    counts: Mapping[str, int]  # label ("O" or an entity type) -> count

    def best(self, type_order: Sequence[str]) -> str:
        """Most frequent label; ties go to an entity type (earliest in ``type_order``)."""
        rank = {t: i for i, t in enumerate(type_order)}
        return max(
            self.counts,
            key=lambda k: (self.counts[k], k != OUTSIDE, -rank.get(k, len(rank))),
        )


@attrs.frozen
class Gazetteer:
    entries: Mapping[tuple[str, ...], Mapping[str, int]]
    case_sensitive: bool
    #: The longest name in tokens (computed once: ``matches`` runs per sentence).
    max_len: int = attrs.field(init=False)

    @max_len.default
    def _max_len(self) -> int:
        return max((len(k) for k in self.entries), default=0)

    def key(self, tokens: Iterable[str]) -> tuple[str, ...]:
        return tuple(tokens) if self.case_sensitive else tuple(t.casefold() for t in tokens)

    def matches(self, tokens: Sequence[str]) -> list[Match]:
        """Greedy left-to-right longest match; matches never overlap."""
        keys = self.key(tokens)
        found, i, longest = [], 0, self.max_len
        while i < len(keys):
            for n in range(min(longest, len(keys) - i), 0, -1):
                counts = self.entries.get(keys[i : i + n])
                if counts is not None:
                    found.append(Match(i, i + n, counts))
                    i += n
                    break
            else:
                i += 1
        return found

    @property
    def ambiguous(self) -> int:
        """Names seen with more than one label (counting "O")."""
        return sum(len(c) > 1 for c in self.entries.values())

    @classmethod
    def build(
        cls,
        samples: Iterable[Sample],
        *,
        case_sensitive: bool,
        min_count: int,
        types: Sequence[str] | None,
        outside_evidence: bool,
    ) -> tuple[Gazetteer, dict[str, int]]:
        """Collect names; return the table and the entity counts of skipped types."""
        samples = list(samples)
        probe = cls({}, case_sensitive)
        typed: dict[tuple[str, ...], Counter[str]] = {}
        skipped: Counter[str] = Counter()
        for s in samples:
            for e in s.entities:
                if types is not None and e.type not in types:
                    skipped[e.type] += 1
                    continue
                typed.setdefault(probe.key(s.tokens[e.start : e.end]), Counter())[e.type] += 1
        entries = {k: dict(c) for k, c in typed.items() if sum(c.values()) >= min_count}
        table = cls(entries, case_sensitive)
        if outside_evidence and entries:
            untagged: Counter[tuple[str, ...]] = Counter()
            for s in samples:
                spans = {e.span for e in s.entities}
                inside = {i for e in s.entities for i in range(e.start, e.end)}
                for m in table.matches(s.tokens):
                    covered = inside.intersection(range(m.start, m.end))
                    if (m.start, m.end) not in spans and not covered:
                        untagged[table.key(s.tokens[m.start : m.end])] += 1
            entries = {
                k: {**c, OUTSIDE: untagged[k]} if untagged[k] else c for k, c in entries.items()
            }
        return cls(entries, case_sensitive), dict(skipped)

    def to_json(self) -> list[dict[str, Any]]:
        return [{"tokens": list(k), "counts": dict(v)} for k, v in sorted(self.entries.items())]

    @classmethod
    def from_json(cls, rows: list[dict[str, Any]], case_sensitive: bool) -> Gazetteer:
        entries = {}
        for row in rows:
            counts = {str(k): int(v) for k, v in row["counts"].items()}
            if not row["tokens"] or not counts or min(counts.values()) < 1:
                raise ValueError(f"bad entry {row!r}")
            entries[tuple(str(t) for t in row["tokens"])] = counts
        return cls(entries, case_sensitive)
