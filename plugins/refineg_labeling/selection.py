"""Choosing posts to label: uncertainty, uncertainty spread by embeddings, or random.

Sample scores (higher = label it sooner), chosen by ``refineg select --score``:

- ``max`` (default): the gate's *sample* uncertainty: the highest uncertainty
  among its predicted entities and its "missed entity" score (the most doubtful
  token tagged O). It is exactly what the gate ranks delegated posts by
  (``GateDecision.priority``), taken over every entity rather than only those over
  the threshold, so a post the gate would send to the MLLM is also a post worth a
  human label. A maximum over tokens grows with length: long tweets win.
- ``mnlp``: Shen et al. (ICLR 2018)'s maximum normalized log-probability, the
  decoded path's log-probability divided by the number of tokens, lowest first
  (the score is its negation). The length normalisation is the point: their
  comparison found it ahead of the unnormalised path probability, which prefers
  long sentences.
- ``lc``: sequence least confidence (Culotta & McCallum 2005), minus the decoded
  path's log-probability, *not* divided by length (rank-equal to 1 - P(path)).
- ``tte``: total token entropy (Settles & Craven 2008), the sum over tokens of the
  entropy of the tagger's per-token marginals.

``lc`` and ``tte`` exist because the labeling budget counts posts, not tokens: a post
with more doubtful tokens (more, or longer, uncertain entities) teaches more per
label, which the per-token average of ``mnlp`` hides. Both grow with length. In the
labeling benchmark (Twitter-GMNER, steps of 100, 6 seeds) ``lc`` was ahead of ``mnlp``
at every size from 300 to 800 labels and level with random's 1,600 at 600 and 800
(benchmarks/pages/labeling-guarantee.md, fourth round), so it is the default; on a pool
of very unequal lengths it favours the long posts, which may cost more to label.

Pure numpy, no model: the CLI and the benchmark feed it the same numbers, so the
benchmark measures the code the command runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np

from refineg_core.errors import ConfigError
from refineg_core.types import Entity, GateDecision, TaggerPrediction

Strategy = Literal["uncertainty", "uncertainty+diversity", "random"]
STRATEGIES: tuple[str, ...] = ("uncertainty", "uncertainty+diversity", "random")

#: ``uncertainty+diversity`` spreads its choice over this many times ``n`` of the
#: most uncertain candidates: wide enough to avoid near-duplicate tweets (retweets,
#: the same news), narrow enough to stay among the posts the tagger doubts.
DIVERSITY_FACTOR = 3

#: The sample scores ``refineg select --score`` offers (see the module docstring).
SCORES: tuple[str, ...] = ("max", "mnlp", "lc", "tte")

#: Floor under a probability before its log: float32 forward-backward can give an
#: exact 0 for a path the Viterbi decoder still picked (a tie at the constraint edge).
_TINY = 1e-12


def sample_uncertainty_of(missed: float, entities: Iterable[Entity]) -> float:
    """max(missed-entity score, uncertainty of every predicted entity) of one post."""
    scores = [float(missed)]
    scores += [float(e.uncertainty) for e in entities if e.uncertainty is not None]
    return max(scores)


def sample_uncertainty(decision: GateDecision) -> float:
    """:func:`sample_uncertainty_of` a gate decision (kept and delegated entities)."""
    return sample_uncertainty_of(decision.missed_uncertainty, decision.entities)


def path_log_probability(prediction: TaggerPrediction) -> float:
    """log P(decoded tags | post) under the tagger's model, from its marginals.

    A linear-chain CRF's distribution over tag sequences is a Markov chain, so the
    probability of one path factorises exactly into its pair and node marginals:
    ``P(y) = prod_i P(y_i, y_i+1) / prod_(0<i<n-1) P(y_i)``. That needs the
    transition marginals (``bert_crf`` gives them); without them the product of the
    decoded tags' token marginals stands in: the greedy-decoder form Shen et al.
    used for their LSTM decoder, exact when tokens are independent.
    """
    n = len(prediction.tags)
    if n == 0:
        return 0.0
    index = {name: j for j, name in enumerate(prediction.label_names)}
    try:
        y = np.array([index[t] for t in prediction.tags], dtype=int)
    except KeyError as err:
        raise ValueError(
            f"{prediction.sample_id}: tag {err.args[0]!r} is not among its label_names"
        ) from None
    node = np.asarray(prediction.marginals, dtype=np.float64)[np.arange(n), y]
    pairs = prediction.extra("transition_marginals")
    if pairs is None or n == 1:
        return float(np.log(np.maximum(node, _TINY)).sum())
    pair = np.asarray(pairs, dtype=np.float64)[np.arange(n - 1), y[:-1], y[1:]]
    return float(
        np.log(np.maximum(pair, _TINY)).sum() - np.log(np.maximum(node[1:-1], _TINY)).sum()
    )


def mnlp_uncertainty(prediction: TaggerPrediction) -> float:
    """Minus Shen et al.'s MNLP: -(log P(decoded path) / tokens), >= 0; higher = less
    sure of the post as a whole. An empty post scores 0 (nothing to doubt)."""
    n = len(prediction.tags)
    return -path_log_probability(prediction) / n if n else 0.0


def lc_uncertainty(prediction: TaggerPrediction) -> float:
    """Sequence least confidence: -log P(decoded path), >= 0, not normalised by
    length, so a post's score is the doubt over all of it (the label unit)."""
    return -path_log_probability(prediction)


def total_token_entropy(prediction: TaggerPrediction) -> float:
    """Sum over tokens of the entropy (nats) of the tagger's marginal tag
    distribution: the expected information of labeling the whole post, per post
    (Settles & Craven 2008's TTE). An empty post scores 0."""
    if len(prediction.tags) == 0:
        return 0.0
    p = np.asarray(prediction.marginals, dtype=np.float64)  # (tokens, labels): checked by the type
    logp = np.log(np.maximum(p, _TINY))
    return float(max(0.0, -(p * logp).sum()))


#: ``--score`` name -> the function of a tagger prediction that computes it.
TAGGER_SCORE = {
    "mnlp": mnlp_uncertainty,
    "lc": lc_uncertainty,
    "tte": total_token_entropy,
}


def k_center_greedy(
    vectors: np.ndarray, k: int, *, first: int = 0, weights: np.ndarray | None = None
) -> list[int]:
    """``k`` row indices, each the farthest (cosine) from those already chosen.

    Starts at ``first`` (the most uncertain candidate). ``weights`` (e.g. the
    uncertainty) multiply the distance, so among equally far posts the more
    uncertain one wins. Rows must be L2-normalised.
    """
    n = len(vectors)
    k = min(k, n)
    if k <= 0:
        return []
    chosen = [first]
    dist = 1.0 - vectors @ vectors[first]
    dist[first] = -np.inf
    for _ in range(k - 1):
        score = dist * weights if weights is not None else dist
        score = np.where(np.isneginf(dist), -np.inf, score)
        nxt = int(np.argmax(score))
        chosen.append(nxt)
        dist = np.minimum(dist, 1.0 - vectors @ vectors[nxt])
        dist[chosen] = -np.inf
    return chosen


def choose(
    strategy: str,
    ids: Sequence[str],
    n: int,
    *,
    scores: Sequence[float] | None = None,
    vectors: np.ndarray | None = None,
    exclude: set[str] | frozenset[str] = frozenset(),
    seed: int = 0,
    weighted: bool = True,
) -> list[str]:
    """The ``n`` ids to label next, most wanted first; ``exclude`` is never chosen.

    ``scores`` (sample uncertainty, aligned with ``ids``) is needed by the
    uncertainty strategies, ``vectors`` (L2-normalised embeddings) by
    ``uncertainty+diversity``. Ties in uncertainty break by a seeded shuffle, not
    by file order, so a file sorted by topic does not bias the choice.

    ``weighted`` (``uncertainty+diversity`` only): k-center distances times the
    uncertainty (the default), or plain k-center among the ``DIVERSITY_FACTOR * n``
    most uncertain. Measured on Twitter-GMNER with the MNLP score, the weighted form
    keeps 81-91 % of the plain top ``n`` (the score's spread outweighs the distances,
    so only near-duplicates are pushed out); unweighted, the batch really spreads.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    if n < 1:
        raise ConfigError(f"--n must be at least 1, got {n}")
    rng = np.random.default_rng(seed)
    open_idx = np.array([i for i, sid in enumerate(ids) if sid not in exclude], dtype=int)
    if len(open_idx) == 0:
        return []
    if strategy == "random":
        picked = rng.permutation(open_idx)[:n]
        return [ids[i] for i in picked]
    if scores is None or len(scores) != len(ids):
        raise ValueError("the uncertainty strategies need one score per id")
    s = np.asarray(scores, dtype=np.float64)
    shuffled = rng.permutation(open_idx)
    ranked = shuffled[np.argsort(-s[shuffled], kind="stable")]
    if strategy == "uncertainty":
        return [ids[i] for i in ranked[:n]]
    if vectors is None or len(vectors) != len(ids):
        raise ValueError("uncertainty+diversity needs one embedding per id")
    top = ranked[: n * DIVERSITY_FACTOR]
    v = np.asarray(vectors, dtype=np.float64)[top]
    weights = np.maximum(s[top], 1e-6) if weighted else None
    picked = k_center_greedy(v, n, first=0, weights=weights)
    return [ids[top[j]] for j in picked]
