"""Choosing posts to label, and the Label Studio task/export round trip (no server)."""

from __future__ import annotations

import copy
import json

import attrs
import numpy as np
import pytest
from refineg_labeling.labelstudio import import_export, labeling_config, to_task
from refineg_labeling.selection import (
    choose,
    k_center_greedy,
    lc_uncertainty,
    mnlp_uncertainty,
    path_log_probability,
    sample_uncertainty,
    total_token_entropy,
)

from refineg_core.labels import LabelSet
from refineg_core.types import Box, Entity, GateDecision, ImageRef, Sample, SampleResult

LABELS = LabelSet({"PER": "person", "LOC": "location", "ORG": "org", "OTHER": "other"})


# ------------------------------------------------------------------- selection
def test_sample_uncertainty_is_the_worst_entity_or_the_missed_score():
    e1 = Entity(0, 1, "PER", "a", uncertainty=0.2)
    e2 = Entity(2, 3, "LOC", "b", uncertainty=0.7)
    assert sample_uncertainty(GateDecision("x", (e1,), (e2,), 0.5, True)) == 0.7
    assert sample_uncertainty(GateDecision("y", (e1,), (), 0.9, True)) == 0.9
    assert sample_uncertainty(GateDecision("z", (), (), 0.0, False)) == 0.0


def test_uncertainty_picks_the_most_uncertain_and_never_an_excluded_post():
    ids = [f"p{i}" for i in range(10)]
    scores = [i / 10 for i in range(10)]
    got = choose("uncertainty", ids, 3, scores=scores, exclude={"p9"})
    assert got == ["p8", "p7", "p6"]
    rand = choose("random", ids, 9, exclude={"p0", "p5"}, seed=3)
    assert len(rand) == 8 and set(rand) == set(ids) - {"p0", "p5"}
    assert choose("random", ids, 9, exclude={"p0", "p5"}, seed=3) == rand  # seeded


def test_diversity_skips_near_duplicates_of_an_uncertain_post():
    # p0..p2 are the same text (a retweet) and the most uncertain; p3 is different.
    ids = ["p0", "p1", "p2", "p3", "p4"]
    scores = [0.9, 0.89, 0.88, 0.5, 0.1]
    v = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [0.7, 0.7]], dtype=float)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    assert choose("uncertainty", ids, 2, scores=scores) == ["p0", "p1"]
    spread = choose("uncertainty+diversity", ids, 2, scores=scores, vectors=v)
    assert spread[0] == "p0" and spread[1] == "p3"


def test_unweighted_diversity_takes_the_farthest_post_not_the_more_uncertain_one():
    # among the 3n = 6 most uncertain: p1 is fairly far and very uncertain, p5 is the
    # farthest from p0 but barely uncertain; weighting prefers p1, plain k-center p5
    ids = [f"p{i}" for i in range(7)]
    scores = [0.9, 0.8, 0.3, 0.3, 0.3, 0.1, 0.05]
    v = np.array(
        [[1, 0], [0.6, 0.8], [1, 0.05], [1, 0.05], [1, 0.05], [-1, 0.05], [-1, 0]],
        dtype=float,
    )
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    assert choose("uncertainty+diversity", ids, 2, scores=scores, vectors=v) == ["p0", "p1"]
    plain = choose("uncertainty+diversity", ids, 2, scores=scores, vectors=v, weighted=False)
    assert plain == ["p0", "p5"]  # p6 is farther still, but not among the 6 most uncertain


def _crf_prediction(n_tokens: int, seed: int):
    """A real CRF (random transitions, BIO constraints) on random emissions: its
    Viterbi path as a TaggerPrediction with forward-backward marginals, and the
    CRF's own log P(path) (score minus log Z) to check against."""
    import torch
    from refineg_bert_crf.crf import CRF, allowed_transitions

    from refineg_core.types import TaggerPrediction

    names = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
    gen = torch.Generator().manual_seed(seed)
    crf = CRF(len(names), allowed_transitions(names, "BIO")).double()
    with torch.no_grad():
        crf.transitions.copy_(torch.randn(len(names), len(names), generator=gen))
        crf.start_transitions.copy_(torch.randn(len(names), generator=gen))
    emissions = torch.randn(1, n_tokens, len(names), generator=gen, dtype=torch.float64) * 2
    mask = torch.ones(1, n_tokens, dtype=torch.bool)
    path = crf.viterbi(emissions, mask)[0]
    with torch.no_grad():
        node, pair = crf.posteriors(emissions, mask)
        truth = crf.log_likelihood(emissions, torch.tensor([path]), mask).item()
    pred = TaggerPrediction(
        "s",
        tuple(names[t] for t in path),
        names,
        node[0].numpy(),
        extras={"transition_marginals": pair[0, : n_tokens - 1].numpy()},
    )
    return pred, truth


@pytest.mark.parametrize("n_tokens", [1, 2, 7, 20])
def test_path_log_probability_is_the_crf_likelihood_of_the_decoded_path(n_tokens):
    """The chain factorisation from marginals equals score - log Z of the real CRF:
    MNLP is Shen et al.'s quantity, not an approximation of it."""
    for seed in range(3):
        pred, truth = _crf_prediction(n_tokens, seed)
        assert path_log_probability(pred) == pytest.approx(truth, abs=1e-6)
        assert mnlp_uncertainty(pred) == pytest.approx(-truth / n_tokens, abs=1e-6)


def test_mnlp_normalises_by_length_where_the_path_probability_does_not():
    """Two posts equally sure per token: the longer one has the smaller path
    probability but the same MNLP, so length alone does not rank it first."""
    from refineg_core.types import TaggerPrediction

    names = ("O", "B-PER")

    def sure(n: int) -> TaggerPrediction:  # independent tokens, P(O) = 0.9 each
        return TaggerPrediction("s", ("O",) * n, names, np.tile([0.9, 0.1], (n, 1)))

    short, long_ = sure(3), sure(30)
    assert path_log_probability(long_) < path_log_probability(short)
    assert mnlp_uncertainty(long_) == pytest.approx(mnlp_uncertainty(short))
    assert mnlp_uncertainty(short) == pytest.approx(-np.log(0.9))


def _independent(rows: list[list[float]]):
    """A prediction with independent tokens (no transition marginals): its tags are
    each token's most likely label."""
    from refineg_core.types import TaggerPrediction

    names = ("O", "B-PER")
    p = np.asarray(rows, dtype=float)
    return TaggerPrediction("s", tuple(names[int(j)] for j in p.argmax(1)), names, p)


def test_total_token_entropy_of_a_known_prediction():
    pred = _independent([[0.5, 0.5], [1.0, 0.0], [0.9, 0.1]])
    h = np.log(2) + 0.0 - (0.9 * np.log(0.9) + 0.1 * np.log(0.1))
    assert total_token_entropy(pred) == pytest.approx(h, abs=1e-12)
    assert total_token_entropy(_independent([[1.0, 0.0]] * 4)) == 0.0  # nothing doubted
    from refineg_core.types import TaggerPrediction

    empty = TaggerPrediction("e", (), ("O", "B-PER"), np.zeros((0, 2)))
    assert total_token_entropy(empty) == 0.0


@pytest.mark.parametrize("n_tokens", [1, 7, 20])
def test_lc_is_the_unnormalised_crf_path_log_probability(n_tokens):
    for seed in range(3):
        pred, truth = _crf_prediction(n_tokens, seed)
        assert lc_uncertainty(pred) == pytest.approx(-truth, abs=1e-6)
        assert lc_uncertainty(pred) == pytest.approx(n_tokens * mnlp_uncertainty(pred))


def test_per_post_scores_prefer_the_post_with_more_doubtful_tokens():
    """The budget counts posts: a 10-token post with two doubtful tokens outranks a
    3-token post with one under ``lc`` and ``tte``, though MNLP (per token) ranks the
    short one first; certain tokens add nothing to ``tte``."""
    doubt, sure = [0.6, 0.4], [0.99, 0.01]
    short = _independent([doubt, sure, sure])
    long_ = _independent([doubt, doubt] + [sure] * 8)
    assert mnlp_uncertainty(short) > mnlp_uncertainty(long_)
    assert lc_uncertainty(long_) > lc_uncertainty(short)
    assert total_token_entropy(long_) > total_token_entropy(short)
    padded = _independent([doubt, [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    assert total_token_entropy(padded) == pytest.approx(total_token_entropy(_independent([doubt])))
    ids, preds = ["short", "long"], [short, long_]
    assert choose("uncertainty", ids, 1, scores=[total_token_entropy(p) for p in preds]) == ["long"]
    assert choose("uncertainty", ids, 1, scores=[mnlp_uncertainty(p) for p in preds]) == ["short"]


def test_k_center_greedy_never_repeats_a_row():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(50, 8))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    got = k_center_greedy(v, 50)
    assert sorted(got) == list(range(50))


# -------------------------------------------------------------- label studio
def _post() -> Sample:
    tokens = ("RT", "@Obama", ":", "Lakers", "win", "in", "Los", "Angeles", "!")
    ents = (
        Entity(1, 2, "PER", "@Obama", boxes=(Box(10, 20, 110, 220),), source="tagger"),
        Entity(3, 4, "ORG", "Lakers", boxes=(), confidence=0.8, source="tagger"),
        Entity(6, 8, "LOC", "Los Angeles", boxes=None, confidence=0.6, source="tagger"),
    )
    return Sample("t1", tokens, " ".join(tokens), ImageRef("t1", None, 400, 300), ents)


def _annotated(task: dict) -> dict:
    """The task as Label Studio exports it after an annotator accepted the prediction."""
    task = copy.deepcopy(task)
    task["id"] = 7
    task["annotations"] = [{"id": 1, "result": task["predictions"][0]["result"]}]
    return task


def test_labeling_config_lists_every_type_for_spans_and_boxes():
    xml = labeling_config(LABELS)
    for t in LABELS.types:
        assert xml.count(f'<Label value="{t}"/>') == 2
    assert '<RectangleLabels name="box" toName="image"' in xml and "<Relations>" in xml


def test_export_then_import_gives_back_entities_boxes_and_not_visible():
    post = _post()
    result = SampleResult(post, post.entities)
    task = to_task(result)
    pred = task["predictions"][0]
    assert pred["model_version"] == "refineg-tagger" and pred["score"] == 0.6
    rect = next(r for r in pred["result"] if r["type"] == "rectanglelabels")
    assert rect["value"]["x"] == pytest.approx(2.5) and rect["value"]["height"] == pytest.approx(
        200 / 3
    )
    report = import_export([_annotated(task)], LABELS)
    assert report.problems == ()
    (got,) = report.samples
    assert got.id == "t1" and got.tokens == post.tokens
    assert [(e.start, e.end, e.type) for e in got.entities] == [e.key for e in post.entities]
    (box,) = got.entities[0].boxes
    assert box.as_list() == pytest.approx([10, 20, 110, 220])
    assert got.entities[1].boxes == ()  # "not visible"
    assert got.entities[2].boxes is None  # neither: region unknown, and counted
    assert report.unknown_regions == 1 and got.entities[0].source == "gold"


def _problem(mutate) -> str:
    post = _post()
    good = _annotated(to_task(SampleResult(post, post.entities)))
    bad = copy.deepcopy(good)
    bad["id"] = 8
    mutate(bad["annotations"][0]["result"])
    other = attrs.evolve(post, id="t2")
    kept = _annotated(to_task(SampleResult(other, other.entities)))
    report = import_export([bad, kept], LABELS)
    assert [s.id for s in report.samples] == ["t2"]  # the readable post is kept
    (problem,) = report.problems
    assert "id 8" in problem.task and "post t1" in problem.task
    return problem.message


def test_an_unlinked_box_is_named():
    msg = _problem(lambda res: res.remove(next(r for r in res if r["type"] == "relation")))
    assert "not linked to any entity" in msg and "e0b0" in msg


def test_a_span_off_token_boundaries_is_named():
    def cut(res):
        span = next(r for r in res if r["type"] == "labels" and r["value"]["labels"] == ["ORG"])
        span["value"]["end"] -= 2  # "Lake" of "Lakers"

    assert "does not fall on token boundaries" in _problem(cut)


def test_an_unknown_label_is_named():
    def relabel(res):
        next(r for r in res if r["type"] == "labels")["value"]["labels"] = ["PERSON"]

    assert "unknown label 'PERSON'" in _problem(relabel)


def test_a_box_of_another_type_than_its_entity_is_named():
    def retype(res):
        next(r for r in res if r["type"] == "rectanglelabels")["value"]["rectanglelabels"] = ["LOC"]

    assert "a LOC box is linked to a PER entity" in _problem(retype)


def test_spaces_around_a_selection_are_forgiven_and_unannotated_tasks_skipped():
    post = _post()
    task = _annotated(to_task(SampleResult(post, post.entities)))
    span = next(r for r in task["annotations"][0]["result"] if r["type"] == "labels")
    span["value"]["start"] -= 1  # the blank before "@Obama"
    untouched = to_task(SampleResult(attrs.evolve(post, id="t3"), ()))
    cancelled = _annotated(untouched) | {"id": 9}
    cancelled["annotations"][0]["was_cancelled"] = True
    report = import_export([task, untouched, cancelled], LABELS)
    assert report.problems == () and report.skipped == 2
    assert report.samples[0].entities[0].span == (1, 2)


def test_an_edited_text_is_refused_rather_than_misaligned():
    post = _post()
    task = _annotated(to_task(SampleResult(post, post.entities)))
    task["data"]["text"] = task["data"]["text"].replace("RT ", "")
    report = import_export([task], LABELS)
    assert report.samples == () and "data.text was changed" in report.problems[0].message


def test_real_tweets_survive_the_round_trip(few_tweets):
    train, _ = few_tweets
    tasks = [_annotated(to_task(SampleResult(s, s.entities))) for s in train]
    report = import_export(json.loads(json.dumps(tasks)), LABELS)
    assert report.problems == ()
    assert len(report.samples) == len(train)
    for before, after in zip(train, report.samples, strict=True):
        assert [e.key for e in after.entities] == [e.key for e in before.entities]
        for a, b in zip(before.entities, after.entities, strict=True):
            if a.boxes:
                assert [x.as_list() for x in b.boxes] == [
                    pytest.approx(x.as_list(), abs=1e-6) for x in a.boxes
                ]


# ------------------------------------------------------------ refineg select
@pytest.mark.slow
def test_select_command_ranks_by_the_gate_and_skips_labeled_posts(few_tweets, tmp_path):
    """A real tiny bert_crf run: every strategy writes its own batch, none repeats a
    post of data.train or of an earlier batch, uncertainty comes out ranked."""
    import textwrap

    from refineg_core.formats import load_dataset
    from refineg_core.formats.native import read_results, write_jsonl
    from refineg_core.testing import run_cli

    train, more = few_tweets
    train_file, pool_file = tmp_path / "train.jsonl", tmp_path / "pool.jsonl"
    write_jsonl(train, train_file)
    pool = [*train[:8], *[s for s in more if s.tokens]]
    write_jsonl(pool, pool_file)
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        textwrap.dedent(f"""\
            run_dir = "{tmp_path / "run"}"
            [labels]
            PER = "person"
            LOC = "location"
            ORG = "organisation"
            OTHER = "other"
            [data.train]
            path = "{train_file}"
            format = "jsonl"
            [tagger.options]
            epochs = 1
            batch_size = 8
            max_length = 64
            device = "cpu"
            [uncertainty]
            plugin = "span"
        """),
        encoding="utf-8",
    )
    assert run_cli(["train", "-c", str(cfg)]).code == 0
    out = tmp_path / "batches"
    seen = {s.id for s in train}
    runs = (  # 11 unlabeled posts in the pool: 3 + 2 + 2 + 2 + 2
        ("uncertainty", "max", 3),
        ("uncertainty+diversity", "max", 2),
        ("random", "max", 2),
        ("uncertainty", "mnlp", 2),
        ("uncertainty", "tte", 2),
    )
    for k, (strategy, score, n) in enumerate(runs, 1):
        args = ["select", "-c", str(cfg), "--pool", str(pool_file), "--n", str(n)]
        res = run_cli([*args, "--strategy", strategy, "--score", score, "--out", str(out)])
        assert res.code == 0, res.stderr
        batch = read_results(out / f"batch-{k:03d}.jsonl")
        assert len(batch) == n and not {r.id for r in batch} & seen
        assert all(r.gate is not None for r in batch)  # the tagger's pre-annotations
        if strategy == "uncertainty":
            how = [r.sample.meta["selection"] for r in batch]
            assert {h["score"] for h in how} == {score}
            u = [h["uncertainty"] for h in how]
            assert u == sorted(u, reverse=True) and all(x > 0 for x in u)
        seen |= {r.id for r in batch}
    assert len(seen - {s.id for s in train}) == 11  # five batches, no post twice
    assert {s.id for s in load_dataset(pool_file, "jsonl").samples} >= seen - {s.id for s in train}


def test_select_ranks_by_lc_unless_told_otherwise():
    # the default follows the labeling benchmark's fourth round (lc ahead of mnlp at
    # 300-800 labels over 6 seeds); every shipped score is accepted
    import argparse

    from refineg_labeling.hooks import refineg_add_commands
    from refineg_labeling.selection import SCORES

    parser = argparse.ArgumentParser()
    refineg_add_commands(parser.add_subparsers(dest="command"))
    base = ["select", "-c", "c.toml", "--pool", "pool.jsonl"]
    assert parser.parse_args(base).score == "lc"
    for score in SCORES:
        assert parser.parse_args([*base, "--score", score]).score == score
