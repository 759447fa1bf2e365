"""Gate quality on gold data: delegation rate, kept precision, oracle F1, AUROC."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from refineg_bert_crf.training import span_f1
from refineg_entropy.gate import EntropyGate


def auroc(scores: Sequence[float], positive: Sequence[bool]) -> float | None:
    """P(score of a random positive > score of a random negative), ties count 1/2."""
    s = np.asarray(scores, dtype=float)
    y = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if not n_pos or not n_neg:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def gate_quality(samples, predictions, taus: Sequence[float],
                 budgets: Sequence[float] = (0.1, 0.2, 0.3)) -> dict:
    gold = [{e.key for e in s.entities} for s in samples]
    out: dict = {"rows": {}, "auroc": {}, "budget_rows": []}
    for aggregate in ("mean", "max"):
        base = EntropyGate(EntropyGate.Options(threshold=0.5, aggregate=aggregate))
        decisions = base.decide(samples, predictions)
        ents = [(e, e.key in g) for d, g in zip(decisions, gold, strict=True) for e in d.entities]
        out["auroc"][aggregate] = auroc([e.uncertainty for e, _ in ents],
                                        [not ok for _, ok in ents])
        rows = []
        for tau in taus:
            gate = EntropyGate(EntropyGate.Options(threshold=tau, aggregate=aggregate))
            rows.append(_row(gate, samples, predictions, gold, tau=tau))
        out["rows"][aggregate] = rows
    for budget in budgets:
        gate = EntropyGate(EntropyGate.Options(threshold=0.0, budget=budget))
        out["budget_rows"].append(_row(gate, samples, predictions, gold, budget=budget))
    out["tagger_f1"] = span_f1(gold, [{e.key for e in d.entities}
                                      for d in EntropyGate().decide(samples, predictions)])["f1"]
    return out


def _row(gate: EntropyGate, samples, predictions, gold, **key) -> dict:
    decisions = gate.decide(samples, predictions)
    n_ent = sum(len(d.entities) for d in decisions)
    n_del = sum(len(d.delegated) for d in decisions)
    kept = [(e.key in g) for d, g in zip(decisions, gold, strict=True) for e in d.kept]
    # Oracle upper bound: a delegated sample comes back exactly right (gold).
    oracle = [g if d.delegate_sample else {e.key for e in d.entities}
              for d, g in zip(decisions, gold, strict=True)]
    # Narrower oracle: only delegated entities are judged (wrong ones dropped), no recall gain.
    entity_oracle = [{e.key for e in d.kept} | {e.key for e in d.delegated if e.key in g}
                     for d, g in zip(decisions, gold, strict=True)]
    return {
        **key,
        "entities_delegated": n_del / n_ent if n_ent else 0.0,
        "samples_delegated": sum(d.delegate_sample for d in decisions) / len(decisions),
        "kept_precision": float(np.mean(kept)) if kept else None,
        "oracle_f1": span_f1(gold, oracle)["f1"],
        "entity_oracle_f1": span_f1(gold, entity_oracle)["f1"],
    }
