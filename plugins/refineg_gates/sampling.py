"""Gates that read several marginals per token: ensemble members or MC-dropout passes.

With M stochastic or independent estimates ``p_m`` of a token's label
distribution, the predictive entropy ``H(mean_m p_m)`` splits into the
expected entropy ``mean_m H(p_m)`` (what every estimate finds ambiguous) and
the mutual information ``H(mean p) - mean H(p_m)`` (what they disagree on:
BALD). Both are divided by log(#labels) to lie in 0..1.

- ``ensemble_mi``: reads the extra ``member_marginals``; the bert_crf
  tagger fills it when ``ensemble_size >= 2``. Cost: M tagger passes.
- ``mc_dropout``: reads the extra ``dropout_marginals``; the bert_crf
  tagger fills it when ``mc_dropout_samples = K >= 2``. Cost: 1 + K passes.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
import pydantic

from refineg_core.errors import DataError
from refineg_core.types import TaggerPrediction
from refineg_gates.decision import GateOptions, TokenScoreGate, normalised_entropy


def mutual_information(stack: np.ndarray) -> np.ndarray:
    """BALD score per token from marginals [M, T, L] -> [T], normalised to 0..1."""
    stack = np.asarray(stack, dtype=np.float64)
    mi = normalised_entropy(stack.mean(axis=0)) - normalised_entropy(stack).mean(axis=0)
    return np.clip(mi, 0.0, 1.0)


class _StackOptions(GateOptions):
    score: Literal["mutual_information", "predictive_entropy"] = pydantic.Field(
        "mutual_information",
        description="disagreement between the estimates, or entropy of their mean",
    )


class _StackGate(TokenScoreGate):
    Options = _StackOptions
    plugin: ClassVar[str]
    field: ClassVar[str]
    how_to_get: ClassVar[str]

    def stack(self, pred: TaggerPrediction) -> np.ndarray:
        stack = pred.extra(self.field)
        if stack is None or stack.shape[0] < 2:
            got = "none" if stack is None else f"{stack.shape[0]}"
            raise DataError(
                f"the {self.plugin} gate needs at least 2 {self.field} per token, the "
                f"tagger gave {got}: {self.how_to_get}",
                where=f"uncertainty: sample {pred.sample_id}",
            )
        return stack

    def probabilities(self, pred: TaggerPrediction) -> np.ndarray:
        return self.stack(pred).mean(axis=0)

    def token_uncertainty(self, pred: TaggerPrediction, probs: np.ndarray) -> np.ndarray:
        if self.options.score == "predictive_entropy":
            return normalised_entropy(probs)
        return mutual_information(self.stack(pred))


class EnsembleMIGate(_StackGate):
    """Mutual information between the ensemble members' CRF marginals."""

    plugin = "ensemble_mi"
    field = "member_marginals"
    needs_extras = (field,)
    how_to_get = "train the tagger with ensemble_size >= 2 (bert_crf)"


class MCDropoutGate(_StackGate):
    """Mutual information (or predictive entropy) over K dropout passes."""

    plugin = "mc_dropout"
    field = "dropout_marginals"
    needs_extras = (field,)
    how_to_get = "set the tagger's mc_dropout_samples >= 2 (bert_crf)"
