"""Split word sequences that exceed the encoder's limit into overlapping windows.

Each window holds whole words (plus the encoder's special tokens) and fits the
sub-word budget. After encoding, every word takes its emission scores from the
window in which it sits farthest from an edge (most context on both sides), so
every word gets exactly one score row and the CRF then decodes the *whole*
sentence at once: labels and marginals for every token, nothing dropped.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs


@attrs.frozen
class Window:
    """Words ``[start, end)`` of a sentence, with how many sub-words each keeps."""

    start: int
    end: int
    pieces: tuple[int, ...]  # sub-words kept per word (a giant word is cut to fit)


def plan_windows(
    piece_counts: Sequence[int], budget: int, overlap: int | None = None
) -> list[Window]:
    """Cover all words with windows of at most ``budget`` sub-words each.

    ``overlap`` is the number of sub-words shared by consecutive windows
    (default: a quarter of the budget). A single word longer than the budget
    keeps only its first ``budget`` sub-words (its label comes from the first).
    """
    if budget < 1:
        raise ValueError("window budget must be at least one sub-word")
    counts = [max(1, min(c, budget)) for c in piece_counts]
    n = len(counts)
    if n == 0:
        return []
    if sum(counts) <= budget:
        return [Window(0, n, tuple(counts))]
    overlap = budget // 4 if overlap is None else max(0, min(overlap, budget - 1))
    windows: list[Window] = []
    start = 0
    while True:
        end, used = start, 0
        while end < n and used + counts[end] <= budget:
            used += counts[end]
            end += 1
        windows.append(Window(start, end, tuple(counts[start:end])))
        if end >= n:
            return windows
        # Next window starts so that about ``overlap`` sub-words are shared, and always moves.
        nxt, shared = end, 0
        while nxt - 1 > start and shared + counts[nxt - 1] <= overlap:
            nxt -= 1
            shared += counts[nxt]
        start = max(nxt, start + 1)


def owner_of_words(windows: Sequence[Window], n_words: int) -> list[tuple[int, int]]:
    """For each word: (window index, position inside that window), most central window."""
    best: list[tuple[int, int] | None] = [None] * n_words
    margin = [-1] * n_words
    for w_idx, w in enumerate(windows):
        size = w.end - w.start
        for pos in range(size):
            word = w.start + pos
            m = min(pos, size - 1 - pos)
            # Near the sentence edges there is no missing context: count it as central.
            if w.start == 0:
                m = max(m, size - 1 - pos) if w.end == n_words else size - 1 - pos
            elif w.end == n_words:
                m = pos
            if m > margin[word]:
                margin[word] = m
                best[word] = (w_idx, pos)
    missing = [i for i, b in enumerate(best) if b is None]
    if missing:
        raise ValueError(f"windows do not cover words {missing[:5]}")
    return best  # type: ignore[return-value]
