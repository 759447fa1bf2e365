"""GMNER / MNER / EEG evaluation (micro P/R/F1, per type, span- or name-based).

The scoring rules are stated once, in ``matching``; ``evaluate`` aligns
predictions with gold by sample id; ``report`` renders the result.
"""

from refineg_core.evaluation.evaluate import evaluate, evaluate_stream
from refineg_core.evaluation.matching import normalize_name, region_correct
from refineg_core.evaluation.report import EvaluationReport, Score, TypeScore

__all__ = [
    "EvaluationReport",
    "Score",
    "TypeScore",
    "evaluate",
    "evaluate_stream",
    "normalize_name",
    "region_correct",
]
