"""The order of a run's stages, said once (the run, the Python API, fingerprints)."""

from __future__ import annotations

#: The fingerprinted stages, upstream first (synthesis comes before them all).
STAGES = ("train", "predict", "refine", "ground")
#: The MLLM stages, in run order.
MLLM_STAGES = STAGES[2:]
#: The marker the core writes into a tagger folder once training finished.
TRAINED_MARKER = "refineg-trained.json"


def downstream(stage: str) -> tuple[str, ...]:
    """The stages after ``stage``, whose inputs change when it recomputes."""
    return STAGES[STAGES.index(stage) + 1 :]
