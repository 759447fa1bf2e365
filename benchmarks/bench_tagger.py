"""Benchmarks of the ``bert_crf`` tagger and the ``entropy`` gate on real data.

Parts (each a sub-command; ``all`` runs them in turn, each in its own process
so peak memory is per part):

- ``twitter``: train on the full Twitter-GMNER train split, MNER F1 on dev per
  epoch, training seconds per epoch, peak RSS; then gate quality on dev.
- ``curve``: low-resource curve (100 / 500 / 1000 tweets, several seeds), with
  and without the word-shape (casing) features.
- ``ccks``: 5-fold CV on the 500 gold CCKS sentences, gold folds alone vs gold
  folds + synthetic sentences that do not mention a held-out entity name; the
  ``gold-matched`` setting is gold alone at the same optimiser steps.
- ``report``: render ``benchmarks/results/tagger.md`` from the JSON (linked from
  ``benchmarks/pages/tagger.md``).

Speed (section 4: inference back-ends vs the transformers pipeline, training
steps/s, the predict stage) lives in ``bench_tagger_speed.py``: it needs a
saved tagger and interleaves every comparison in one process.

Results go to ``benchmarks/results/tagger_<part>.json`` (+ ``.md``).
"""

from __future__ import annotations

import json
import os
import random
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from bench_tagger_gate import gate_quality
from harness import RESULTS, Session, parser, start
from refineg_bert_crf.tagger import BertCrfTagger
from refineg_bert_crf.training import span_f1

from refineg_core.formats import load_dataset
from refineg_core.labels import LabelSet, tags_to_spans

#: The shared data folder (set from ``--data`` in main).
DATA = Path("data")
TWITTER_TYPES = LabelSet(
    {"PER": "person", "LOC": "location", "ORG": "organisation", "OTHER": "other named entity"}
)
CCKS_TYPES = LabelSet(
    {t: t for t in ("vehicle", "aircraft", "vessel", "weapon", "location", "other")}
)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


#: The harness session of this process (set in main): every result goes through it.
SESSION: Session | None = None


def write(part: str, doc: dict, out: str | None = None) -> None:
    """Write a part's result (with its provenance) to ``out`` or results/tagger_<part>.json."""
    assert SESSION is not None, "main() starts the session"
    print(json.dumps({k: v for k, v in doc.items() if k != "runs"}, indent=2)[:3000])
    SESSION.write(doc, out or SESSION.args.out or RESULTS / f"tagger_{part}.json")


def evaluate(tagger: BertCrfTagger, samples) -> tuple[dict, list]:
    preds = tagger.predict(samples)
    gold = [{e.key for e in s.entities} for s in samples]
    pred = [set(tags_to_spans(p.tags).spans) for p in preds]
    return span_f1(gold, pred), preds


def opts(args, **kw) -> BertCrfTagger.Options:
    base = {
        "max_length": args.max_length,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "device": "cpu",
        "patience": None,
        "encoder": args.encoder,
    }
    if args.lr is not None:
        base["lr"] = args.lr
    base.update(kw)
    return BertCrfTagger.Options(**base)


# --------------------------------------------------------------------------- parts
def part_twitter(args) -> None:
    train = load_dataset(DATA / "twitter-gmner" / "train.txt").samples
    dev = load_dataset(DATA / "twitter-gmner" / "dev.txt").samples
    if args.train_limit:
        train = train[: args.train_limit]
    if args.dev_limit:
        dev = dev[: args.dev_limit]
    tagger = BertCrfTagger(
        opts(
            args,
            epochs=args.epochs,
            ensemble_size=args.ensemble,
            ensemble_mode=args.ensemble_mode,
            use_shape_features=not args.no_shape_features,
        ),
        TWITTER_TYPES,
    )
    started = time.perf_counter()
    report = tagger.fit(train, None if args.no_fit_dev else dev)
    fit_s = time.perf_counter() - started
    if args.save:
        tagger.save(Path(args.save))
    scores, preds = evaluate(tagger, dev)
    gate = gate_quality(dev, preds, [x / 10 for x in range(1, 10)])
    write(
        ("twitter_noshape" if args.no_shape_features else "twitter") + args.suffix,
        {
            "encoder": args.encoder or "all-minilm-l6-v2",
            "shape_features": not args.no_shape_features,
            "train_sentences": len(train),
            "dev_sentences": len(dev),
            "epochs": args.epochs,
            "lr": opts(args).lr,
            "seed": args.seed,
            "fit_seconds": fit_s,
            "seconds_per_epoch": [e["seconds"] for e in report["epochs"]],
            "dev_f1_per_epoch": [e["dev"]["f1"] for e in report["epochs"] if "dev" in e],
            "best_epoch": report["best_epoch"],
            "dev": scores,
            "gate": gate,
            "ensemble_size": args.ensemble,
            "ensemble_mode": args.ensemble_mode,
            "member_dev_f1_per_epoch": [
                [e["dev"]["f1"] for e in r["epochs"] if "dev" in e]
                for r in report.get("members", [report])
            ],
            "member_seconds_per_epoch": [
                [e["seconds"] for e in r["epochs"]] for r in report.get("members", [report])
            ],
            "peak_rss_mb": peak_rss_mb(),
        },
    )


def part_curve(args) -> None:
    train = load_dataset(DATA / "twitter-gmner" / "train.txt").samples
    dev = load_dataset(DATA / "twitter-gmner" / "dev.txt").samples
    if args.dev_limit:
        dev = dev[: args.dev_limit]
    epochs = dict(tuple(map(int, x.split(":"))) for x in args.curve_epochs.split(","))
    runs = []
    for size in [int(s) for s in args.sizes.split(",")]:
        for seed in [int(s) for s in args.seeds.split(",")]:
            subset = random.Random(seed).sample(list(train), min(size, len(train)))
            for shapes in (True, False) if size in args.ablation_sizes else (True,):
                tagger = BertCrfTagger(
                    opts(
                        args,
                        epochs=epochs[size],
                        seed=seed,
                        use_shape_features=shapes,
                        ensemble_size=args.ensemble,
                    ),
                    TWITTER_TYPES,
                )
                t0 = time.perf_counter()
                tagger.fit(subset, None)
                scores, _ = evaluate(tagger, dev)
                runs.append(
                    {
                        "size": size,
                        "seed": seed,
                        "shape_features": shapes,
                        "ensemble_size": args.ensemble,
                        "epochs": epochs[size],
                        "f1": scores["f1"],
                        "precision": scores["precision"],
                        "recall": scores["recall"],
                        "seconds": time.perf_counter() - t0,
                    }
                )
                print(runs[-1], flush=True)
    write(
        "curve" + args.suffix,
        {
            "runs": runs,
            "summary": summarise(runs, ("size", "shape_features")),
            "dev_sentences": len(dev),
            "peak_rss_mb": peak_rss_mb(),
        },
    )


def summarise(runs: list[dict], keys: tuple[str, ...]) -> list[dict]:
    groups: dict[tuple, list[float]] = {}
    for r in runs:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r["f1"])
    return [
        {
            **dict(zip(keys, k, strict=True)),
            "n": len(v),
            "mean_f1": float(np.mean(v)),
            "std_f1": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
            "min_f1": float(min(v)),
            "max_f1": float(max(v)),
        }
        for k, v in groups.items()
    ]


def _name_pattern(names: set[str]) -> re.Pattern | None:
    parts = sorted(
        {r"\s+".join(map(re.escape, n.split())) for n in names if n.strip()}, key=len, reverse=True
    )
    if not parts:
        return None
    return re.compile(r"(?<!\w)(?:" + "|".join(parts) + r")(?!\w)", re.IGNORECASE)


def _repeat_to(samples: list, n: int, rng: random.Random) -> list:
    """``samples`` repeated to exactly ``n`` items: whole copies, then a random remainder.

    Trained for the same epochs, a gold set stretched to the size of gold +
    synthetic gets the same optimiser steps and learning-rate schedule.
    """
    whole, rest = divmod(n, len(samples))
    return samples * whole + rng.sample(samples, rest)


def part_ccks(args) -> None:
    gold = list(load_dataset(DATA / "ccks-aug" / "gold-500.conll").samples)
    synth_all = load_dataset(DATA / "ccks-aug" / "synthetic-10k.conll").samples
    seen, synth = set(), []
    for s in synth_all:  # the file has ~400 duplicate sentences
        if s.text not in seen:
            seen.add(s.text)
            synth.append(s)
    order = list(range(len(gold)))
    random.Random(args.seed).shuffle(order)
    folds = [order[k :: args.folds] for k in range(args.folds)]
    fold_ids = args.fold_ids if args.fold_ids is not None else list(range(args.folds))
    if not set(fold_ids) <= set(range(args.folds)):
        raise SystemExit(f"--fold-ids {fold_ids} outside 0..{args.folds - 1}")
    wanted = args.settings.split(",")
    runs: list[dict] = []
    skipped: list[dict] = []
    for k in fold_ids:
        held = set(folds[k])
        test = [gold[i] for i in folds[k]]
        train = [gold[i] for i in order if i not in held]
        pattern = _name_pattern({e.text for s in test for e in s.entities})
        clean = [s for s in synth if pattern is None or not pattern.search(s.text)]
        if args.synthetic_with_entities:  # drop the flawed untagged sentences (see data README)
            clean = [s for s in clean if s.entities]
        pools = {
            "gold+synthetic": clean,
            "gold+synthetic-with-entities": [s for s in clean if s.entities],
        }
        jobs = [("gold", train, args.gold_epochs, 0)] if "gold" in wanted else []
        for size in args.synthetic_size:
            ep = _epochs_for(args.synth_epochs, size)
            mixes = []
            for setting, pool in pools.items():
                if setting not in wanted:
                    continue
                if len(pool) < size:  # a smaller run under this size's name would mislead
                    skipped.append({"fold": k, "setting": setting, "size": size, "pool": len(pool)})
                    print(f"fold {k}: {setting} skipped, {len(pool)} < {size}", flush=True)
                    continue
                mixes.append((setting, train + random.Random(args.seed + k).sample(pool, size)))
            paired = [s for s in pools if s in wanted]
            if "gold-matched" in wanted and (mixes or not paired):
                # gold alone, stretched to the size of gold+synthetic: same steps and schedule
                rng = random.Random(f"gold-matched:{args.seed}:{k}:{size}")
                jobs.append(("gold-matched", _repeat_to(train, len(train) + size, rng), ep, size))
            jobs += [(setting, data, ep, size) for setting, data in mixes]
        for setting, data, ep, size in jobs:
            tagger = BertCrfTagger(opts(args, epochs=ep, seed=args.seed), CCKS_TYPES)
            t0 = time.perf_counter()
            fit = tagger.fit(data, None)
            scores, _ = evaluate(tagger, test)
            runs.append(
                {
                    "fold": k,
                    "setting": setting,
                    "synthetic_requested": size,
                    "synthetic_used": len(data) - len(train) if "synthetic" in setting else 0,
                    "train_sentences": len(data),
                    "distinct_train_sentences": len({s.text for s in data}),
                    "synthetic_available": len(pools["gold+synthetic-with-entities"])
                    if setting == "gold+synthetic-with-entities"
                    else len(clean),
                    "synthetic_removed_for_leakage": len(synth) - len(clean),
                    "epochs": ep,
                    "steps": fit["steps"],
                    "f1": scores["f1"],
                    "precision": scores["precision"],
                    "recall": scores["recall"],
                    "tp": scores["tp"],
                    "gold": scores["gold"],
                    "pred": scores["pred"],
                    "seconds": time.perf_counter() - t0,
                }
            )
            print(runs[-1], flush=True)
            _write_ccks(args, runs, skipped, synth)  # after every run: a cut grid keeps its folds


def _epochs_for(spec: int | dict[int, int], size: int) -> int:
    if isinstance(spec, int):
        return spec
    if size not in spec:
        raise SystemExit(f"--synth-epochs names no epochs for synthetic size {size}")
    return spec[size]


def _write_ccks(args, runs: list[dict], skipped: list[dict], synth: list) -> None:
    keys = ("setting", "synthetic_requested")
    many = len(args.synthetic_size) > 1  # one size: pooled keys as before (the report reads them)
    pooled = {}
    for key in sorted({tuple(r[x] for x in keys) for r in runs}):
        rs = [r for r in runs if tuple(r[x] for x in keys) == key]
        tp, g, p = (sum(r[x] for r in rs) for x in ("tp", "gold", "pred"))
        prec, rec = (tp / p if p else 0.0), (tp / g if g else 0.0)
        pooled[f"{key[0]}@{key[1]}" if many and key[1] else key[0]] = {
            "micro_f1": 2 * prec * rec / (prec + rec) if prec + rec else 0.0,
            "precision": prec,
            "recall": rec,
            "folds": len(rs),
        }
    doc = {
        "runs": runs,
        "skipped": skipped,
        "summary": summarise(runs, keys),
        "pooled": pooled,
        "synthetic_with_entities_only": args.synthetic_with_entities,
        "synthetic_unique": len(synth),
        "synthetic_size": args.synthetic_size
        if len(args.synthetic_size) > 1
        else args.synthetic_size[0],
        "folds": args.folds,
        "fold_ids": sorted({r["fold"] for r in runs}),
        "batch_size": args.batch_size,
        "peak_rss_mb": peak_rss_mb(),
    }
    write("ccks" + args.suffix, doc, args.out)


# --------------------------------------------------------------------------- report
def part_report(_args) -> None:
    docs = {
        p: json.loads((RESULTS / f"tagger_{p}.json").read_text())
        for p in (
            "twitter",
            "twitter_noshape",
            "curve",
            "ccks",
            "speed_quality",
            "speed_inference",
            "speed_train",
            "speed_stage",
        )
        if (RESULTS / f"tagger_{p}.json").exists()
    }
    speed_notes = RESULTS / "tagger_speed_notes.md"  # hand-written reading of section 4
    if speed_notes.exists():
        docs["speed_notes"] = speed_notes.read_text(encoding="utf-8")
    from bench_tagger_report import render

    docs["ccks_variants"] = [
        json.loads(p.read_text()) for p in sorted(RESULTS.glob("tagger_ccks*.json"))
    ]
    text = render(docs)
    notes = RESULTS / "tagger_notes.md"  # hand-written reading of the numbers, if any
    if notes.exists():
        text = text.rstrip() + "\n\n" + notes.read_text(encoding="utf-8").strip() + "\n"
    (RESULTS / "tagger.md").write_text(text, encoding="utf-8")
    # the current numbers live on benchmarks/pages/tagger.md (a hand-kept table that
    # links this file); RESULTS.md is an index and is no longer rewritten here
    print(text)


def main() -> None:
    ap = parser(__doc__, out=None, threads=2, reps=1, seed=1)
    ap.set_defaults(out=None)  # default: results/tagger_<part>.json
    ap.add_argument("part", choices=["twitter", "curve", "ccks", "report", "all"])
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument(
        "--lr", type=float, default=None, help="encoder learning rate (default: the tagger's, 1e-4)"
    )
    ap.add_argument("--epochs", type=int, default=3, help="twitter: epochs on the full split")
    ap.add_argument(
        "--no-shape-features",
        action="store_true",
        help="twitter: ablation without the word-shape (casing) features",
    )
    ap.add_argument("--train-limit", type=int, default=None, help="twitter: first N tweets only")
    ap.add_argument("--dev-limit", type=int, default=None, help="twitter/curve: first N dev tweets")
    ap.add_argument(
        "--no-fit-dev",
        action="store_true",
        help="twitter: no dev evaluation during fit (the last epoch is kept)",
    )
    ap.add_argument("--sizes", default="100,500,1000")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument(
        "--curve-epochs", default="100:10,500:5,1000:4", help="size:epochs pairs for the curve"
    )
    ap.add_argument(
        "--ablation-sizes",
        default="500,1000",
        type=lambda s: {int(x) for x in s.split(",") if x},
        help="curve sizes also trained without shape features",
    )
    ap.add_argument(
        "--suffix", default="", help="twitter/ccks: suffix of the result file (variants)"
    )
    ap.add_argument(
        "--encoder",
        default=None,
        help="encoder name (all-minilm-l6-v2, all-mpnet-base-v2) or local folder",
    )
    ap.add_argument("--save", default=None, help="twitter: save the trained tagger here")
    ap.add_argument(
        "--ensemble",
        type=int,
        default=1,
        help="twitter/curve: ensemble members (seeds seed, seed+1, ...)",
    )
    ap.add_argument(
        "--ensemble-mode",
        choices=["seeds", "snapshots"],
        default="seeds",
        help="twitter: members from seeds, or the last --ensemble epochs of one run",
    )
    ap.add_argument(
        "--settings",
        default="gold,gold+synthetic",
        help="ccks: which settings to train (comma-separated): gold (--gold-epochs); "
        "gold+synthetic, gold+synthetic-with-entities (only synthetic sentences that have "
        "an entity) and gold-matched (all --synth-epochs; gold-matched = the gold sentences "
        "repeated to the size of gold+synthetic: same optimiser steps and lr schedule)",
    )
    ap.add_argument(
        "--synthetic-with-entities",
        action="store_true",
        help="ccks: use only synthetic sentences that have at least one entity",
    )
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument(
        "--fold-ids",
        default=None,
        type=lambda s: [int(x) for x in s.split(",") if x],
        help="ccks: train and test only these folds of the --folds split (e.g. 0,1,2)",
    )
    ap.add_argument("--gold-epochs", type=int, default=8)
    ap.add_argument(
        "--synth-epochs",
        default=3,
        type=lambda s: dict(map(int, x.split(":")) for x in s.split(",")) if ":" in s else int(s),
        help="ccks: epochs of gold+synthetic and gold-matched runs, or size:epochs pairs",
    )
    ap.add_argument(
        "--synthetic-size",
        default=[1200],
        type=lambda s: [int(x) for x in s.split(",") if x],
        help="ccks: synthetic sentences sampled per fold after the leakage filter "
        "(comma-separated sizes: one gold+synthetic run per size)",
    )
    args = ap.parse_args()
    global SESSION, DATA
    SESSION = start(args)  # fixes torch's threads (torch is imported above)
    DATA = args.data
    os.environ.setdefault("REFINEG_NO_PROGRESS", "1")
    if args.part == "all":
        rest = sys.argv[2:]
        for part in ("twitter", "curve", "ccks", "report"):
            subprocess.run([sys.executable, __file__, part, *rest], check=True)
        return
    {"twitter": part_twitter, "curve": part_curve, "ccks": part_ccks, "report": part_report}[
        args.part
    ](args)


if __name__ == "__main__":
    main()
