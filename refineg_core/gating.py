"""The gate's budget over a whole input, shared by the gates and the streaming stages.

A budget ("delegate at most 10% of samples, most uncertain first") ranks the
whole input, so a stage that sees the corpus chunk by chunk cannot apply it
per chunk. It decides each chunk without the cap, remembers each delegated
sample's priority, and keeps the ones ``within_budget`` selects; the rest are
``capped`` (kept whole). A gate deciding a whole set in memory uses the same
function, so both paths give the same answer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from refineg_core.types import GateDecision


def within_budget(
    delegated: Iterable[tuple[int, float]], n_samples: int, budget: float
) -> set[int]:
    """Positions of the delegated samples that stay delegated.

    ``delegated`` holds (input position, priority) of every sample the gate
    would delegate without a cap, in input order; the first
    ``floor(budget * n_samples)`` by priority stay (ties: earlier input first).
    """
    cap = math.floor(budget * n_samples)
    ranked = sorted(delegated, key=lambda item: -item[1])  # stable: ties keep input order
    return {position for position, _ in ranked[:cap]}


def apply_budget(decisions: Sequence[GateDecision], budget: float | None) -> list[GateDecision]:
    """``decisions`` of a whole input with the budget applied (unchanged without one)."""
    if budget is None:
        return list(decisions)
    keep = within_budget(
        ((i, d.priority) for i, d in enumerate(decisions) if d.delegate_sample),
        len(decisions),
        budget,
    )
    return [
        d if (i in keep or not d.delegate_sample) else d.capped() for i, d in enumerate(decisions)
    ]
