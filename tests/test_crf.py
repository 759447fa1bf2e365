"""The CRF against brute-force enumeration of every tag path on small random cases."""

from __future__ import annotations

import itertools

import pytest
import torch
from refineg_bert_crf.crf import CRF, allowed_transitions

from refineg_core.labels import LabelSet, tags_to_spans


def _path_score(crf: CRF, em: torch.Tensor, path: tuple[int, ...]) -> torch.Tensor:
    start, trans, end = crf.scores()
    s = start[path[0]] + em[0, path[0]]
    for t in range(1, len(path)):
        s = s + trans[path[t - 1], path[t]] + em[t, path[t]]
    return s + end[path[-1]]


def _brute(crf: CRF, em: torch.Tensor, length: int):
    """logZ, best path and marginals of one sequence by enumerating all L^n paths."""
    n_tags = em.shape[1]
    paths = list(itertools.product(range(n_tags), repeat=length))
    scores = torch.stack([_path_score(crf, em[:length], p) for p in paths])
    log_z = torch.logsumexp(scores, 0)
    best = paths[int(scores.argmax())]
    probs = torch.exp(scores - log_z)
    marg = torch.zeros(length, n_tags, dtype=em.dtype)
    for p, pr in zip(paths, probs, strict=True):
        for t, tag in enumerate(p):
            marg[t, tag] += pr
    return log_z, best, marg, dict(zip(paths, scores, strict=True))


def _random_case(seed: int, n_tags: int, constraints=None):
    g = torch.Generator().manual_seed(seed)
    crf = CRF(n_tags, constraints).double()
    with torch.no_grad():
        crf.transitions.copy_(torch.randn(n_tags, n_tags, generator=g, dtype=torch.double))
        crf.start_transitions.copy_(torch.randn(n_tags, generator=g, dtype=torch.double))
        crf.end_transitions.copy_(torch.randn(n_tags, generator=g, dtype=torch.double))
    lengths = [4, 1, 3, 2]
    em = torch.randn(len(lengths), max(lengths), n_tags, generator=g, dtype=torch.double) * 2
    mask = torch.zeros(len(lengths), max(lengths), dtype=torch.bool)
    for b, n in enumerate(lengths):
        mask[b, :n] = True
    tags = torch.randint(0, n_tags, (len(lengths), max(lengths)), generator=g)
    return crf, em, mask, tags, lengths


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_log_likelihood_viterbi_marginals_match_brute_force(seed):
    crf, em, mask, tags, lengths = _random_case(seed, n_tags=3)
    ll = crf.log_likelihood(em, tags, mask)
    paths = crf.viterbi(em, mask)
    marg = crf.marginals(em, mask)
    for b, n in enumerate(lengths):
        log_z, best, bmarg, scores = _brute(crf, em[b], n)
        gold = tuple(tags[b, :n].tolist())
        assert ll[b].item() == pytest.approx((scores[gold] - log_z).item(), abs=1e-9)
        assert tuple(paths[b]) == best
        assert torch.allclose(marg[b, :n], bmarg, atol=1e-9)
        assert torch.all(marg[b, n:] == 0)  # padding rows carry no mass
        assert torch.allclose(marg[b, :n].sum(1), torch.ones(n, dtype=torch.double))


@pytest.mark.parametrize("seed", [0, 3])
def test_transition_marginals_match_brute_force(seed):
    crf, em, mask, _, lengths = _random_case(seed, n_tags=3)
    post, pair = crf.posteriors(em, mask)
    assert torch.allclose(post, crf.marginals(em, mask))
    assert pair.shape == (len(lengths), em.shape[1] - 1, 3, 3)
    for b, n in enumerate(lengths):
        _, _, _, scores = _brute(crf, em[b], n)
        log_z = torch.logsumexp(torch.stack(list(scores.values())), 0)
        want = torch.zeros(max(n - 1, 0), 3, 3, dtype=em.dtype)
        for path, score in scores.items():
            for t in range(n - 1):
                want[t, path[t], path[t + 1]] += torch.exp(score - log_z)
        assert torch.allclose(pair[b, : n - 1], want, atol=1e-9)
        assert torch.all(pair[b, max(n - 1, 0) :] == 0)  # past the last position: no mass
        # Consistent with the node marginals on both sides.
        assert torch.allclose(pair[b, : n - 1].sum(2), post[b, : n - 1], atol=1e-9)
        assert torch.allclose(pair[b, : n - 1].sum(1), post[b, 1:n], atol=1e-9)


def test_padding_values_do_not_leak_into_results():
    crf, em, mask, tags, _ = _random_case(5, n_tags=3)
    noisy = em.clone()
    noisy[~mask] = 1e3  # garbage in padded positions
    assert torch.allclose(crf.log_likelihood(em, tags, mask), crf.log_likelihood(noisy, tags, mask))
    assert crf.viterbi(em, mask) == crf.viterbi(noisy, mask)
    assert torch.allclose(crf.marginals(em, mask), crf.marginals(noisy, mask))


def test_likelihood_gradient_is_expected_counts():
    """d logZ / d emissions = marginals: the forward and backward passes agree."""
    crf, em, mask, _, _ = _random_case(7, n_tags=4)
    em = em.clone().requires_grad_(True)
    crf.log_partition(em, mask).sum().backward()
    assert torch.allclose(em.grad, crf.marginals(em.detach(), mask), atol=1e-9)


@pytest.mark.parametrize("scheme", ["BIO", "BIOES"])
def test_constraints_forbid_broken_sequences(scheme):
    names = LabelSet({"PER": "", "LOC": ""}).tags(scheme)
    crf, em, mask, _, lengths = _random_case(3, len(names), allowed_transitions(names, scheme))
    em = em * 3
    for b, path in enumerate(crf.viterbi(em, mask)):
        assert len(path) == lengths[b]
        assert tags_to_spans([names[t] for t in path]).repairs == 0
        if scheme == "BIOES":  # no span left open at the end
            assert names[path[-1]][0] in "OES"
    # Brute force still agrees on the constrained model.
    _, best, bmarg, _ = _brute(crf, em[0], lengths[0])
    assert tuple(crf.viterbi(em, mask)[0]) == best
    assert torch.allclose(crf.marginals(em, mask)[0, : lengths[0]], bmarg, atol=1e-8)


def test_empty_sequence_is_rejected_clearly():
    crf = CRF(3)
    with pytest.raises(ValueError, match="at least one position"):
        crf.marginals(torch.zeros(1, 2, 3), torch.tensor([[False, False]]))
