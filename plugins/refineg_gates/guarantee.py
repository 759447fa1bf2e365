"""Choosing a gate threshold with a finite-sample guarantee (Learn-then-Test).

The gate keeps an item (an entity, or a whole post) when its uncertainty is
``<= tau`` and delegates it otherwise. A user asks for "precision of what is
kept >= target, with probability >= 1 - risk". Write ``alpha = 1 - target``
and ``R(tau) = P(kept item is wrong | score <= tau)``, the error rate of what a
threshold keeps on data from the calibration distribution. We want a ``tau``
with ``R(tau) <= alpha``, and the chance (over the calibration draw) that the
chosen one breaks it at most ``delta = risk``.

Learn-then-Test (Angelopoulos, Bates, Candès, Jordan, Lei, 2021) turns that
into multiple testing: for each threshold of a grid fixed in advance, test
``H_tau: R(tau) > alpha``; every rejected null is a threshold we may use, and
controlling the family-wise error at ``delta`` gives the guarantee.

* **Which test.** Among the ``n`` calibration items that ``tau`` keeps, ``k``
  are wrong. *Conditionally on n*, the kept items are ``n`` i.i.d. draws from
  the items with score ``<= tau`` (each calibration item is an i.i.d. draw,
  and which ones pass depends on their scores only), so ``k ~ Bin(n, R(tau))``.
  The exact binomial tail ``p = P(Bin(n, alpha) <= k)`` is then a valid
  p-value for ``H_tau`` given ``n``, hence also unconditionally. This is the
  LTT treatment of a conditional risk (the loss per kept item, with the
  random kept count as ``n``); a Hoeffding bound on the unconditional
  ``E[loss * kept]`` would need a bound on the kept share as well and is
  looser. It is the Clopper-Pearson test: ``p <= delta`` exactly when the
  one-sided ``1 - delta`` Clopper-Pearson upper bound on ``R(tau)`` is below
  ``alpha``... up to the boundary case of equality.
* **Which order.** Fixed-sequence testing: thresholds from the most
  conservative (smallest ``tau``, fewest kept) to the least; reject while
  ``p <= delta``, stop at the first non-rejection, use the last rejected
  threshold. It spends no multiplicity correction (each test at level
  ``delta``), so a fine grid costs no power. If a true null is ever rejected,
  the first true null in the tested order was rejected, which has probability
  ``<= delta``.
* **Where it starts.** With ``n`` items and none wrong the smallest p-value is
  ``(1 - alpha)^n``; below ``n_min = ceil(log delta / log(1 - alpha))`` kept
  items no threshold can be rejected, and starting there would always stop at
  once. The sequence therefore starts at the first grid threshold that keeps
  ``n_start = max(n_min, min(START_KEPT, N // 4))`` of the ``N`` calibration
  items, a rule that reads the counts, never the labels. Past ``n_min``, the
  later start is what makes the test useful on real taggers: the most confident
  entities include the gold's own mistakes, and one or two of them among the
  first ~25 kept entities would stop the whole sequence at once (measured in
  ``benchmarks/RESULTS.md``: at target 0.9 on Twitter-GMNER dev the worst split
  delegated 93 % of posts when starting at ``n_min``, 71 % starting at 50).
  Rejecting a fixed ``H_j`` still needs ``n_j >= n_start`` and ``p_j <= delta``, which has
  probability ``<= delta`` given ``n_j``. When the first tested threshold is
  past the first true null (the thresholds before it kept too few items),
  the guarantee also needs ``R`` to be non-decreasing in ``tau`` (the gate's
  score ranks errors, the premise of any uncertainty gate): then the
  conditioning on "the earlier threshold kept too few" only moves kept items
  towards higher, worse scores, which makes the test conservative.

Assumptions, stated where a user reads the result: calibration and future data
are i.i.d. from one distribution; for entity precision the *entities* are
treated as i.i.d., while the data's unit is the post and entities of one post
are correlated (the simulation test in ``tests/test_gate_guarantee.py`` checks
the guarantee on random post-level splits of real predictions). The sample
mode ("share of kept posts whose tagger output is exactly right") has posts as
its items and needs no such caveat. The tagger must not have been selected on
the calibration split with its labels in a way that makes its scores look
better there than on new data (e.g. early stopping on dev makes dev slightly
optimistic).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import attrs
import numpy as np


def binomial_cdf(k: int, n: int, p: float) -> float:
    """``P(Bin(n, p) <= k)``, exactly (log-space terms; n up to millions is fine)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    lp, lq = math.log(p), math.log1p(-p)
    logs = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq
        for i in range(k + 1)
    ]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(v - top) for v in logs))


def min_kept(alpha: float, delta: float) -> int:
    """Fewest kept items with which ``H: R > alpha`` can be rejected at level ``delta``
    (all of them right): the smallest n with ``(1 - alpha)^n <= delta``."""
    n = math.ceil(math.log(delta) / math.log1p(-alpha))
    while (1 - alpha) ** n > delta:  # float rounding at an exact power
        n += 1
    return max(n, 1)


#: Kept items at which the fixed sequence starts at the latest (see the module doc).
START_KEPT = 50


def start_count(alpha: float, delta: float, items: int) -> int:
    """``n_start``: the kept count at which the sequence starts (label-free)."""
    return max(min_kept(alpha, delta), min(START_KEPT, items // 4))


def default_grid() -> np.ndarray:
    """Thresholds fixed before seeing any data: 0, a log grid that resolves the many
    near-zero uncertainties of a confident tagger, and a linear grid up to 1."""
    return np.unique(np.concatenate([[0.0], np.geomspace(1e-6, 1.0, 601), np.linspace(0, 1, 1001)]))


@attrs.frozen
class Choice:
    """The outcome of one Learn-then-Test run (``threshold`` None: nothing passed)."""

    threshold: float | None
    target: float
    risk: float
    items: int
    min_kept: int
    #: Kept and wrong items at the chosen threshold (0 when none passed).
    kept: int
    wrong: int
    p_value: float | None
    #: Where the sequence started and why it stopped (for the refusal message).
    first_tested: float | None
    stop_reason: str

    @property
    def realized_precision(self) -> float | None:
        return (self.kept - self.wrong) / self.kept if self.kept else None


def kept_counts(
    scores: Sequence[float], wrong: Sequence[bool], grid: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(kept, wrong among kept) at each threshold of ``grid``: items with score ``<= tau``."""
    s = np.asarray(scores, dtype=np.float64)
    w = np.asarray(wrong, dtype=bool)
    if s.shape != w.shape:
        raise ValueError(f"{s.shape[0]} scores but {w.shape[0]} correctness marks")
    order = np.argsort(s, kind="stable")
    s, w = s[order], w[order]
    n = np.searchsorted(s, grid, side="right")
    cum = np.concatenate([[0], np.cumsum(w)])
    return n, cum[n]


def learn_then_test(
    scores: Sequence[float],
    wrong: Sequence[bool],
    target: float,
    risk: float,
    grid: np.ndarray | None = None,
) -> Choice:
    """The least conservative threshold of the fixed sequence whose kept items have
    precision ``>= target`` with probability ``>= 1 - risk`` (see the module docstring)."""
    if not (0 < target < 1 and 0 < risk < 1):
        raise ValueError(f"target {target} and risk {risk} must lie strictly between 0 and 1")
    grid = default_grid() if grid is None else np.sort(np.asarray(grid, dtype=np.float64))
    alpha = 1.0 - target
    need = start_count(alpha, risk, len(scores))
    n, k = kept_counts(scores, wrong, grid)
    chosen: tuple[float, int, int, float] | None = None
    first = None
    reason = f"no threshold keeps {need} calibration items (where the tests start)"
    p_values: dict[tuple[int, int], float] = {}  # neighbouring thresholds share kept sets
    for tau, n_tau, k_tau in zip(grid, n, k, strict=True):
        if n_tau < need:
            continue
        if first is None:
            first = float(tau)
        key = (int(n_tau), int(k_tau))
        if key not in p_values:
            p_values[key] = binomial_cdf(key[1], key[0], alpha)
        p = p_values[key]
        if p > risk:
            reason = (
                f"stopped at threshold {tau:.6g}: {k_tau} of {n_tau} kept items wrong "
                f"(p = {p:.3g} > risk {risk})"
            )
            break
        chosen = (float(tau), int(n_tau), int(k_tau), p)
    else:
        if first is not None:
            reason = "every threshold passed"
    if chosen is None:
        return Choice(None, target, risk, len(scores), need, 0, 0, None, first, reason)
    tau, n_tau, k_tau, p = chosen
    return Choice(tau, target, risk, len(scores), need, n_tau, k_tau, p, first, reason)


def hoeffding_threshold(
    scores: Sequence[float],
    wrong: Sequence[bool],
    target: float,
    risk: float,
    grid: np.ndarray | None = None,
) -> float | None:
    """The comparison rule of ``benchmarks/bench_gate_guarantee.py``: the largest
    threshold whose calibration point estimate of precision is at least ``target``
    plus the Hoeffding margin ``sqrt(log(1/risk) / (2 n))`` at the same risk.

    It is what one fits "by hand" from the same point estimates with the same safety
    margin; it is not a guarantee (it takes the best of many thresholds without any
    correction), and where it is more conservative than LTT it delegates more."""
    grid = default_grid() if grid is None else np.sort(np.asarray(grid, dtype=np.float64))
    n, k = kept_counts(scores, wrong, grid)
    best = None
    for tau, n_tau, k_tau in zip(grid, n, k, strict=True):
        if n_tau == 0:
            continue
        margin = math.sqrt(math.log(1 / risk) / (2 * n_tau))
        if 1 - k_tau / n_tau >= target + margin:
            best = float(tau)
    return best
