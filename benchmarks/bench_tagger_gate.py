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


def gate_quality(
    samples, predictions, taus: Sequence[float], budgets: Sequence[float] = (0.1, 0.2, 0.3)
) -> dict:
    gold = [{e.key for e in s.entities} for s in samples]
    out: dict = {"rows": {}, "auroc": {}, "budget_rows": []}
    for aggregate in ("mean", "max"):
        base = EntropyGate(EntropyGate.Options(threshold=0.5, aggregate=aggregate))
        decisions = base.decide(samples, predictions)
        ents = [(e, e.key in g) for d, g in zip(decisions, gold, strict=True) for e in d.entities]
        out["auroc"][aggregate] = auroc(
            [e.uncertainty for e, _ in ents], [not ok for _, ok in ents]
        )
        rows = []
        for tau in taus:
            gate = EntropyGate(EntropyGate.Options(threshold=tau, aggregate=aggregate))
            rows.append(_row(gate, samples, predictions, gold, tau=tau))
        out["rows"][aggregate] = rows
    for budget in budgets:
        gate = EntropyGate(EntropyGate.Options(threshold=0.0, budget=budget))
        out["budget_rows"].append(_row(gate, samples, predictions, gold, budget=budget))
    out["tagger_f1"] = span_f1(
        gold, [{e.key for e in d.entities} for d in EntropyGate().decide(samples, predictions)]
    )["f1"]
    return out


def _row(gate: EntropyGate, samples, predictions, gold, **key) -> dict:
    decisions = gate.decide(samples, predictions)
    n_ent = sum(len(d.entities) for d in decisions)
    n_del = sum(len(d.delegated) for d in decisions)
    kept = [(e.key in g) for d, g in zip(decisions, gold, strict=True) for e in d.kept]
    # Oracle upper bound: a delegated sample comes back exactly right (gold).
    oracle = [
        g if d.delegate_sample else {e.key for e in d.entities}
        for d, g in zip(decisions, gold, strict=True)
    ]
    # Narrower oracle: only delegated entities are judged (wrong ones dropped), no recall gain.
    entity_oracle = [
        {e.key for e in d.kept} | {e.key for e in d.delegated if e.key in g}
        for d, g in zip(decisions, gold, strict=True)
    ]
    return {
        **key,
        "entities_delegated": n_del / n_ent if n_ent else 0.0,
        "samples_delegated": sum(d.delegate_sample for d in decisions) / len(decisions),
        "kept_precision": float(np.mean(kept)) if kept else None,
        "oracle_f1": span_f1(gold, oracle)["f1"],
        "entity_oracle_f1": span_f1(gold, entity_oracle)["f1"],
    }


# ----------------------------------------------------------------- estimators compared
def risk_coverage_area(uncertainty: Sequence[float], wrong: Sequence[bool]) -> float | None:
    """Area under the risk-coverage curve: keep entities most-certain first; mean error rate.

    Lower is better; a perfect ranking gives ``~ e^2/2`` for error rate ``e``, a random
    one ``~ e``.
    """
    if not len(wrong):
        return None
    order = np.argsort(np.asarray(uncertainty, dtype=float), kind="mergesort")
    errors = np.asarray(wrong, dtype=float)[order]
    return float(np.mean(np.cumsum(errors) / np.arange(1, len(errors) + 1)))


def estimator_quality(
    gate_cls,
    samples,
    predictions,
    *,
    options: dict | None = None,
    budgets: Sequence[float] = (0.1, 0.2, 0.3),
    calibrate: bool = False,
) -> dict:
    """AUROC / AURC of entity uncertainty for "wrong", and budget rows, for one gate class."""
    gold = [{e.key for e in s.entities} for s in samples]
    options = dict(options or {})
    out: dict = {"options": options}
    calibration = None

    def make(**kw):
        nonlocal calibration
        gate = gate_cls(gate_cls.Options(**{**options, **kw}))
        report = gate.calibrate(samples, predictions) if calibrate else {}
        calibration = report or calibration
        return gate

    decisions = make(threshold=0.5).decide(samples, predictions)
    ents = [
        (e.uncertainty, e.key not in g)
        for d, g in zip(decisions, gold, strict=True)
        for e in d.entities
    ]
    out["entities"] = len(ents)
    out["wrong_entities"] = sum(w for _, w in ents)
    out["auroc"] = auroc([u for u, _ in ents], [w for _, w in ents])
    out["aurc"] = risk_coverage_area([u for u, _ in ents], [w for _, w in ents])
    out["tagger_f1"] = span_f1(gold, [{e.key for e in d.entities} for d in decisions])["f1"]
    out["budget_rows"] = [
        _row(make(threshold=0.0, budget=b), samples, predictions, gold, budget=b) for b in budgets
    ]
    if calibration:
        out["calibration"] = calibration
    return out


def error_audit(
    gate,
    samples,
    predictions,
    train,
    *,
    confident_below: float = 0.1,
    min_count: int = 3,
    min_share: float = 0.8,
) -> dict:
    """Every wrong predicted entity: its uncertainty, its kind and what train says.

    Kind: ``type`` (gold has the span with another type), ``boundary`` (it
    overlaps a gold entity) or ``spurious``. ``train_agrees``: the training
    annotations label the same string (case-folded) with the predicted type at
    least ``min_count`` times and ``min_share`` of its occurrences; such errors
    are often the gold's inconsistency, which no confidence can rank, so the
    AUROC without them is reported beside the plain one.
    """
    labelled: dict[str, dict[str, int]] = {}
    for s in train:
        for e in s.entities:
            counts = labelled.setdefault(e.text.lower(), {})
            counts[e.type] = counts.get(e.type, 0) + 1
    rows, scores, wrong, agrees = [], [], [], []
    for sample, decision in zip(samples, gate.decide(samples, predictions), strict=True):
        gold = {e.key for e in sample.entities}
        for e in decision.entities:
            counts = labelled.get(e.text.lower(), {})
            total = sum(counts.values())
            agree = (
                counts.get(e.type, 0) >= min_count and counts.get(e.type, 0) >= min_share * total
            )
            scores.append(e.uncertainty)
            wrong.append(e.key not in gold)
            agrees.append(agree)
            if e.key in gold:
                continue
            same_span = [g for g in sample.entities if (g.start, g.end) == (e.start, e.end)]
            overlap = [g for g in sample.entities if g.start < e.end and e.start < g.end]
            kind = "type" if same_span else "boundary" if overlap else "spurious"
            rows.append(
                {
                    "sample": sample.id,
                    "text": e.text,
                    "type": e.type,
                    "uncertainty": e.uncertainty,
                    "kind": kind,
                    "gold_overlapping": [f"{g.text}/{g.type}" for g in overlap],
                    "train_labels": counts,
                    "train_agrees": agree,
                    "sentence": " ".join(sample.tokens),
                }
            )
    rows.sort(key=lambda r: r["uncertainty"])
    keep = [not (w and a) for w, a in zip(wrong, agrees, strict=True)]

    def summary(selected):
        out: dict = {
            "wrong": len(selected),
            "train_agrees": sum(r["train_agrees"] for r in selected),
        }
        for kind in ("type", "boundary", "spurious"):
            out[kind] = sum(r["kind"] == kind for r in selected)
        return out

    return {
        "entities": len(scores),
        "auroc": auroc(scores, wrong),
        "auroc_without_train_agreeing_errors": auroc(
            [u for u, k in zip(scores, keep, strict=True) if k],
            [w for w, k in zip(wrong, keep, strict=True) if k],
        ),
        "confident_below": confident_below,
        "all_errors": summary(rows),
        "confident_errors": summary([r for r in rows if r["uncertainty"] < confident_below]),
        "errors": rows,
    }


def _harness(description: str):
    """The harness's parser for a subcommand (shared flags; ``--out`` defaults per command).

    Imported here, not at the top: tests load this file as a module from
    outside ``benchmarks/``, where ``harness`` is not on the path.
    """
    from harness import parser

    ap = parser(description, out=None, threads=1, reps=1)
    ap.set_defaults(out=None)
    return ap


def _parse(ap):
    """Parse the subcommand's arguments, fix and print the thread count."""
    import os
    import sys

    import torch  # noqa: F401  (imported before start(), which pins its threads)
    from harness import start

    args = ap.parse_args(sys.argv[2:])
    session = start(args)
    os.environ.setdefault("REFINEG_NO_PROGRESS", "1")
    return args, session


def _errors_main() -> None:
    import json
    from pathlib import Path

    here = Path(__file__).resolve().parent
    ap = _harness("The gate's most confident errors, audited.")
    ap.add_argument("--tagger", required=True, help="saved bert_crf tagger")
    ap.add_argument(
        "--name",
        required=True,
        help="result file: runs/errors_<name>.json unless --out "
        "(git-ignored: it quotes the dev tweets)",
    )
    ap.add_argument("--gate", default="span", help="an uncertainty plugin name")
    ap.add_argument("--options", default="{}", help="the gate's options, as JSON")
    ap.add_argument("--top", type=int, default=40, help="rows printed, most confident first")
    args, session = _parse(ap)
    from refineg_bert_crf.tagger import BertCrfTagger

    from refineg_core import registry
    from refineg_core.formats import load_dataset

    twitter = args.data / "twitter-gmner"
    dev = list(load_dataset(twitter / "dev.txt").samples)
    train = list(load_dataset(twitter / "train.txt").samples)
    gate_cls = registry.load_class("uncertainty", args.gate)
    gate = gate_cls(gate_cls.Options(**json.loads(args.options)))
    doc = error_audit(gate, dev, BertCrfTagger.load(Path(args.tagger)).predict(dev), train)
    doc.update(tagger=args.tagger, gate=args.gate, options=json.loads(args.options))
    out = args.out or here.parent / "runs" / f"errors_{args.name}.json"
    session.write(doc, out)
    print(json.dumps({k: v for k, v in doc.items() if k != "errors"}, indent=1))
    print("| uncertainty | kind | predicted | gold overlapping | train labels | sentence |")
    print("|---:|---|---|---|---|---|")
    for r in doc["errors"][: args.top]:
        print(
            f"| {r['uncertainty']:.3f} | {r['kind']} | {r['text']} / {r['type']} | "
            f"{', '.join(r['gold_overlapping']) or '–'} | {r['train_labels'] or '–'} | "
            f"{r['sentence'][:90]} |"
        )


def _compare_main() -> None:
    import json
    import time
    from pathlib import Path

    here = Path(__file__).resolve().parent
    ap = _harness("Every uncertainty estimator on one dev split.")
    ap.add_argument("--tagger", required=True, help="saved bert_crf tagger (an ensemble or not)")
    ap.add_argument(
        "--name", required=True, help="result file: results/gate_<name>.json unless --out"
    )
    ap.add_argument("--mc-dropout", type=int, default=5, help="K dropout passes (0: skip)")
    ap.add_argument("--dev-limit", type=int, default=None)
    args, session = _parse(ap)
    from refineg_bert_crf.tagger import BertCrfTagger
    from refineg_gates.margin import MarginGate
    from refineg_gates.sampling import EnsembleMIGate, MCDropoutGate
    from refineg_gates.span import SpanGate
    from refineg_gates.temperature import TemperatureEntropyGate

    from refineg_core.formats import load_dataset

    dev = list(load_dataset(args.data / "twitter-gmner" / "dev.txt").samples)
    if args.dev_limit:
        dev = dev[: args.dev_limit]
    tagger = BertCrfTagger.load(Path(args.tagger))
    m = len(tagger.members)
    doc: dict = {
        "tagger": args.tagger,
        "members": m,
        "dev_sentences": len(dev),
        "mc_dropout_passes": args.mc_dropout,
        "estimators": [],
    }

    def add(label, gate_cls, preds, passes, **kw):
        t0 = time.perf_counter()
        row = estimator_quality(gate_cls, dev, preds, **kw)
        row.update(estimator=label, tagger_passes=passes, gate_seconds=time.perf_counter() - t0)
        doc["estimators"].append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "budget_rows"}), flush=True)
        print(
            "   ",
            [(r["budget"], r["oracle_f1"], r["kept_precision"]) for r in row["budget_rows"]],
            flush=True,
        )

    single = tagger.member(0)
    t0 = time.perf_counter()
    one = single.predict(dev)
    doc["single_predict_seconds"] = time.perf_counter() - t0
    prefix = "member 0" if m > 1 else "single"
    add(f"{prefix}: entropy (mean)", EntropyGate, one, 1)
    add(f"{prefix}: entropy (max)", EntropyGate, one, 1, options={"aggregate": "max"})
    add(f"{prefix}: margin (mean)", MarginGate, one, 1)
    add(f"{prefix}: margin (max)", MarginGate, one, 1, options={"aggregate": "max"})
    add(f"{prefix}: span probability", SpanGate, one, 1)
    add(f"{prefix}: temperature entropy (mean)", TemperatureEntropyGate, one, 1, calibrate=True)
    add(
        f"{prefix}: temperature entropy (max)",
        TemperatureEntropyGate,
        one,
        1,
        options={"aggregate": "max"},
        calibrate=True,
    )
    if args.mc_dropout >= 2:
        single.options = single.options.model_copy(update={"mc_dropout_samples": args.mc_dropout})
        t0 = time.perf_counter()
        mc = single.predict(dev)
        doc["mc_predict_seconds"] = time.perf_counter() - t0
        k = 1 + args.mc_dropout
        for agg in ("mean", "max"):
            add(
                f"{prefix}: MC dropout K={args.mc_dropout} MI ({agg})",
                MCDropoutGate,
                mc,
                k,
                options={"aggregate": agg},
            )
            add(
                f"{prefix}: MC dropout K={args.mc_dropout} predictive entropy ({agg})",
                MCDropoutGate,
                mc,
                k,
                options={"aggregate": agg, "score": "predictive_entropy"},
            )
    if m > 1:
        t0 = time.perf_counter()
        ens = tagger.predict(dev)
        doc["ensemble_predict_seconds"] = time.perf_counter() - t0
        add(f"ensemble of {m}: span probability (members' mean)", SpanGate, ens, m)
        for agg in ("mean", "max"):
            add(
                f"ensemble of {m}: entropy of mean marginals ({agg})",
                EntropyGate,
                ens,
                m,
                options={"aggregate": agg},
            )
            add(f"ensemble of {m}: margin ({agg})", MarginGate, ens, m, options={"aggregate": agg})
            add(
                f"ensemble of {m}: mutual information ({agg})",
                EnsembleMIGate,
                ens,
                m,
                options={"aggregate": agg},
            )
            add(
                f"ensemble of {m}: temperature entropy ({agg})",
                TemperatureEntropyGate,
                ens,
                m,
                options={"aggregate": agg},
                calibrate=True,
            )
    session.write(doc, args.out or here / "results" / f"gate_{args.name}.json")


def render_compare(doc: dict) -> str:
    """Markdown table of one ``compare`` result (AUROC, AURC, budget rows, passes)."""

    def pct(x):
        return "–" if x is None else f"{100 * x:.1f}"

    lines = [
        "| estimator | tagger passes | tagger F1 | AUROC | AURC | "
        + " | ".join(
            f"kept P / oracle F1 @{int(100 * r['budget'])}%"
            for r in doc["estimators"][0]["budget_rows"]
        )
        + " |",
        "|---|---:|---:|---:|---:|" + "---:|" * len(doc["estimators"][0]["budget_rows"]),
    ]
    for e in doc["estimators"]:
        cal = e.get("calibration", {}).get("temperature")
        name = e["estimator"] + (f" (T = {cal:.2f})" if cal else "")
        rows = " | ".join(
            f"{pct(r['kept_precision'])} / {pct(r['oracle_f1'])}" for r in e["budget_rows"]
        )
        auroc_s = "–" if e["auroc"] is None else f"{e['auroc']:.3f}"
        lines.append(
            f"| {name} | {e['tagger_passes']} | {pct(e['tagger_f1'])} | {auroc_s} | "
            f"{'–' if e['aurc'] is None else format(e['aurc'], '.4f')} | {rows} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    import sys as _sys

    if len(_sys.argv) > 1 and _sys.argv[1] == "compare":
        _compare_main()
    elif len(_sys.argv) > 1 and _sys.argv[1] == "errors":
        _errors_main()
    elif len(_sys.argv) > 2 and _sys.argv[1] == "render":
        import json as _json
        from pathlib import Path as _Path

        print(render_compare(_json.loads(_Path(_sys.argv[2]).read_text(encoding="utf-8"))))
    else:
        raise SystemExit(
            "usage: bench_tagger_gate.py compare --tagger DIR --name NAME [...] | "
            "errors --tagger DIR --name NAME [--gate span] | render results/gate_NAME.json"
        )
