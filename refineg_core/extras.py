"""The one table of what a tagger may report beyond its marginals (``extras``).

Each array some gate needs (transition marginals, ensemble members...) is declared
here once with its shape, so a new gate never adds a field to ``TaggerPrediction``
and a misshapen array is refused where the tagger makes it, not misread by a gate.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import attrs
import numpy as np

from refineg_core.errors import DataError, PluginError


@attrs.frozen
class Extra:
    """One declared extra; ``shape`` axes: ``"M"`` M >= 1 estimates, ``"T"`` tokens,
    ``"T-1"`` adjacent token pairs, ``"L"`` labels."""

    name: str
    shape: tuple[str, ...]
    meaning: str

    def expected(self, tokens: int, labels: int) -> tuple[int | None, ...]:
        """The shape for ``tokens`` x ``labels``; None where any size >= 1 fits (M)."""
        sizes = {"T": tokens, "T-1": max(tokens - 1, 0), "L": labels, "M": None}
        return tuple(sizes[axis] for axis in self.shape)

    def check(self, array: object, sample_id: str, tokens: int, labels: int) -> None:
        """Raise a DataError naming the sample and the extra unless ``array`` fits."""
        expected = self.expected(tokens, labels)
        sizes = ", ".join("M" if e is None else str(e) for e in expected)
        shown = f"({', '.join(self.shape)}) = ({sizes})"
        if not isinstance(array, np.ndarray):
            raise DataError(
                f"extra {self.name!r} is a {type(array).__name__}, not a numpy array of "
                f"shape {shown}",
                where=f"tagger: sample {sample_id}",
            )
        fits = array.ndim == len(expected) and all(
            (size >= 1) if want is None else size == want
            for size, want in zip(array.shape, expected, strict=False)
        )
        if not fits:
            raise DataError(
                f"extra {self.name!r} has shape {array.shape}, expected {shown} "
                f"for {tokens} tokens x {labels} labels",
                where=f"tagger: sample {sample_id}",
            )


#: Every extra a tagger may report, by name (a gate needing a new array adds a row).
EXTRAS: Mapping[str, Extra] = {
    e.name: e
    for e in (
        Extra(
            "member_marginals",
            ("M", "T", "L"),
            "the marginals of each of the M members of an ensemble (``marginals`` is "
            "then their mean); the ensemble_mi gate measures their disagreement",
        ),
        Extra(
            "dropout_marginals",
            ("M", "T", "L"),
            "the marginals of M stochastic (MC dropout) passes; the mc_dropout gate "
            "measures their disagreement",
        ),
        Extra(
            "transition_marginals",
            ("T-1", "L", "L"),
            "[i, a, b] = P(token i has label a and token i+1 label b); the span gate "
            "scores a whole span with it, not only its tokens",
        ),
        Extra(
            "member_transition_marginals",
            ("M", "T-1", "L", "L"),
            "transition_marginals of each ensemble member (with member_marginals, the "
            "span gate averages the members' span probabilities)",
        ),
    )
}


def check_extras(extras: Mapping[str, object], sample_id: str, tokens: int, labels: int) -> None:
    """Every key of ``extras`` is declared in :data:`EXTRAS` and its array fits."""
    for name, array in extras.items():
        spec = EXTRAS.get(name)
        if spec is None:
            raise DataError(
                f"unknown extra {name!r}; the declared extras are {sorted(EXTRAS)} "
                "(refineg_core.extras.EXTRAS)",
                where=f"tagger: sample {sample_id}",
            )
        spec.check(array, sample_id, tokens, labels)


def check_declared(names: Iterable[str], who: str) -> None:
    """A plugin's declaration names only extras of the table (a typo fails at load)."""
    unknown = sorted(set(names) - set(EXTRAS))
    if unknown:
        raise PluginError(
            f"{who} declares unknown extras {unknown}; the declared extras are "
            f"{sorted(EXTRAS)} (refineg_core.extras.EXTRAS)",
            where=who,
        )


def check_supply(needed: Iterable[str], supplied: Iterable[str], *, gate: str, tagger: str) -> None:
    """Refuse a gate needing extras the tagger does not report, before any training."""
    needed, supplied = tuple(needed), frozenset(supplied)
    check_declared(needed, f"uncertainty plugin {gate!r}")
    check_declared(supplied, f"tagger plugin {tagger!r}")
    missing = [name for name in needed if name not in supplied]
    if missing:
        got = ", ".join(sorted(supplied)) or "none"
        raise PluginError(
            f"the uncertainty plugin {gate!r} needs the tagger's extras {missing}, and "
            f"the tagger plugin {tagger!r} with these options reports {got}; use a tagger "
            "(or tagger options) that reports them, or another gate",
            where="uncertainty.plugin",
        )
