"""One verdict per MLLM stage: whose fault each failure is, and whether the stage failed.

A failure is the sample's own (its image does not decode, its answer cannot
be used: another run gets the same; recorded, the run goes on) or not
(transport, backend, config, any unexpected exception type). The second kind
fails a required stage (``stages.<stage> = true``) with exit 3, whatever the
exception type: a required stage exiting 0 while failing looks right and is
wrong. ``judge`` is the one place that decides, after each chunk and at the end.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from refineg_core.errors import BackendError, BackendUnavailable

#: Failure kinds that are the sample's own fault: its answer could not be used
#: (``AnswerError`` kinds and the frame's), or its image is unusable.
OWN_FAULT_KINDS = frozenset(
    {
        "empty",
        "no_json",
        "invalid_json",
        "not_a_list",
        "too_large",
        "truncated",
        "no_usable_item",
        "answer_too_large",
        "image",
    }
)
#: Summary counter: samples that failed for a reason not their own.
FAILED_NOT_OWN = "samples_failed_not_own"


def is_own_fault(kind: str) -> bool:
    return kind in OWN_FAULT_KINDS


def failure_kind(exc: BaseException) -> str:
    """An exception's own ``kind``, else its class name (``ValueError``...)."""
    kind = getattr(exc, "kind", None)
    if isinstance(kind, str) and kind:
        return kind
    if isinstance(exc, BackendUnavailable):
        return "unavailable"
    if isinstance(exc, BackendError):
        return "backend_error"
    return type(exc).__name__


def count_failures(counters: Counter, kinds: Iterable[str]) -> None:
    """A sample with any failure not its own counts once."""
    if any(not is_own_fault(k) for k in kinds):
        counters[FAILED_NOT_OWN] += 1


@attrs.frozen
class Verdict:
    """What one stage's summary says about it."""

    stage: str
    required: bool
    samples: int
    failed_not_own: int
    kinds_not_own: Mapping[str, int]
    #: The backend could not be used at all (unreachable, or it failed every call).
    down: str | None = None
    #: Which backend (its ``describe()``), when the stage said.
    backend: str | None = None

    @property
    def troubled(self) -> bool:
        return self.down is not None or self.failed_not_own > 0

    @property
    def failed(self) -> bool:
        return self.required and self.troubled

    @property
    def hopeless(self) -> bool:
        """A required stage whose backend is down: later chunks cannot do better."""
        return self.required and self.down is not None

    def note(self) -> str | None:
        """One line for the summary and the error (None when nothing went wrong)."""
        if not self.troubled:
            return None
        parts = []
        if self.down is not None:
            which = f" ({self.backend})" if self.backend else ""
            parts.append(f"the backend{which} could not be used: {self.down}")
        if self.failed_not_own:
            why = ", ".join(f"{k} x{v}" for k, v in sorted(self.kinds_not_own.items()))
            parts.append(
                f"{self.failed_not_own} of {self.samples} samples failed for reasons not "
                f"their own ({why or 'unknown'})"
            )
        rerun = "a rerun asks them again"
        if self.required:
            return f"stages.{self.stage} = true: " + "; ".join(parts) + f"; {rerun}"
        return "; ".join(parts) + f'; stages.{self.stage} = "auto" goes on; {rerun}'


def judge(stage: str, summary: Any, required: bool) -> Verdict:
    notes = summary.notes
    down = notes.get("unavailable") or notes.get("stopped")
    kinds = {k: v for k, v in summary.failure_kinds.items() if v and not is_own_fault(k)}
    return Verdict(
        stage,
        required,
        samples=summary.total,
        failed_not_own=int(summary.counters.get(FAILED_NOT_OWN, 0)),
        kinds_not_own=kinds,
        down=down,
        backend=notes.get("backend"),
    )
