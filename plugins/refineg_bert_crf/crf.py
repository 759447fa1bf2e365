"""A linear-chain CRF: log-likelihood, Viterbi and forward-backward marginals.

Everything is batched, masked and computed in log space. Masks are right-padded
prefixes (``mask[b, :n_b]`` true); every sequence in a batch must have at least
one position, so callers drop empty sentences before calling.

Structural constraints (``O -> I-X`` in BIO, ``B-X -> O`` in BIOES, ...) are a
fixed additive penalty on the learned transitions, so Viterbi never emits a
broken tag sequence and the marginals put (almost) no mass on one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from refineg_core.labels import split_tag

#: Log-score added to forbidden transitions; finite so logsumexp never sees all -inf.
FORBIDDEN = -1.0e4


def allowed_transitions(label_names: Sequence[str], scheme: str) -> tuple[list, list, list]:
    """Which starts, transitions and ends are legal under BIO/BIOES.

    Returns boolean lists ``start[j]``, ``trans[i][j]``, ``end[i]``.
    """
    parts = [split_tag(t) for t in label_names]

    def can_follow(prev: tuple[str, str | None], cur: tuple[str, str | None]) -> bool:
        pp, pt = prev
        cp, ct = cur
        if scheme == "BIO":
            return cp != "I" or (pp in {"B", "I"} and pt == ct)
        # BIOES: I/E continue an open span of the same type; O/B/S need a closed one.
        open_prev = pp in {"B", "I"}
        if cp in {"I", "E"}:
            return open_prev and pt == ct
        return not open_prev

    start = [p != "I" and (scheme == "BIO" or p not in {"I", "E"}) for p, _ in parts]
    end = [scheme == "BIO" or p not in {"B", "I"} for p, _ in parts]
    trans = [[can_follow(a, b) for b in parts] for a in parts]
    return start, trans, end


class CRF(nn.Module):
    """Linear-chain CRF over ``num_tags`` labels with learned transitions."""

    def __init__(self, num_tags: int, constraints: tuple[list, list, list] | None = None):
        super().__init__()
        self.num_tags = num_tags
        self.start_transitions = nn.Parameter(torch.zeros(num_tags))
        self.end_transitions = nn.Parameter(torch.zeros(num_tags))
        self.transitions = nn.Parameter(torch.zeros(num_tags, num_tags))
        nn.init.uniform_(self.transitions, -0.1, 0.1)
        pen_s = torch.zeros(num_tags)
        pen_t = torch.zeros(num_tags, num_tags)
        pen_e = torch.zeros(num_tags)
        if constraints is not None:
            start, trans, end = constraints
            pen_s[~torch.tensor(start)] = FORBIDDEN
            pen_t[~torch.tensor(trans)] = FORBIDDEN
            pen_e[~torch.tensor(end)] = FORBIDDEN
        # Buffers, not parameters: saved with the weights, never trained.
        self.register_buffer("start_penalty", pen_s)
        self.register_buffer("trans_penalty", pen_t)
        self.register_buffer("end_penalty", pen_e)

    # Effective scores (learned + structural penalty).
    def scores(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (
            self.start_transitions + self.start_penalty,
            self.transitions + self.trans_penalty,
            self.end_transitions + self.end_penalty,
        )

    @staticmethod
    def _check(emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if emissions.dim() != 3 or mask.shape != emissions.shape[:2]:
            raise ValueError(f"emissions {tuple(emissions.shape)} / mask {tuple(mask.shape)}")
        mask = mask.bool()
        if not bool(mask[:, 0].all()):
            raise ValueError("every sequence needs at least one position (mask[:, 0] all true)")
        return mask

    def sequence_score(
        self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Unnormalised log-score of the given tag paths, shape [B]."""
        mask = self._check(emissions, mask)
        start, trans, end = self.scores()
        b_idx = torch.arange(emissions.shape[0], device=emissions.device)
        m = mask.to(emissions.dtype)
        score = start[tags[:, 0]] + emissions[b_idx, 0, tags[:, 0]]
        for t in range(1, emissions.shape[1]):
            step = trans[tags[:, t - 1], tags[:, t]] + emissions[b_idx, t, tags[:, t]]
            score = score + step * m[:, t]
        last = mask.long().sum(1) - 1
        return score + end[tags[b_idx, last]]

    def _forward_alphas(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """alpha[b, t, j] = log-sum of all prefixes ending in label j at t."""
        start, trans, _ = self.scores()
        alphas = [start + emissions[:, 0]]
        for t in range(1, emissions.shape[1]):
            prev = alphas[-1]
            nxt = torch.logsumexp(prev.unsqueeze(2) + trans.unsqueeze(0), dim=1) + emissions[:, t]
            alphas.append(torch.where(mask[:, t : t + 1], nxt, prev))
        return torch.stack(alphas, dim=1)

    def log_partition(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """log Z for each sequence, shape [B]."""
        mask = self._check(emissions, mask)
        _, _, end = self.scores()
        alphas = self._forward_alphas(emissions, mask)
        # Padded steps copy the last alpha forward, so the final column is the last real one.
        return torch.logsumexp(alphas[:, -1] + end, dim=1)

    def log_likelihood(
        self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """log p(tags | emissions) for each sequence, shape [B]."""
        return self.sequence_score(emissions, tags, mask) - self.log_partition(emissions, mask)

    def marginals(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Posterior P(y_t = j | x) by forward-backward, shape [B, T, L]; padding rows are 0."""
        return self.posteriors(emissions, mask, pairs=False)[0]

    def posteriors(
        self, emissions: torch.Tensor, mask: torch.Tensor, *, pairs: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Node marginals [B, T, L] and, with ``pairs``, transition marginals [B, T-1, L, L].

        ``pair[b, t, i, j] = P(y_t = i, y_{t+1} = j | x)``: what a gate needs for the
        probability of a whole span (the posterior of a linear chain is a Markov chain).
        Rows at or past a sequence's last position are 0.
        """
        mask = self._check(emissions, mask)
        _, trans, end = self.scores()
        alphas = self._forward_alphas(emissions, mask)
        n = emissions.shape[1]
        betas = [end.expand(emissions.shape[0], -1)]
        for t in range(n - 2, -1, -1):
            nxt = betas[0]
            val = torch.logsumexp(
                trans.unsqueeze(0) + (emissions[:, t + 1] + nxt).unsqueeze(1), dim=2
            )
            # Where t+1 is padding, t is the last real position: beta = end scores.
            betas.insert(0, torch.where(mask[:, t + 1 : t + 2], val, end.expand_as(val)))
        beta = torch.stack(betas, dim=1)
        log_z = torch.logsumexp(alphas[:, -1] + end, dim=1)
        post = torch.exp(alphas + beta - log_z[:, None, None])
        post = post * mask.unsqueeze(2).to(post.dtype)
        if not pairs:
            return post, None
        # alpha_t(i) + trans(i, j) + emission_{t+1}(j) + beta_{t+1}(j) - log Z
        joint = (
            alphas[:, :-1].unsqueeze(3)
            + trans.view(1, 1, *trans.shape)
            + (emissions[:, 1:] + beta[:, 1:]).unsqueeze(2)
            - log_z.view(-1, 1, 1, 1)
        )
        pair = torch.exp(joint) * mask[:, 1:].view(*mask.shape[:1], -1, 1, 1).to(post.dtype)
        return post, pair

    def viterbi(self, emissions: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
        """Best label path for each sequence (lists of its real length)."""
        mask = self._check(emissions, mask)
        start, trans, end = self.scores()
        score = start + emissions[:, 0]
        history = []
        for t in range(1, emissions.shape[1]):
            cand = score.unsqueeze(2) + trans.unsqueeze(0)
            best, idx = cand.max(dim=1)
            nxt = best + emissions[:, t]
            score = torch.where(mask[:, t : t + 1], nxt, score)
            history.append(idx)
        score = score + end
        lengths = mask.long().sum(1).tolist()
        last = score.argmax(dim=1).tolist()
        hist = torch.stack(history, dim=1).tolist() if history else []
        paths = []
        for b, length in enumerate(lengths):
            path = [last[b]]
            for t in range(length - 2, -1, -1):
                path.append(hist[b][t][path[-1]])
            paths.append(path[::-1])
        return paths
