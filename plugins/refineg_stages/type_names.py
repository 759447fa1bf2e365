"""Type names as a model writes them ("Person", "place", "Cities") mapped to the
task's labels, for the stages that read a model's answers. A name two labels could
claim is refused: a wrong type is worse than none."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import attrs

from refineg_core.errors import DataError
from refineg_core.labels import LabelSet

#: Common names models use for the usual entity types. A label whose own name is in
#: a group accepts every name of that group (when no other label claims the group).
COMMON_TYPE_SYNONYMS: tuple[frozenset[str], ...] = (
    frozenset({"per", "person", "persons", "people", "human", "pers"}),
    frozenset({"org", "organization", "organisation", "organizations", "organisations"}),
    frozenset({"loc", "location", "locations", "place", "places", "gpe", "geo"}),
    frozenset({"other", "others", "misc", "miscellaneous", "mis"}),
)

_TYPE_SEPARATORS = re.compile(r"[\s_\-]+")
_DESCRIPTION_WORD = re.compile(r"\w+", re.UNICODE)


def _type_key(name: str) -> str:
    return _TYPE_SEPARATORS.sub("", name.strip().casefold())


@attrs.frozen
class TypeResolver:
    """Maps the type names a model writes ("Person", "place") to labels: the label, the
    user's ``synonyms``, ``COMMON_TYPE_SYNONYMS``, then a word of one label's
    description. A name two labels could claim is refused (a wrong type is worse)."""

    labels: LabelSet
    synonyms: Mapping[str, Sequence[str]] = attrs.field(factory=dict, converter=dict)
    _table: dict[str, str] = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        unknown = sorted(set(self.synonyms) - set(self.labels.types))
        if unknown:
            raise DataError(
                f"type synonyms given for {unknown}, which are not in the label set "
                f"{list(self.labels.types)}"
            )
        table: dict[str, str] = {}
        claimed: dict[str, set[str]] = {}
        for label in self.labels.types:
            table[_type_key(label)] = label
        for label, names in self.synonyms.items():
            for name in names:
                claimed.setdefault(_type_key(name), set()).add(label)
        self._add_unambiguous(table, claimed, where="synonyms")
        common: dict[str, set[str]] = {}
        for group in COMMON_TYPE_SYNONYMS:
            owners = [t for t in self.labels.types if _type_key(t) in group]
            if len(owners) == 1:
                for name in group:
                    common.setdefault(name, set()).add(owners[0])
        self._add_unambiguous(table, common)
        described: dict[str, set[str]] = {}
        for label, text in self.labels.descriptions.items():
            for word in _DESCRIPTION_WORD.findall((text or "").split("(")[0]):
                for form in {word, _singular(word)}:  # "cities" also names "city"
                    described.setdefault(_type_key(form), set()).add(label)
        self._add_unambiguous(table, described)
        object.__setattr__(self, "_table", table)

    @staticmethod
    def _add_unambiguous(
        table: dict[str, str], claimed: dict[str, set[str]], where: str | None = None
    ) -> None:
        for key, owners in claimed.items():
            if key in table or not key:
                continue
            if len(owners) == 1:
                table[key] = next(iter(owners))
            elif where:
                raise DataError(f"the type name {key!r} is a synonym of {sorted(owners)}")

    def resolve(self, name: str) -> str | None:
        """The label ``name`` means, or None when it is unknown or ambiguous."""
        found = self._table.get(_type_key(name))
        return found if found is not None else self._table.get(_type_key(_singular(name)))


def _singular(word: str) -> str:
    """A plain English singular, enough to match "Cities" with "city" ("ss" kept)."""
    lower = word.casefold()
    if lower.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if lower.endswith(("ses", "xes", "ches", "shes")):
        return word[:-2]
    if lower.endswith("s") and not lower.endswith("ss") and len(word) > 3:
        return word[:-1]
    return word
