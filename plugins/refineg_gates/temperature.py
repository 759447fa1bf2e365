"""The ``temperature_entropy`` gate: entropy of temperature-scaled marginals.

CRF marginals of a fine-tuned tagger are over-confident. Temperature scaling
rescales each token's log-marginals by ``1/T`` and renormalises; ``T`` is one
number fitted on dev (gold tags) by minimising the tokens' negative
log-likelihood, in :meth:`TemperatureEntropyGate.calibrate`. The gate then
scores tokens by the normalised entropy of the rescaled distribution; entity
confidences use it too. One tagger pass.

Without ``calibrate`` (no dev data) and without a fixed ``temperature`` the
gate refuses to decide: silently using T = 1 would be the plain entropy gate
under another name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pydantic

from refineg_core.errors import DataError, PluginError
from refineg_core.labels import spans_to_tags
from refineg_core.types import Sample, TaggerPrediction
from refineg_gates.decision import GateOptions, TokenScoreGate, normalised_entropy

_FLOOR = 1e-12


def scale(p: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log p / T)`` over the last axis."""
    logp = np.log(np.clip(np.asarray(p, dtype=np.float64), _FLOOR, 1.0)) / temperature
    logp -= logp.max(axis=-1, keepdims=True)
    q = np.exp(logp)
    return q / q.sum(axis=-1, keepdims=True)


def nll(p: np.ndarray, gold: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of ``gold`` label indices under scaled ``p`` [N, L]."""
    q = scale(p, temperature)
    return float(-np.log(np.clip(q[np.arange(len(gold)), gold], _FLOOR, 1.0)).mean())


def fit_temperature(p: np.ndarray, gold: np.ndarray, lo: float = 0.05, hi: float = 20.0) -> float:
    """The T minimising :func:`nll`, by golden-section search on log T (NLL is unimodal)."""
    a, b = math.log(lo), math.log(hi)
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = nll(p, gold, math.exp(c)), nll(p, gold, math.exp(d))
    for _ in range(60):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = nll(p, gold, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = nll(p, gold, math.exp(d))
    return math.exp((a + b) / 2)


class TemperatureOptions(GateOptions):
    temperature: pydantic.confloat(gt=0, allow_inf_nan=False) | None = pydantic.Field(
        None, description="fixed temperature; None: fitted on dev by calibrate()"
    )


class TemperatureEntropyGate(TokenScoreGate):
    """Normalised entropy of the marginals after temperature scaling fitted on dev."""

    Options = TemperatureOptions

    def __init__(self, options=None, labels=None):
        super().__init__(options, labels)
        self.options: TemperatureOptions
        self.temperature: float | None = self.options.temperature

    @property
    def calibrates(self) -> bool:
        return True

    def calibrate(self, samples: Sequence[Sample], predictions: Sequence[TaggerPrediction]) -> dict:
        """Fit T on the gold tags of ``samples`` (dev), then, in guarantee mode, choose
        the threshold on the rescaled scores; return T, the NLL before/after, the choice."""
        report = self._fit(samples, predictions)
        return {**report, **super().calibrate(samples, predictions)}

    def _fit(self, samples: Sequence[Sample], predictions: Sequence[TaggerPrediction]) -> dict:
        if self.options.temperature is not None:
            return {"temperature": self.temperature, "fitted": False}
        if len(samples) != len(predictions):
            raise DataError(
                f"{len(samples)} samples but {len(predictions)} predictions",
                where="uncertainty.calibrate",
            )
        rows, gold = [], []
        for sample, pred in zip(samples, predictions, strict=True):
            if pred.sample_id != sample.id or len(pred.tags) != len(sample.tokens):
                raise DataError(
                    f"prediction {pred.sample_id!r} does not fit sample {sample.id!r}",
                    where="uncertainty.calibrate",
                )
            if not sample.tokens:
                continue
            index = {t: i for i, t in enumerate(pred.label_names)}
            scheme = "BIOES" if any(t[:2] in ("E-", "S-") for t in pred.label_names) else "BIO"
            tags = spans_to_tags(len(sample.tokens), (e.key for e in sample.entities), scheme)
            missing = sorted({t for t in tags if t not in index})
            if missing:
                raise DataError(
                    f"gold tags {missing} are not among the tagger's labels",
                    where=f"uncertainty.calibrate: sample {sample.id}",
                )
            rows.append(np.asarray(pred.marginals, dtype=np.float64))
            gold.extend(index[t] for t in tags)
        if not gold:
            raise DataError("no token to calibrate on", where="uncertainty.calibrate")
        p, y = np.concatenate(rows), np.asarray(gold)
        self.temperature = fit_temperature(p, y)
        return {
            "temperature": self.temperature,
            "fitted": True,
            "tokens": len(y),
            "nll_before": nll(p, y, 1.0),
            "nll_after": nll(p, y, self.temperature),
        }

    def probabilities(self, pred: TaggerPrediction) -> np.ndarray:
        if self.temperature is None:
            raise PluginError(
                "the temperature_entropy gate is not calibrated: run it with dev "
                "data (calibrate) or set its temperature option",
                where="uncertainty",
            )
        return scale(pred.marginals, self.temperature)

    def token_uncertainty(self, pred: TaggerPrediction, probs: np.ndarray) -> np.ndarray:
        return normalised_entropy(probs)
