"""Inference over one or more :class:`BertCrfModel` members, and MC-dropout passes.

An ensemble predicts with the Viterbi path of the *averaged* potentials (mean
emissions, mean learned transitions; the structural penalties are the same in
every member) and reports the mean of the members' CRF marginals, plus each
member's marginals so a gate can measure their disagreement. A single member
takes exactly the single-model path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import attrs
import torch

from refineg_bert_crf.crf import CRF
from refineg_bert_crf.model import BertCrfModel, EncodedSentence

_LEARNED = ("start_transitions", "end_transitions", "transitions")
_PENALTIES = ("start_penalty", "trans_penalty", "end_penalty")


@attrs.frozen
class BatchOutput:
    """Decoded paths, mean marginals [B, T, L] and member marginals [M, B, T, L] (M > 1),
    with the transition marginals beside them ([B, T-1, L, L], [M, B, T-1, L, L])."""

    paths: list[list[int]]
    marginals: torch.Tensor | None
    member_marginals: torch.Tensor | None
    transitions: torch.Tensor | None = None
    member_transitions: torch.Tensor | None = None


def mean_crf(members: Sequence[BertCrfModel]) -> CRF:
    """A CRF whose learned scores are the members' mean (penalties copied from the first)."""
    first = members[0].crf
    crf = CRF(first.num_tags).to(first.transitions.device)
    with torch.no_grad():
        for name in _LEARNED:
            getattr(crf, name).copy_(torch.stack([getattr(m.crf, name) for m in members]).mean(0))
        for name in _PENALTIES:
            getattr(crf, name).copy_(getattr(first, name))
    return crf


def decode(
    members: Sequence[BertCrfModel],
    batch: Sequence[EncodedSentence],
    prefix: Sequence[int],
    suffix: Sequence[int],
    pad: int,
    *,
    marginals: bool,
    crf: CRF | None = None,
    encode=None,
) -> BatchOutput:
    """Viterbi (+ marginals) for one batch; ``crf`` is :func:`mean_crf` of ``members``.

    ``encode`` (a fast encoder back-end, ``inference.py``) serves a single model only:
    ensemble members each run their own PyTorch encoder."""
    fast = encode if len(members) == 1 else None
    outs = [m.emissions(batch, prefix, suffix, pad, fast) for m in members]
    mask = outs[0][1]
    if len(members) == 1:
        emissions = outs[0][0]
        head = members[0].crf
        post, pair = head.posteriors(emissions, mask) if marginals else (None, None)
        return BatchOutput(head.viterbi(emissions, mask), post, None, pair)
    crf = crf if crf is not None else mean_crf(members)
    paths = crf.viterbi(torch.stack([e for e, _ in outs]).mean(0), mask)
    if not marginals:
        return BatchOutput(paths, None, None)
    each = [m.crf.posteriors(e, mask) for m, (e, _) in zip(members, outs, strict=True)]
    member_post = torch.stack([post for post, _ in each])
    member_pair = torch.stack([pair for _, pair in each])
    return BatchOutput(paths, member_post.mean(0), member_post, member_pair.mean(0), member_pair)


def dropout_marginals(
    members: Sequence[BertCrfModel],
    batch: Sequence[EncodedSentence],
    prefix: Sequence[int],
    suffix: Sequence[int],
    pad: int,
    *,
    passes: int,
    seed: int,
) -> torch.Tensor:
    """``passes`` stochastic forward passes with dropout on -> marginals [K, B, T, L].

    Each pass is the members' mean marginal. The global RNG is left untouched
    (forked), and ``seed`` makes the passes reproducible.
    """
    device = members[0].device
    devices = [device.index or 0] if device.type == "cuda" else []
    samples = []
    with torch.random.fork_rng(devices=devices), _dropout_on(members):
        torch.manual_seed(seed)
        for _ in range(passes):
            post = []
            for m in members:
                emissions, mask = m.emissions(batch, prefix, suffix, pad)
                post.append(m.crf.marginals(emissions, mask))
            samples.append(torch.stack(post).mean(0))
    return torch.stack(samples)


@contextlib.contextmanager
def _dropout_on(members: Sequence[BertCrfModel]) -> Iterator[None]:
    """Train mode (dropout active; the encoders have no batch norm) for the block only."""
    before = [m.training for m in members]
    try:
        for m in members:
            m.train()
        yield
    finally:
        for m, was in zip(members, before, strict=True):
            m.train(was)
