"""BIO/BIOES conversion, repairs and name alignment on word boundaries."""

from pathlib import Path

import pytest

from refineg_core.errors import DataError
from refineg_core.labels import (
    LabelSet,
    convert_scheme,
    find_token_spans,
    spans_to_tags,
    tag_names,
    tags_to_spans,
    tokenize,
)


def test_bio_round_trip_and_bioes():
    tags = ["B-PER", "I-PER", "O", "B-LOC", "O", "B-ORG", "I-ORG", "I-ORG"]
    decoded = tags_to_spans(tags)
    assert decoded.spans == ((0, 2, "PER"), (3, 4, "LOC"), (5, 8, "ORG"))
    assert decoded.repairs == 0
    bioes = convert_scheme(tags, "BIOES")
    assert bioes == ["B-PER", "E-PER", "O", "S-LOC", "O", "B-ORG", "I-ORG", "E-ORG"]
    assert tags_to_spans(bioes).spans == decoded.spans
    assert spans_to_tags(8, decoded.spans) == tags


def test_i_without_b_is_repaired_and_counted():
    decoded = tags_to_spans(["O", "I-PER", "I-PER", "I-LOC", "O", "I-ORG"])
    assert decoded.spans == ((1, 3, "PER"), (3, 4, "LOC"), (5, 6, "ORG"))
    assert decoded.repairs == 3


def test_overlap_and_bad_tags_are_errors():
    with pytest.raises(DataError, match="overlaps"):
        spans_to_tags(4, [(0, 2, "PER"), (1, 3, "LOC")])
    with pytest.raises(DataError, match="malformed tag"):
        tags_to_spans(["B_PER"])


def test_find_token_spans_respects_word_boundaries():
    tokens = tokenize("The shotgun and the gun near Paris , Parisian style")
    assert find_token_spans(tokens, "gun") == [(4, 5)]
    assert find_token_spans(tokens, "Paris") == [(6, 7)]
    assert find_token_spans(["M1", "Abrams", "tank"], "M1 Abrams") == [(0, 2)]
    assert find_token_spans(["F", "-", "35"], "F-35") == [(0, 3)]
    assert find_token_spans(["a"], "  ") == []


def test_tag_names_prefers_longer_names_and_reports_missing():
    tokens = ["USS", "Nimitz", "and", "Nimitz", "met", "HIMARS"]
    tags, missing = tag_names(
        tokens, [("Nimitz", "vessel"), ("USS Nimitz", "vessel"), ("Javelin", "weapon")]
    )
    assert tags == ["B-vessel", "I-vessel", "O", "B-vessel", "O", "O"]
    assert missing == [("Javelin", "weapon")]


def test_label_set_tags_and_type_check():
    labels = LabelSet({"PER": "person", "LOC": "place"})
    assert labels.tags("BIO") == ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
    assert len(labels.tags("BIOES")) == 9
    with pytest.raises(DataError, match=r"\['ORG'\]"):
        labels.check_types(["PER", "ORG"], where="train.txt")


def test_type_resolver_understands_common_names_and_descriptions():
    import tomllib
    from refineg_stages.type_names import TypeResolver

    configs = Path(__file__).resolve().parents[1] / "configs"

    def labels_of(name: str) -> LabelSet:  # the descriptions the shipped configs use
        return LabelSet(tomllib.loads((configs / name).read_text("utf-8"))["labels"])

    twitter = TypeResolver(labels_of("twitter-gmner.toml"))
    for names, label in [
        (["PER", "per", "Person", "people"], "PER"),
        (["ORG", "organization", "Organisation", "company", "Companies"], "ORG"),
        (["LOC", "Location", "place", "city"], "LOC"),
        (["OTHER", "MISC", "miscellaneous", "event"], "OTHER"),
    ]:
        assert {twitter.resolve(n) for n in names} == {label}, names
    # words every description shares, or no description has, name nothing
    assert twitter.resolve("named") is None and twitter.resolve("Politician") is None
    ccks = TypeResolver(labels_of("ccks.toml"))
    assert ccks.resolve("LOC") == "location" and ccks.resolve("ship") == "vessel"
    assert ccks.resolve("Misc") == "other" and ccks.resolve("Submarines") == "vessel"


def test_type_resolver_user_synonyms_and_ambiguity():
    from refineg_stages.type_names import TypeResolver

    labels = LabelSet({"PER": "", "ORG": "", "BRAND": "a brand name"})
    resolver = TypeResolver(labels, {"BRAND": ["Product line", "marque"]})
    assert resolver.resolve("product_line") == "BRAND" and resolver.resolve("MARQUE") == "BRAND"
    with pytest.raises(DataError, match="not in the label set"):
        TypeResolver(labels, {"LOC": ["place"]})
    with pytest.raises(DataError, match="synonym of"):
        TypeResolver(labels, {"PER": ["star"], "BRAND": ["star"]})
    # two labels in one common group: neither gets the group's other names
    both = TypeResolver(LabelSet({"PER": "", "PERSON": "", "ORG": ""}))
    assert both.resolve("people") is None and both.resolve("person") == "PERSON"
