"""GMNER / MNER / EEG evaluation: rules in ``matching``, alignment in ``evaluate``."""

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
