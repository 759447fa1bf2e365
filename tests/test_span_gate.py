"""The ``span`` gate: P(exactly this span) from CRF transition marginals.

The formula is checked against brute-force enumeration of every tag path of a
small random CRF (BIO and BIOES, boundaries inside and at the sentence's edges),
so a wrong boundary factor or a wrong chain ratio fails here.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from refineg_bert_crf.crf import CRF, allowed_transitions
from refineg_gates.decision import TokenScoreGate
from refineg_gates.span import SpanGate, span_probability

from refineg_core import registry
from refineg_core.errors import DataError
from refineg_core.labels import LabelSet, tags_to_spans
from refineg_core.types import Sample, TaggerPrediction


def _crf_case(scheme: str, n: int, seed: int, constrained: bool = True):
    names = LabelSet({"PER": "", "LOC": ""}).tags(scheme)
    g = torch.Generator().manual_seed(seed)
    crf = CRF(len(names), allowed_transitions(names, scheme) if constrained else None).double()
    with torch.no_grad():
        crf.transitions.copy_(torch.randn(len(names), len(names), generator=g, dtype=torch.double))
    em = torch.randn(1, n, len(names), generator=g, dtype=torch.double) * 1.5
    mask = torch.ones(1, n, dtype=torch.bool)
    with torch.no_grad():
        post, pair = crf.posteriors(em, mask)
        start, trans, end = crf.scores()
    # Every path's probability, by enumeration.
    paths, scores = [], []
    for path in itertools.product(range(len(names)), repeat=n):
        s = start[path[0]] + em[0, 0, path[0]] + end[path[-1]]
        for t in range(1, n):
            s = s + trans[path[t - 1], path[t]] + em[0, t, path[t]]
        paths.append(path)
        scores.append(s)
    probs = torch.softmax(torch.stack(scores), 0).numpy()
    return names, post[0].numpy(), pair[0].numpy(), paths, probs


def _exact_span_probability(names, paths, probs, start, end, etype) -> float:
    """Sum of the probabilities of the paths whose spans include (start, end, etype)."""
    total = 0.0
    for path, p in zip(paths, probs, strict=True):
        if (start, end, etype) in tags_to_spans([names[t] for t in path]).spans:
            total += p
    return total


@pytest.mark.parametrize(("scheme", "seed"), [("BIO", 0), ("BIO", 1), ("BIOES", 2), ("BIOES", 3)])
def test_span_probability_matches_enumeration(scheme, seed):
    names, node, pair, paths, probs = _crf_case(scheme, 4, seed)
    checked = 0
    # Score the spans of several likely paths: every start/end position gets covered.
    for k in np.argsort(-probs)[:12]:
        tags = tuple(names[t] for t in paths[k])
        for start, end, etype in tags_to_spans(tags).spans:
            got = span_probability(node, pair, names, tags, start, end)
            want = _exact_span_probability(names, paths, probs, start, end, etype)
            assert got == pytest.approx(want, abs=1e-9)
            checked += 1
    assert checked >= 8


def test_a_span_that_starts_inside_gets_its_left_boundary_factor():
    # Unconstrained BIO: "O I-PER" is possible, and I-PER after B-PER/I-PER would
    # continue an earlier span. The gate scores the decoded labelling of the span.
    names, node, pair, paths, probs = _crf_case("BIO", 3, 5, constrained=False)
    i_per, b_per = names.index("I-PER"), names.index("B-PER")
    got = span_probability(node, pair, names, ("O", "I-PER", "O"), 1, 2)
    want = sum(
        p
        for path, p in zip(paths, probs, strict=True)
        if path[1] == i_per and path[0] not in (b_per, i_per) and path[2] != i_per
    )
    assert got == pytest.approx(want, abs=1e-9)
    # Without constraints a span has several labellings (B-PER or I-PER first), so the
    # span itself is at least as likely: the gate is then a lower bound.
    assert _exact_span_probability(names, paths, probs, 1, 2, "PER") > got


def _gate_case():
    names, node, pair, paths, probs = _crf_case("BIO", 4, 1)
    best = paths[int(np.argmax(probs))]
    tags = tuple(names[t] for t in best)
    tokens = tuple(f"w{i}" for i in range(4))
    return names, node, pair, tags, Sample("s", tokens, " ".join(tokens))


def test_gate_scores_entities_by_span_probability_and_o_tokens_by_p_not_o():
    names, node, pair, tags, s = _gate_case()
    p = TaggerPrediction("s", tags, names, node, {"transition_marginals": pair})
    entities, missed = SpanGate().score(s, p)
    spans = tags_to_spans(tags).spans
    assert len(entities) == len(spans)
    for e, (start, end, _) in zip(entities, spans, strict=True):
        want = span_probability(node, pair, names, tags, start, end)
        assert e.confidence == pytest.approx(want)
        assert e.uncertainty == pytest.approx(1 - want)
    outside = [i for i, t in enumerate(tags) if t == "O"]
    want_missed = max(1 - node[i, names.index("O")] for i in outside) if outside else 0.0
    assert missed == pytest.approx(want_missed)


def test_ensemble_span_probability_is_the_members_mean():
    names, node, pair, tags, s = _gate_case()
    names2, node2, pair2, *_ = _crf_case("BIO", 4, 7)
    assert names2 == names
    members = np.stack([node, node2])
    p = TaggerPrediction(
        "s",
        tags,
        names,
        members.mean(0),
        {
            "member_marginals": members,
            "transition_marginals": np.stack([pair, pair2]).mean(0),
            "member_transition_marginals": np.stack([pair, pair2]),
        },
    )
    entities, _ = SpanGate().score(s, p)
    start, end, _ = tags_to_spans(tags).spans[0]
    each = [
        span_probability(n, q, names, tags, start, end) for n, q in [(node, pair), (node2, pair2)]
    ]
    assert entities[0].confidence == pytest.approx(np.mean(each))


def test_a_tag_outside_the_label_set_has_probability_zero():
    names, node, pair, *_ = _gate_case()
    assert span_probability(node, pair, names, ("B-ORG", "O", "O", "O"), 0, 1) == 0.0


def test_gate_fails_loudly_without_transition_marginals():
    names, node, _, tags, s = _gate_case()
    with pytest.raises(DataError, match="transition marginals"):
        SpanGate().decide([s], [TaggerPrediction("s", tags, names, node)])


def test_prediction_rejects_misshapen_transition_marginals():
    names, node, pair, tags, _ = _gate_case()
    with pytest.raises(DataError, match="transition_marginals"):
        TaggerPrediction("s", tags, names, node, {"transition_marginals": pair[:-1]})
    with pytest.raises(DataError, match="member_transition_marginals"):
        TaggerPrediction("s", tags, names, node, {"member_transition_marginals": pair})


def test_span_gate_is_registered_and_thresholds_like_the_others():
    assert registry.load_class("uncertainty", "span") is SpanGate
    assert issubclass(SpanGate, TokenScoreGate)
    assert "aggregate" not in SpanGate.Options.model_fields  # it scores spans, not tokens
    names, node, pair, tags, s = _gate_case()
    p = TaggerPrediction("s", tags, names, node, {"transition_marginals": pair})
    (entity,) = SpanGate().score(s, p)[0][:1]
    low = SpanGate(SpanGate.Options(threshold=entity.uncertainty - 1e-6, missed_entities=False))
    high = SpanGate(SpanGate.Options(threshold=entity.uncertainty + 1e-6, missed_entities=False))
    assert entity in [*low.decide([s], [p])[0].delegated]
    assert entity not in [*high.decide([s], [p])[0].delegated]


# ---------------------------------------------------------------- through `refineg run`
def _run_config(root, run_dir, tagger: str) -> str:
    """The test runs' config with the span gate; ``tagger``: the [tagger] table's body."""
    from tests.stagedata import gazetteer_config

    return (
        gazetteer_config(root, "http://127.0.0.1:9/v1", run_dir, refine=False, ground=False)
        .replace("[uncertainty.options]", '[uncertainty]\nplugin = "span"\n[uncertainty.options]')
        .replace('plugin = "gazetteer"', tagger)
    )


@pytest.fixture(scope="module")
def tweets(tmp_path_factory):
    from refineg_formats.twitter import read_twitter_gmner, write_twitter_gmner

    from tests.conftest import TWITTER

    if not TWITTER.exists():
        pytest.skip(f"real data not found at {TWITTER}")
    root = tmp_path_factory.mktemp("span")
    write_twitter_gmner(
        read_twitter_gmner(TWITTER / "train.txt").samples[:160], root / "train" / "train.txt"
    )
    dev = [s for s in read_twitter_gmner(TWITTER / "dev.txt").samples if s.entities][:20]
    write_twitter_gmner(dev, root / "dev" / "dev.txt")
    (root / "images").mkdir()  # no images: refine and ground are off
    return root


def test_run_with_the_span_gate_scores_every_entity_by_its_span(tweets, minilm_path, tmp_path):
    from refineg_core.formats.native import read_results
    from refineg_core.testing import run_cli

    tagger = (
        'plugin = "bert_crf"\n[tagger.options]\n'
        f'encoder = "{minilm_path}"\nepochs = 3\nbatch_size = 8\nmax_length = 48\ndevice = "cpu"'
    )
    cfg = tmp_path / "c.toml"
    cfg.write_text(_run_config(tweets, tmp_path / "run", tagger), encoding="utf-8")
    result = run_cli(["run", "-c", str(cfg)])
    assert result.code == 0, result.stderr
    results = read_results(tmp_path / "run" / "predict.jsonl")
    assert len(results) == 20
    scored = [e for r in results for e in r.entities]
    assert scored, "the tagger found nothing"
    for r in results:
        for e in r.entities:
            assert e.uncertainty == pytest.approx(1 - e.confidence, abs=1e-6)
        delegated = any(e.uncertainty > 0.4 for e in r.entities)
        assert r.gate.delegate_sample == (delegated or r.gate.missed_uncertainty > 0.4)


def test_run_with_a_tagger_without_transition_marginals_says_so(tweets, tmp_path):
    pytest.importorskip("refineg_gazetteer", reason="pip install -e examples/refineg-gazetteer")
    from refineg_core.testing import run_cli

    cfg = tmp_path / "c.toml"
    cfg.write_text(_run_config(tweets, tmp_path / "run", 'plugin = "gazetteer"'), encoding="utf-8")
    result = run_cli(["run", "-c", str(cfg)])
    assert result.code == 2, result.stderr
    # Refused before training, naming both plugins and the missing extra.
    assert "'span'" in result.stderr and "'gazetteer'" in result.stderr
    assert "transition_marginals" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "tagger").exists()
