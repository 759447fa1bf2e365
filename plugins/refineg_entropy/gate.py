"""The ``entropy`` uncertainty gate: keep confident entities, delegate the rest.

Token uncertainty ``u_t = H(p_t) / log L``: the entropy of the token's CRF
marginal normalised by the log of the number of labels (0..1). Entity and
sample scores, threshold and budget modes are the shared logic of
:class:`refineg_gates.decision.TokenScoreGate` (documented there).
"""

from __future__ import annotations

import numpy as np
from refineg_gates.decision import TokenScoreGate, normalised_entropy

from refineg_core.types import TaggerPrediction


def token_entropy(marginals: np.ndarray) -> np.ndarray:
    """Normalised entropy of each row of ``marginals`` [T, L] -> [T] in 0..1."""
    p = np.asarray(marginals, dtype=np.float64)
    return normalised_entropy(p) if p.shape[0] else np.zeros(0)


class EntropyGate(TokenScoreGate):
    """Normalised-entropy gate with threshold and budget modes."""

    def token_uncertainty(self, pred: TaggerPrediction, probs: np.ndarray) -> np.ndarray:
        return token_entropy(probs)
