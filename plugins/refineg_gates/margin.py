"""The ``margin`` gate: a token is uncertain when its top two labels are close.

``u_t = 1 - (p_top1 - p_top2)`` of the CRF marginal: 0 when one label has all
the mass, 1 when the two best tie. Unlike entropy it ignores how the rest of
the mass spreads, which is what matters for "is the decoded tag wrong".
One tagger pass.
"""

from __future__ import annotations

import numpy as np

from refineg_core.types import TaggerPrediction
from refineg_gates.decision import TokenScoreGate


def token_margin_uncertainty(p: np.ndarray) -> np.ndarray:
    """``1 - (top1 - top2)`` of each row of ``p`` [T, L] -> [T] in 0..1."""
    p = np.asarray(p, dtype=np.float64)
    if p.shape[0] == 0:
        return np.zeros(0)
    if p.shape[1] < 2:
        return np.zeros(p.shape[0])
    top = np.sort(p, axis=1)[:, -2:]
    return np.clip(1.0 - (top[:, 1] - top[:, 0]), 0.0, 1.0)


class MarginGate(TokenScoreGate):
    """Top-1 minus top-2 marginal, as an uncertainty."""

    def token_uncertainty(self, pred: TaggerPrediction, probs: np.ndarray) -> np.ndarray:
        return token_margin_uncertainty(probs)
