"""The labeling benchmark's bookkeeping (benchmarks/bench_labeling.py), without training.

Its numbers decide whether uncertainty selection meets issue 21's goal, so the parts
that turn records into that verdict, the round schedule and the check that the
diversity step really spreads its batch are tested here; the training itself is the
real ``bert_crf`` and runs only in the benchmark.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from refineg_labeling.selection import choose

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    """benchmarks/bench_labeling.py as a module (it imports ``_common`` from its folder,
    as it does when run as a script)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(
            "bench_labeling", BENCHMARKS / "bench_labeling.py"
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


def test_rounds_parse_and_refuse_a_schedule_that_does_not_grow(bench):
    assert bench.parse_rounds("100,200,300,800,1600") == (100, 200, 300, 800, 1600)
    for bad in ("100", "100,100,200", "200,100", "0,100", "100,x"):
        with pytest.raises(argparse.ArgumentTypeError, match="--rounds"):
            bench.parse_rounds(bad)


def _rec(strategy, seed, labels, f1):
    return {"strategy": strategy, "seed": seed, "labels": labels, "f1": f1}


def test_summary_compares_with_random_at_the_last_round_of_the_schedule(bench):
    rounds = (100, 200, 300, 400, 1600)
    recs = {}
    for seed in (1, 2):
        recs[("start", seed, 100)] = _rec("start", seed, 100, 0.50)
        for size, f_r, f_m in ((200, 0.55, 0.60), (300, 0.58, 0.66), (400, 0.60, 0.71)):
            recs[("random", seed, size)] = _rec("random", seed, size, f_r)
            recs[("mnlp", seed, size)] = _rec("mnlp", seed, size, f_m)
        recs[("random", seed, 1600)] = _rec("random", seed, 1600, 0.70)
    out = bench.summarise(recs, ["random", "mnlp"], rounds)
    assert set(out["table"]["mnlp"]) == {"100", "200", "300", "400"}
    assert out["table"]["mnlp"]["100"]["mean"] == 50.0  # the shared start round
    assert out["table"]["mnlp"]["300"]["runs"] == [66.0, 66.0]
    goal = out["goal"]["mnlp"]
    assert goal["random_1600_mean"] == 70.0
    assert goal["fewest_labels_reaching_it"] == 400
    assert goal["reached_with_at_most_800"] is True
    # one seed short of random's count: not a reached mean
    del recs[("mnlp", 2, 400)]
    goal = bench.summarise(recs, ["random", "mnlp"], rounds)["goal"]["mnlp"]
    assert goal["fewest_labels_reaching_it"] is None
    assert goal["reached_with_at_most_800"] is False


def _unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_diversity_facts_show_a_batch_spread_past_near_duplicates(bench):
    # the six most uncertain posts are three pairs of near-duplicates (retweets); the
    # diversity batch of three takes one of each pair, the plain top three two of one
    rng = np.random.default_rng(0)
    base = _unit(rng.normal(size=(3, 16)))
    dup = _unit(base + 0.01 * rng.normal(size=(3, 16)))
    rest = _unit(rng.normal(size=(6, 16)))
    vectors = np.vstack([base[0], dup[0], base[1], dup[1], base[2], dup[2], rest])
    ids = [f"p{i}" for i in range(len(vectors))]
    scores = [0.9, 0.89, 0.88, 0.87, 0.86, 0.85] + [0.1] * 6
    chosen = choose("uncertainty+diversity", ids, 3, scores=scores, vectors=vectors)
    facts = bench.diversity_facts(ids, scores, vectors, chosen)
    assert sorted(int(c[1:]) // 2 for c in chosen) == [0, 1, 2]
    assert facts["shared_with_top"] == pytest.approx(2 / 3, abs=1e-3)
    # top three: two near-duplicates (nearest distance ~0) and one far post (~1)
    assert facts["spread_top"] < 0.4 < 0.6 < facts["spread_chosen"]
    assert facts["mean_score_chosen"] < facts["mean_score_top"]
    assert bench.spread(vectors[:1]) == 0.0


def test_mnlp_diversity_is_the_diversity_strategy_with_the_mnlp_score(bench):
    assert bench.CHOOSE["mnlp+diversity"] == ("uncertainty+diversity", "mnlp")
    assert "mnlp+diversity" in bench.STRATEGIES
    # mnlp+kcenter: the same candidates, k-center without the uncertainty weights
    assert bench.CHOOSE["mnlp+kcenter"] == bench.CHOOSE["mnlp+diversity"]
    assert {"mnlp+kcenter"} == bench.UNWEIGHTED


def test_every_benchmark_score_is_a_shipped_select_score(bench):
    # the benchmark measures what `refineg select --score` runs, nothing of its own
    from refineg_labeling.selection import SCORES, STRATEGIES, TAGGER_SCORE

    assert set(bench.CHOOSE) == set(bench.STRATEGIES)
    for how, score in bench.CHOOSE.values():
        assert how in STRATEGIES and (score is None or score in SCORES)
    assert bench.CHOOSE["lc"] == ("uncertainty", "lc")
    assert bench.CHOOSE["tte"] == ("uncertainty", "tte")
    assert set(TAGGER_SCORE) == set(SCORES) - {"max"}


def test_the_training_precision_reaches_the_tagger(bench):
    # fp32 reproduces the rounds run before bf16 became bert_crf's default; auto is today's
    args = argparse.Namespace(batch_size=16, train_precision="fp32")
    opts = bench.tagger_options(args, 3, 7)
    assert (opts.train_precision, opts.epochs, opts.seed, opts.batch_size) == ("fp32", 3, 7, 16)
    assert opts.patience is None
    assert bench.tagger_options(argparse.Namespace(batch_size=32), 1, 1).train_precision == "auto"
