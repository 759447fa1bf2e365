"""Simulated labeling loop on Twitter-GMNER: is choosing posts by uncertainty worth it?

The train split is the unlabeled pool; a post's gold labels are revealed when it is
chosen. Each seed starts from the same 100 random posts for every strategy, then
rounds grow the labeled set to 200, 400, 800 and 1,600 posts, choosing with
``refineg_labeling.selection.choose`` (the code ``refineg select`` runs): the gate is
the shipped config's ``span`` gate, the embeddings the clip_similarity selector's text
encoder (MiniLM); ``mnlp`` is ``uncertainty`` ranked by Shen et al.'s MNLP
(``refineg select --score mnlp``) and ``mnlp+diversity`` its
``uncertainty+diversity`` (each record's ``selection`` says how far the diversity
batch spread against the plain top N: ``diversity_facts``); ``lc`` and ``tte`` are
``uncertainty`` ranked by ``--score lc`` / ``--score tte`` (per-post scores, not
divided by length). ``--rounds`` sets the
schedule (default 100, 200, 400, 800, 1,600; smaller acquisition steps add rounds,
and one training per round, for every strategy alike). After each round a fresh
MiniLM ``bert_crf`` tagger is trained on the labeled posts (same epochs for every
strategy, see ``epochs_for``), or with ``--warm-steps`` the previous round's tagger is
fine-tuned on them, and scored on dev (MNER F1).

Expensive on a shared CPU, so:

- resumable: every finished (strategy, seed, round) is appended to
  ``records-s<seed>.jsonl`` in ``--work`` (with the ids chosen for the next round),
  and a rerun skips it; seeds can run as parallel processes (``--seeds 2``);
- round-major: every strategy and seed finishes round r before any starts round r+1,
  so a run stopped early still compares all strategies at the rounds it reached;
- candidates: an uncertainty round scores a seeded random subset of the unlabeled
  pool (``--candidates``, at least 4 x the posts to pick), the usual subsampled-pool
  practice; 0 scores the whole pool.

``python benchmarks/bench_labeling.py run`` runs/resumes; ``... report`` rewrites
``results/labeling.json`` and ``results/labeling_curve.png`` from the records.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
from _common import DATA, ROOT, machine, twitter_labels

from refineg_core.runstore import atomic_write

RESULTS = ROOT / "benchmarks" / "results"
ROUNDS = (100, 200, 400, 800, 1600)
STRATEGIES = (
    "random",
    "uncertainty",
    "uncertainty+diversity",
    "mnlp",
    "mnlp+diversity",
    "mnlp+kcenter",
    "lc",
    "tte",
)
#: benchmark strategy -> (``choose`` strategy, sample score of ``refineg select --score``)
CHOOSE = {
    "random": ("random", None),
    "uncertainty": ("uncertainty", "max"),
    "uncertainty+diversity": ("uncertainty+diversity", "max"),
    "mnlp": ("uncertainty", "mnlp"),
    "mnlp+diversity": ("uncertainty+diversity", "mnlp"),
    "mnlp+kcenter": ("uncertainty+diversity", "mnlp"),  # unweighted: see UNWEIGHTED
    "lc": ("uncertainty", "lc"),
    "tte": ("uncertainty", "tte"),
}
#: diversity strategies whose k-center ignores the uncertainty (``choose(weighted=False)``)
UNWEIGHTED = frozenset({"mnlp+kcenter"})
START = "start"  # the shared first round (the same 100 random posts for every strategy)


def parse_rounds(text: str) -> tuple[int, ...]:
    """``--rounds``: the labeled-set sizes, strictly increasing from the start round's.
    Smaller acquisition steps (``100,200,300,...``) change the training schedule too
    (one fine-tuning per round), so every strategy compared must run the same list."""
    try:
        rounds = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--rounds {text!r}: not a list of integers") from None
    if len(rounds) < 2 or rounds[0] < 1 or any(b <= a for a, b in itertools.pairwise(rounds)):
        raise argparse.ArgumentTypeError(
            f"--rounds {text!r}: need at least two strictly increasing sizes >= 1"
        )
    return rounds


def spread(vectors: np.ndarray) -> float:
    """Mean cosine distance from each row to its nearest other row (rows L2-normalised):
    how far apart a chosen batch is; near 0 when it holds near-duplicates."""
    v = np.asarray(vectors, dtype=np.float64)
    if len(v) < 2:
        return 0.0
    dist = 1.0 - v @ v.T
    np.fill_diagonal(dist, np.inf)
    return float(dist.min(axis=1).mean())


def diversity_facts(
    ids: list[str], scores: list[float], vectors: np.ndarray, chosen: list[str]
) -> dict:
    """Did ``uncertainty+diversity`` spread its batch? Its batch against the plain top
    ``len(chosen)`` by uncertainty of the same candidates: the share they have in
    common, each batch's :func:`spread` and mean score (the price in uncertainty)."""
    k = len(chosen)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    top = [int(j) for j in order[:k]]
    index = {sid: j for j, sid in enumerate(ids)}
    picked = [index[c] for c in chosen]
    s = np.asarray(scores, dtype=np.float64)
    return {
        "shared_with_top": round(len(set(top) & set(picked)) / k, 3) if k else 0.0,
        "spread_chosen": round(spread(vectors[picked]), 4),
        "spread_top": round(spread(vectors[top]), 4),
        "mean_score_chosen": round(float(s[picked].mean()), 4) if k else 0.0,
        "mean_score_top": round(float(s[top].mean()), 4) if k else 0.0,
    }


def epochs_for(size: int, *, epochs: int, min_steps: int, batch_size: int) -> int:
    """``epochs``, raised so that a small set still gets ``min_steps`` optimizer steps
    (100 posts x 2 epochs would be 8 steps). Depends on the size only, never on the
    strategy, so every strategy trains alike at the same number of labels."""
    steps_per_epoch = math.ceil(size / batch_size)
    return max(epochs, math.ceil(min_steps / steps_per_epoch))


def tagger_options(args: argparse.Namespace, epochs: int, seed: int):
    """The fresh tagger's options: fixed epochs, no early stopping, CPU, and the
    training precision of ``--train-precision`` (``auto`` is bf16 on CPUs with
    AVX512_BF16/AMX: the default since e04a901; ``fp32`` reproduces the rounds run
    before it to the last digit)."""
    from refineg_bert_crf.tagger import BertCrfTagger

    return BertCrfTagger.Options(
        epochs=epochs,
        seed=seed,
        device="cpu",
        patience=None,
        batch_size=args.batch_size,
        train_precision=getattr(args, "train_precision", "auto"),
    )


# --------------------------------------------------------------------- records
def read_records(work: Path) -> dict[tuple[str, int, int], dict]:
    """Every finished (strategy, seed, round) in ``work`` (one file per seed, so seeds
    can run as parallel processes)."""
    out: dict[tuple[str, int, int], dict] = {}
    for path in sorted(work.glob("records-s*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                rec = json.loads(line)
                out[(rec["strategy"], rec["seed"], rec["labels"])] = rec
    return out


def append_record(path: Path, rec: dict) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(rec) + "\n")
        f.flush()
        os.fsync(f.fileno())


# ----------------------------------------------------------------------- work
class Loop:
    """The data, encoder and gate shared by every round."""

    def __init__(self, args: argparse.Namespace) -> None:
        from refineg_core.formats.loader import load_dataset

        self.args = args
        self.labels = twitter_labels()
        twitter = DATA / "twitter-gmner"
        if not (twitter / "train.txt").is_file():
            sys.exit(f"Twitter-GMNER is not at {twitter} (set REFINEG_DATA)")
        self.pool = list(load_dataset(twitter / "train.txt", "twitter-gmner").samples)
        dev = list(load_dataset(twitter / "dev.txt", "twitter-gmner").samples)
        self.dev = dev[: args.dev_limit] if args.dev_limit else dev
        self.by_id = {s.id: s for s in self.pool}
        self.ids = [s.id for s in self.pool]
        self._vectors: np.ndarray | None = None
        self._scored: dict[tuple, list[float]] = {}

    def vectors(self) -> np.ndarray:
        """Pool text embeddings (the selector's text encoder), cached in --work."""
        if self._vectors is None:
            cache = Path(self.args.work) / "pool_text_vectors.npy"
            if cache.is_file():
                self._vectors = np.load(cache)
            else:
                from refineg_clip_selector.encoders import TextEncoder, default_text_model
                from refineg_clip_selector.selector import normalize_text

                enc = TextEncoder(default_text_model())
                self._vectors = enc.encode([normalize_text(s.text) for s in self.pool])
                with atomic_write(cache, binary=True) as fh:  # parallel seeds may share --work
                    np.save(fh, self._vectors)
        return self._vectors

    def train(self, ids: list[str], seed: int, warm=None):
        """A tagger trained on ``ids``: fresh, or with ``--warm-steps`` the previous
        round's tagger (``warm``) fine-tuned on all labeled posts for
        ``max(1 epoch, warm_steps steps)`` (Shen et al. trained incrementally)."""
        from refineg_bert_crf.tagger import BertCrfTagger

        self._scored = {}
        if warm is not None:
            ep = epochs_for(
                len(ids), epochs=1, min_steps=self.args.warm_steps, batch_size=self.args.batch_size
            )
            warm.options = warm.options.model_copy(update={"epochs": ep})
            warm.fit([self.by_id[i] for i in ids], None)
            return warm, ep
        ep = epochs_for(
            len(ids),
            epochs=self.args.epochs,
            min_steps=self.args.min_steps,
            batch_size=self.args.batch_size,
        )
        tagger = BertCrfTagger(tagger_options(self.args, ep, seed), self.labels)
        tagger.fit([self.by_id[i] for i in ids], None)
        return tagger, ep

    def dev_f1(self, tagger) -> dict:
        from refineg_bert_crf.training import span_f1

        from refineg_core.labels import tags_to_spans

        preds = tagger.predict(self.dev)
        gold = [{e.key for e in s.entities} for s in self.dev]
        pred = [set(tags_to_spans(p.tags).spans) for p in preds]
        return span_f1(gold, pred)

    def scores(self, tagger, candidates: list[str], kind: str) -> list[float]:
        """Sample scores ``kind`` (``max`` or a ``TAGGER_SCORE``) of ``candidates``; one
        prediction pass serves every kind (the start round picks for every strategy)."""
        from refineg_gates.span import SpanGate
        from refineg_labeling.selection import TAGGER_SCORE, sample_uncertainty

        key = (id(tagger), tuple(candidates))
        if key not in self._scored:
            samples = [self.by_id[i] for i in candidates]
            preds = tagger.predict(samples)
            gate = SpanGate(SpanGate.Options(threshold=0.0), self.labels)
            decisions = gate.decide_each(samples, preds)
            self._scored = {
                key: {
                    "max": [sample_uncertainty(d) for d in decisions],
                    **{name: [of(p) for p in preds] for name, of in TAGGER_SCORE.items()},
                }
            }
        return self._scored[key][kind]

    def next_ids(
        self, strategy: str, tagger, labeled: list[str], k: int, seed: int, rnd: int
    ) -> tuple[list[str], dict]:
        """The ``k`` posts this strategy adds after round ``rnd`` (and timing facts)."""
        from refineg_labeling.selection import choose

        rng = np.random.default_rng([seed, rnd])
        taken = set(labeled)
        how, kind = CHOOSE[strategy]
        if how == "random":
            return choose("random", self.ids, k, exclude=taken, seed=int(rng.integers(1 << 31))), {}
        unlabeled = [i for i in self.ids if i not in taken]
        want = max(self.args.candidates, 4 * k) if self.args.candidates else len(unlabeled)
        cand = list(rng.permutation(unlabeled)[: min(want, len(unlabeled))])
        t0 = time.perf_counter()
        scores = self.scores(tagger, cand, kind)
        facts = {"candidates": len(cand), "score_seconds": round(time.perf_counter() - t0, 1)}
        vectors = None
        if how == "uncertainty+diversity":
            index = {sid: j for j, sid in enumerate(self.ids)}
            vectors = self.vectors()[[index[c] for c in cand]]
        chosen = choose(
            how,
            cand,
            k,
            scores=scores,
            vectors=vectors,
            seed=seed,
            weighted=strategy not in UNWEIGHTED,
        )
        if vectors is not None:
            facts["diversity"] = diversity_facts(cand, scores, vectors, chosen)
        return chosen, facts


def run(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("REFINEG_NO_PROGRESS", "1")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    records = read_records(work)
    loop = Loop(args)
    rounds = [r for r in args.rounds if r <= args.max_labels]
    print(f"threads={torch.get_num_threads()} pool={len(loop.pool)} dev={len(loop.dev)}")
    models: dict[tuple[str, int], object] = {}  # --warm-steps: each chain's last tagger
    for ri, size in enumerate(rounds):
        if ri > 0 and args.start_only:
            break
        nxt = rounds[ri + 1] if ri + 1 < len(rounds) else None
        for seed in args.seeds:
            strategies = [START] if ri == 0 else args.strategies
            if nxt is None:
                strategies = [s for s in strategies if s in args.final_strategies]
            for strategy in strategies:
                key = (strategy, seed, size)
                if key in records:
                    continue
                if ri == 0:
                    rng = np.random.default_rng(seed)
                    labeled = list(rng.permutation(loop.ids)[:size])
                else:
                    before = (START if ri == 1 else strategy, seed, rounds[ri - 1])
                    if before not in records:
                        if ri == 1:
                            continue  # no start round yet for this seed
                        sys.exit(
                            f"{strategy}, seed {seed}: no round at {rounds[ri - 1]} labels in "
                            f"{work}: the start round there chose nothing for {strategy} (it "
                            "ran with other --strategies); use a new --work"
                        )
                    prev = records[before]
                    if (strategy if ri == 1 else "next") not in prev["next"]:
                        if ri == 1:
                            sys.exit(
                                f"{strategy}, seed {seed}: the start round in {work} ran "
                                f"without {strategy} (--strategies); use a new --work"
                            )
                        continue  # chosen without a next round (--final-strategies)
                    labeled = prev["labeled"] + prev["next"][strategy if ri == 1 else "next"]
                assert len(set(labeled)) == size, (key, len(set(labeled)))
                t0 = time.perf_counter()
                if strategy == "random" and nxt is not None and args.random_untrained:
                    tagger, ep, f1 = None, None, {"f1": None, "precision": None, "recall": None}
                else:
                    warm = None
                    if args.warm_steps and ri > 0:
                        source = START if ri == 1 else strategy
                        if (source, seed) not in models:
                            sys.exit(
                                f"--warm-steps: the {source} tagger of seed {seed} at "
                                f"{rounds[ri - 1]} labels is not in this process (a resumed "
                                "run); rerun the chain in a new --work"
                            )
                        # the start tagger goes on in every strategy: each gets its own copy
                        warm = models[(source, seed)]
                        warm = copy.deepcopy(warm) if ri == 1 else warm
                    tagger, ep = loop.train(labeled, seed, warm)
                    models[(strategy, seed)] = tagger
                    f1 = loop.dev_f1(tagger)
                train_s = time.perf_counter() - t0
                rec = {
                    "strategy": strategy,
                    "seed": seed,
                    "labels": size,
                    "epochs": ep,
                    "f1": f1["f1"],
                    "precision": f1["precision"],
                    "recall": f1["recall"],
                    "train_seconds": round(train_s, 1),
                    "labeled": labeled,
                    "next": {},
                }
                if nxt is not None:
                    going_on = [
                        s
                        for s in (args.strategies if ri == 0 else [strategy])
                        if nxt != rounds[-1] or s in args.final_strategies
                    ]
                    for strat in going_on:
                        chosen, facts = loop.next_ids(strat, tagger, labeled, nxt - size, seed, ri)
                        rec["next"][strat if ri == 0 else "next"] = chosen
                        rec.setdefault("selection", {})[strat] = facts
                rec["seconds"] = round(time.perf_counter() - t0, 1)
                append_record(work / f"records-s{seed}{args.tag}.jsonl", rec)
                records[key] = rec
                print(
                    f"{time.strftime('%H:%M:%S')} {strategy:22s} seed={seed} labels={size:5d} "
                    f"epochs={ep} F1={f1['f1']} ({rec['seconds']}s)",
                    flush=True,
                )
    report(args)


# --------------------------------------------------------------------- report
def summarise(
    records: dict[tuple[str, int, int], dict], strategies, rounds: tuple[int, ...] = ROUNDS
) -> dict:
    """Mean, sd, min and max of dev F1 per (strategy, labels); the start round counts
    for every strategy. The goal: the fewest labels with which a strategy's mean
    reaches random's at the last round (on as many seeds), and whether that is at
    most half of it."""
    table: dict[str, dict[str, dict]] = {}
    for strategy in strategies:
        rows = {}
        for size in rounds:
            owner = START if size == rounds[0] else strategy
            f1s = [
                r["f1"]
                for (s, _, n), r in sorted(records.items())
                if s == owner and n == size and r["f1"] is not None
            ]
            if f1s:
                a = np.asarray(f1s) * 100
                rows[str(size)] = {
                    "n_seeds": len(a),
                    "mean": round(float(a.mean()), 2),
                    "sd": round(float(a.std(ddof=1)) if len(a) > 1 else 0.0, 2),
                    "min": round(float(a.min()), 2),
                    "max": round(float(a.max()), 2),
                    "runs": [round(float(x), 2) for x in a],
                }
        table[strategy] = rows
    goal = {}
    last = rounds[-1]
    target = table.get("random", {}).get(str(last))
    if target:
        for strategy in strategies:
            if strategy == "random":
                continue
            reached = [
                int(n)
                for n, row in table.get(strategy, {}).items()
                if row["mean"] >= target["mean"] and row["n_seeds"] == target["n_seeds"]
            ]
            goal[strategy] = {
                f"random_{last}_mean": target["mean"],
                "fewest_labels_reaching_it": min(reached) if reached else None,
                f"reached_with_at_most_{last // 2}": bool(reached) and min(reached) <= last // 2,
            }
    return {"table": table, "goal": goal}


def plot(table: dict, out: Path, note: str = "", rounds: tuple[int, ...] = ROUNDS) -> None:
    """F1 against labels, one line per strategy, min-max over seeds shaded; a dotted
    line at random's F1 with the most labels (the goal's bar)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for strategy, rows in table.items():
        if not rows:
            continue
        xs = sorted(int(n) for n in rows)
        mean = np.array([rows[str(x)]["mean"] for x in xs])
        lo = np.array([rows[str(x)]["min"] for x in xs])
        hi = np.array([rows[str(x)]["max"] for x in xs])
        (line,) = ax.plot(xs, mean, marker="o", label=strategy)
        ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.18, linewidth=0)
    bar = table.get("random", {}).get(str(rounds[-1]))
    if bar:
        ax.axhline(bar["mean"], color="grey", linestyle=":", linewidth=1)
        ax.annotate(
            f"random @ {rounds[-1]}",
            (rounds[0], bar["mean"]),
            fontsize=7,
            color="grey",
            xytext=(0, 3),
            textcoords="offset points",
        )
    ax.set_xscale("log", base=2)
    ticks = [r for r in rounds if r in ROUNDS] or list(rounds)
    ax.set_xticks(ticks, [str(r) for r in ticks])
    ax.set_xlabel("labeled posts")
    ax.set_ylabel("dev MNER F1 (%)")
    title = "Twitter-GMNER, MiniLM bert_crf: mean over seeds, min-max shaded"
    ax.set_title(f"{title}\n{note}" if note else title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def report(args: argparse.Namespace) -> None:
    records = read_records(Path(args.work))
    ran = {s for s, _, _ in records}  # strategies of this work dir (the start round is everyone's)
    summary = summarise(records, [s for s in STRATEGIES if s in ran], args.rounds)
    slim = [{k: v for k, v in r.items() if k not in ("labeled", "next")} for r in records.values()]
    doc = {
        "command": "nice -n 5 python benchmarks/bench_labeling.py " + " ".join(sys.argv[1:]),
        "threads": args.threads,
        "machine": machine(args.threads),
        "settings": {
            "rounds": list(args.rounds),
            "seeds": args.seeds,
            "epochs": args.epochs,
            "min_steps": args.min_steps,
            "warm_steps": args.warm_steps,
            "batch_size": args.batch_size,
            "train_precision": args.train_precision,
            "dev_limit": args.dev_limit,
            "candidates": args.candidates,
            "final_strategies": args.final_strategies,
            "gate": "span (threshold 0: sample uncertainty over every entity)",
            "encoder": "all-minilm-l6-v2 (bert_crf default)",
        },
        **summary,
        "runs": slim,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = f"labeling{args.suffix}"
    (RESULTS / f"{name}.json").write_text(json.dumps(doc, indent=2), encoding="utf-8")
    note = (
        f"each round fine-tunes the previous tagger (>= {args.warm_steps} steps)"
        if args.warm_steps
        else "a fresh tagger each round"
    )
    if tuple(args.rounds) != ROUNDS:
        note += f"; rounds {','.join(str(r) for r in args.rounds)}"
    plot(summary["table"], RESULTS / f"{name}_curve.png", note, args.rounds)
    print(json.dumps({"table": summary["table"], "goal": summary["goal"]}, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=("run", "report"))
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench_labeling"))
    ap.add_argument("--seeds", default=[1, 2, 3], type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument(
        "--strategies",
        default=list(STRATEGIES),
        type=lambda s: [x for x in s.split(",") if x],
    )
    ap.add_argument(
        "--rounds",
        type=parse_rounds,
        default=ROUNDS,
        help="labeled-set sizes, comma-separated (default 100,200,400,800,1600); e.g. "
        "100,200,300,400,500,600,700,800,1600 for acquisition steps of 100 to 800",
    )
    ap.add_argument("--max-labels", type=int, default=10**9)
    ap.add_argument(
        "--final-strategies",
        default=list(STRATEGIES),
        type=lambda s: [x for x in s.split(",") if x],
        help="strategies that run the last round (the goal needs only random's)",
    )
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--min-steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument(
        "--train-precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="bert_crf train_precision (auto: bf16 where the CPU has it; fp32 reproduces "
        "results from before bf16 became the default)",
    )
    ap.add_argument("--dev-limit", type=int, default=500)
    ap.add_argument("--candidates", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--tag",
        default="",
        help="records-s<SEED><TAG>.jsonl: lets two processes share a seed (other strategies)",
    )
    ap.add_argument(
        "--random-untrained",
        action="store_true",
        help="random's rounds before the last choose without training (random needs no "
        "tagger): its last round sooner, its earlier F1 left out (f1 null)",
    )
    ap.add_argument(
        "--warm-steps",
        type=int,
        default=0,
        help="0: a fresh tagger each round; N: after the start round, fine-tune the "
        "previous round's tagger on all labeled posts for max(1 epoch, N steps) "
        "(one process must run a chain from its start)",
    )
    ap.add_argument(
        "--start-only",
        action="store_true",
        help="train the shared start round (and choose every strategy's next posts), then "
        "stop: later rounds can then run as one process per (seed, strategy) with --tag",
    )
    ap.add_argument("--suffix", default="", help="results/labeling<SUFFIX>.json and _curve.png")
    args = ap.parse_args()
    (run if args.part == "run" else report)(args)


if __name__ == "__main__":
    main()
