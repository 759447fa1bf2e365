"""The ``span`` gate: an entity is uncertain when the tagger doubts the whole span.

Token scores (entropy, margin) judge each token alone and then take a mean or a
max, so they cannot see that a boundary is in doubt (the next token may well
continue the entity) or how much the tokens' labels hang together. The
posterior of a linear-chain CRF is itself a Markov chain, so the probability
that *exactly this span, with this type* is labelled follows from the node and
transition marginals (constrained forward-backward, Culotta & McCallum 2004)::

    P(y_s..y_{e-1} = tags) = P(y_s) * prod_{t=s+1}^{e-1} P(y_{t-1}, y_t) / P(y_{t-1})
    P(span)                = P(y_s..y_{e-1} = tags)
                             * (1 - P(y_e continues the span | y_{e-1}))
                             * (1 - P(y_{s-1} runs into the span | y_s))

The left factor is 1 when ``y_s`` opens a span (``B``/``S``). This is the
probability of the span's decoded labelling. When the tagger constrains its
transitions (the ``bert_crf`` default) a span has no other labelling, so it is
exactly the span's probability; without constraints it is a lower bound.

Entity uncertainty is ``1 - P(span)``, its confidence ``P(span)``; for an
ensemble the members' span probabilities are averaged (the probability under
their mixture). A token decoded ``O`` scores ``1 - P(O)``, the probability that
it belongs to some entity, on the same scale as the entities. One tagger pass;
it needs the extra ``transition_marginals`` (``bert_crf`` reports it), and
averages over the members when ``member_marginals`` and
``member_transition_marginals`` are there too.
"""

from __future__ import annotations

import functools

import numpy as np

from refineg_core.errors import DataError
from refineg_core.labels import split_tag
from refineg_core.types import TaggerPrediction
from refineg_gates.decision import ThresholdOptions, TokenScoreGate


@functools.lru_cache(maxsize=64)
def _label_info(label_names: tuple[str, ...]) -> tuple[dict[str, int], dict]:
    """Label index, and per (type, prefixes) the labels of that type with those
    prefixes (computed once per label set, not per entity)."""
    index = {name: i for i, name in enumerate(label_names)}
    by_type: dict = {}
    for i, name in enumerate(label_names):
        prefix, kind = split_tag(name)
        for prefixes in ("IE", "BI"):
            if prefix in prefixes:
                by_type.setdefault((kind, prefixes), []).append(i)
    return index, by_type


def _ratio(num: float, den: float) -> float:
    return num / den if den > 1e-12 else 0.0


def span_probability(
    node: np.ndarray,
    pair: np.ndarray,
    label_names: tuple[str, ...],
    tags: tuple[str, ...],
    start: int,
    end: int,
) -> float:
    """P(tokens ``[start, end)`` form exactly the decoded span) under one chain posterior.

    ``node`` [T, L] and ``pair`` [T-1, L, L] are one model's node and transition
    marginals; ``tags`` the decoded tags (their labels at ``start..end-1`` are scored).
    """
    index, by_type = _label_info(tuple(label_names))
    if any(t not in index for t in tags[start:end]):
        return 0.0  # a tag the marginals do not cover has no probability
    path = [index[t] for t in tags[start:end]]
    prob = float(node[start, path[0]])
    for t in range(start + 1, end):
        a, b = path[t - start - 1], path[t - start]
        prob *= _ratio(float(pair[t - 1, a, b]), float(node[t - 1, a]))
    first_prefix, etype = split_tag(tags[start])
    last = path[-1]
    if end < len(tags):  # the next token must not continue the span
        cont = by_type.get((etype, "IE"), [])
        prob *= 1.0 - _ratio(float(pair[end - 1, last, cont].sum()), float(node[end - 1, last]))
    if start > 0 and first_prefix not in {"B", "S"}:  # nor the previous one run into it
        into = by_type.get((etype, "BI"), [])
        prob *= 1.0 - _ratio(
            float(pair[start - 1, into, path[0]].sum()), float(node[start, path[0]])
        )
    return min(max(prob, 0.0), 1.0)


class SpanGate(TokenScoreGate):
    """1 - P(exactly this span with this type), from the CRF's transition marginals."""

    Options = ThresholdOptions
    needs_extras = ("transition_marginals",)

    def token_uncertainty(self, pred: TaggerPrediction, probs: np.ndarray) -> np.ndarray:
        if "O" not in pred.label_names:
            raise DataError(
                f"the span gate needs an 'O' label; the tagger has {list(pred.label_names)}",
                where=f"uncertainty: sample {pred.sample_id}",
            )
        return np.clip(1.0 - probs[:, pred.label_names.index("O")], 0.0, 1.0)

    def entity_score(
        self, pred: TaggerPrediction, u: np.ndarray, p_tag: np.ndarray, start: int, end: int
    ) -> tuple[float, float]:
        chains = self._chains(pred)
        p = float(
            np.mean(
                [
                    span_probability(node, pair, pred.label_names, pred.tags, start, end)
                    for node, pair in chains
                ]
            )
        )
        return 1.0 - p, p

    @staticmethod
    def _chains(pred: TaggerPrediction) -> list[tuple[np.ndarray, np.ndarray]]:
        """One (node, transition) marginal pair per model: the members', else the tagger's."""
        members = pred.extra("member_marginals")
        member_pairs = pred.extra("member_transition_marginals")
        if members is not None and member_pairs is not None:
            return list(zip(members, member_pairs, strict=True))
        pair = pred.extra("transition_marginals")
        if pair is None:
            raise DataError(
                "the span gate needs transition marginals (the extra "
                "'transition_marginals') and the tagger gave none; use the bert_crf tagger "
                "or another gate (entropy, margin)",
                where=f"uncertainty: sample {pred.sample_id}",
            )
        return [(np.asarray(pred.marginals, dtype=np.float64), pair)]
