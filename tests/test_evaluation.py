"""GMNER / MNER / EEG evaluation on hand-computed cases and on the real Twitter dev set.

Every expected number below is worked out by hand in the comment next to it;
none comes from running the evaluator.
"""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import numpy as np
import pytest

from refineg_core.errors import DataError, RefinegError
from refineg_core.evaluation import evaluate, normalize_name
from refineg_core.formats import load_dataset, write_jsonl
from refineg_core.hooks import Hooks, get_hooks, hookimpl, make_plugin_manager
from refineg_core.testing import run_cli
from refineg_core.types import Box, Entity, Failure, Sample, SampleResult

TOKENS = ("Alice", "met", "Bob", "in", "Paris", "today")
B0 = Box(0, 0, 10, 10)  # area 100
FAR = Box(50, 50, 60, 60)  # no overlap with B0


def no_hooks() -> Hooks:
    """Hooks without installed entry points, so only the core's numbers are checked."""
    return Hooks(make_plugin_manager(load_entry_points=False))


def ent(start: int, end: int, etype: str, *boxes: Box, text: str | None = None) -> Entity:
    return Entity(
        start,
        end,
        etype,
        text if text is not None else " ".join(TOKENS[start:end]),
        boxes=tuple(boxes),
    )


def sample(sid: str, *entities: Entity, tokens=TOKENS, meta=None) -> Sample:
    return Sample(sid, tuple(tokens), " ".join(tokens), entities=tuple(entities), meta=meta or {})


def run(gold, pred, **kw):
    return evaluate(gold, pred, hooks=no_hooks(), **kw)


def counts(score) -> tuple[int, int, int]:
    return (score.tp, score.fp, score.fn)


def prf(score) -> tuple[float, float, float]:
    return (round(score.precision, 2), round(score.recall, 2), round(score.f1, 2))


# --- single-entity cases ---------------------------------------------------


def test_exact_match_is_correct_for_all_three_tasks():
    # One gold (Alice, PER, B0), predicted identically: 1 tp, nothing else -> 100/100/100.
    r = run([sample("s", ent(0, 1, "PER", B0))], [sample("s", ent(0, 1, "PER", B0))])
    for s in (r.gmner, r.mner, r.eeg):
        assert counts(s) == (1, 0, 0)
        assert prf(s) == (100.0, 100.0, 100.0)


def test_wrong_type_fails_gmner_and_mner_but_not_eeg():
    # Gold (Alice, PER, None) vs predicted (Alice, LOC, None): the type differs, so
    # GMNER and MNER have 1 fp + 1 fn; EEG ignores type and both regions are None: 1 tp.
    r = run([sample("s", ent(0, 1, "PER"))], [sample("s", ent(0, 1, "LOC"))])
    assert counts(r.gmner) == (0, 1, 1)
    assert counts(r.mner) == (0, 1, 1)
    assert counts(r.eeg) == (1, 0, 0)
    assert prf(r.gmner) == (0.0, 0.0, 0.0)


def test_wrong_span_fails_every_task():
    # Gold span [0,1) vs predicted [0,2): no partial credit anywhere -> 0 tp, 1 fp, 1 fn x3.
    r = run([sample("s", ent(0, 1, "PER", B0))], [sample("s", ent(0, 2, "PER", B0))])
    for s in (r.gmner, r.mner, r.eeg):
        assert counts(s) == (0, 1, 1)


@pytest.mark.parametrize(
    ("pred_box", "threshold", "correct"),
    [
        # IoU with B0 (area 100): intersection / (100 + area - intersection)
        (Box(0, 0, 10, 5.1), 0.5, True),  # 51 / 100 = 0.51 > 0.5
        (Box(0, 0, 10, 5.0), 0.5, False),  # 50 / 100 = 0.50, not strictly greater
        (Box(0, 0, 10, 4.9), 0.5, False),  # 49 / 100 = 0.49
        (Box(0, 0, 10, 4.9), 0.4, True),  # 0.49 > 0.4: the threshold is configurable
        (Box(5, 0, 15, 10), 0.3, True),  # 50 / 150 = 0.333 > 0.3
        (Box(5, 0, 15, 10), 0.34, False),  # 0.333 < 0.34
    ],
)
def test_iou_threshold_is_strict_and_configurable(pred_box, threshold, correct):
    r = run(
        [sample("s", ent(4, 5, "LOC", B0))],
        [sample("s", ent(4, 5, "LOC", pred_box))],
        iou_threshold=threshold,
    )
    expected = (1, 0, 0) if correct else (0, 1, 1)
    assert counts(r.gmner) == expected
    assert counts(r.eeg) == expected
    assert counts(r.mner) == (1, 0, 0)  # MNER never looks at boxes
    assert r.iou_threshold == threshold


def test_multi_box_gold_entity_matches_any_of_its_boxes():
    # Gold Paris has two boxes; the prediction hits the second one only: correct.
    r = run(
        [sample("s", ent(4, 5, "LOC", B0, FAR))],
        [sample("s", ent(4, 5, "LOC", Box(50, 50, 60, 61)))],
    )  # IoU 100/110 with FAR
    assert counts(r.gmner) == (1, 0, 0)
    assert counts(r.eeg) == (1, 0, 0)


def test_multi_box_prediction_is_scored_by_its_first_box():
    gold = [sample("s", ent(4, 5, "LOC", B0))]
    # First box right, second wrong: the extra box is ignored -> correct; reported.
    good_first = run(gold, [sample("s", ent(4, 5, "LOC", B0, FAR))])
    assert counts(good_first.gmner) == (1, 0, 0)
    assert good_first.multi_box_predictions == 1
    # First box wrong, second right: only the first counts -> 1 fp + 1 fn for GMNER and
    # EEG, while MNER (no region) is still right.
    bad_first = run(gold, [sample("s", ent(4, 5, "LOC", FAR, B0))])
    assert counts(bad_first.gmner) == (0, 1, 1)
    assert counts(bad_first.eeg) == (0, 1, 1)
    assert counts(bad_first.mner) == (1, 0, 0)


def test_none_region_against_a_box_is_wrong_for_gmner_and_eeg_only():
    # Gold not groundable, prediction has a box: GMNER/EEG 0/1/1, MNER 1/0/0.
    r = run([sample("s", ent(0, 1, "PER"))], [sample("s", ent(0, 1, "PER", B0))])
    assert (counts(r.gmner), counts(r.mner), counts(r.eeg)) == ((0, 1, 1), (1, 0, 0), (0, 1, 1))
    # The other way round (gold has a box, prediction says None): same counts.
    r = run([sample("s", ent(0, 1, "PER", B0))], [sample("s", ent(0, 1, "PER"))])
    assert (counts(r.gmner), counts(r.mner), counts(r.eeg)) == ((0, 1, 1), (1, 0, 0), (0, 1, 1))


def test_none_region_against_none_is_correct():
    r = run([sample("s", ent(0, 1, "PER"))], [sample("s", ent(0, 1, "PER"))])
    assert counts(r.gmner) == counts(r.eeg) == (1, 0, 0)


# --- duplicates ------------------------------------------------------------


def test_duplicate_prediction_is_a_false_positive():
    # The same correct triple twice: one gold can be matched once -> tp 1, fp 1, fn 0.
    # P = 1/2 = 50, R = 1/1 = 100, F1 = 2*1/(2*1+1+0) = 66.67.
    r = run(
        [sample("s", ent(0, 1, "PER", B0))],
        [sample("s", ent(0, 1, "PER", B0), ent(0, 1, "PER", B0))],
    )
    for s in (r.gmner, r.mner, r.eeg):
        assert counts(s) == (1, 1, 0)
        assert prf(s) == (50.0, 100.0, 66.67)


def test_duplicates_with_different_boxes_do_not_depend_on_order():
    # A wrong-box copy listed before the right one: the best one-to-one matching still
    # finds the correct copy -> GMNER tp 1, fp 1; reversed order gives the same.
    gold = [sample("s", ent(0, 1, "PER", B0))]
    for order in ((FAR, B0), (B0, FAR)):
        r = run(gold, [sample("s", *(ent(0, 1, "PER", b) for b in order))])
        assert counts(r.gmner) == (1, 1, 0)
        assert counts(r.eeg) == (1, 1, 0)


def test_same_span_with_two_types_is_one_eeg_pair_plus_a_false_positive():
    # Predicted (Alice, PER, B0) and (Alice, LOC, B0) for gold (Alice, PER, B0):
    # GMNER/MNER: PER matches, LOC is fp -> (1,1,0). EEG sees the span+region twice:
    # one matches, the other is a duplicate -> (1,1,0).
    r = run(
        [sample("s", ent(0, 1, "PER", B0))],
        [sample("s", ent(0, 1, "PER", B0), ent(0, 1, "LOC", B0))],
    )
    assert counts(r.gmner) == counts(r.mner) == counts(r.eeg) == (1, 1, 0)


# --- empty samples and alignment -------------------------------------------


def test_empty_gold_sample_with_predictions_counts_false_positives():
    # No gold entity, two predictions: fp 2. P = 0/2 = 0; R undefined (0/0) -> 0.
    r = run([sample("s")], [sample("s", ent(0, 1, "PER"), ent(4, 5, "LOC"))])
    for s in (r.gmner, r.mner, r.eeg):
        assert counts(s) == (0, 2, 0)
        assert prf(s) == (0.0, 0.0, 0.0)


def test_empty_prediction_for_gold_sample_counts_false_negatives():
    # Two gold entities, the prediction has none: fn 2.
    r = run([sample("s", ent(0, 1, "PER"), ent(4, 5, "LOC"))], [sample("s")])
    for s in (r.gmner, r.mner, r.eeg):
        assert counts(s) == (0, 0, 2)
    assert r.missing_predictions == ()  # it was predicted, just empty


def test_both_empty_samples_add_nothing_but_are_counted():
    # s1: exact match (1 tp); s2: empty gold and empty prediction -> adds 0/0/0.
    r = run(
        [sample("s1", ent(0, 1, "PER")), sample("s2")],
        [sample("s1", ent(0, 1, "PER")), sample("s2")],
    )
    assert counts(r.gmner) == (1, 0, 0)
    assert r.n_gold_samples == r.n_pred_samples == 2
    empty = run([sample("s2")], [sample("s2")])
    assert counts(empty.gmner) == (0, 0, 0)
    assert prf(empty.gmner) == (0.0, 0.0, 0.0)


def test_gold_sample_without_prediction_is_all_missed_and_reported():
    # s1 matched (1 tp); s2 (2 gold entities) has no prediction at all -> fn 2.
    # P = 1/1 = 100, R = 1/3 = 33.33, F1 = 2/(2+0+2) = 50.
    gold = [sample("s1", ent(0, 1, "PER")), sample("s2", ent(0, 1, "PER"), ent(2, 3, "PER"))]
    r = run(gold, [sample("s1", ent(0, 1, "PER"))])
    assert counts(r.gmner) == (1, 0, 2)
    assert prf(r.gmner) == (100.0, 33.33, 50.0)
    assert r.missing_predictions == ("s2",)
    assert "s2" in r.format_table()


def test_predicted_id_missing_from_gold_is_an_error_naming_it():
    with pytest.raises(DataError, match="'ghost-7'"):
        run([sample("s1")], [sample("s1"), sample("ghost-7")])


def test_duplicate_sample_ids_are_an_error():
    with pytest.raises(DataError, match="'s1' occurs twice in the predictions"):
        run([sample("s1")], [sample("s1"), sample("s1")])
    with pytest.raises(DataError, match="'s1' occurs twice in the gold"):
        run([sample("s1"), sample("s1")], [sample("s1")])


def test_different_tokenization_is_an_error_in_span_mode_only():
    # Gold "F-35A" is one token, the prediction split it: spans are not comparable.
    gold = sample("c", ent(1, 2, "aircraft", text="F-35A"), tokens=CCKS_TOKENS)
    split = ("The", "F", "-", "35A", *CCKS_TOKENS[2:])
    pred = sample("c", Entity(1, 4, "aircraft", "F - 35A"), tokens=split)
    with pytest.raises(DataError, match=r"at token 1 .*--by-name") as err:
        run([gold], [pred])
    assert err.value.where == "sample 'c'"
    # By name "F - 35A" and "F-35A" are the same entity: tp 1.
    assert counts(run([gold], [pred], by_name=True).mner) == (1, 0, 0)


def test_invalid_iou_threshold_is_a_readable_error():
    with pytest.raises(RefinegError, match=r"\[0, 1\)"):
        run([sample("s")], [sample("s")], iou_threshold=1.0)


def test_sample_result_is_scored_by_its_entities_not_its_input_sample():
    # The result's input sample carries the gold entity; the result predicted nothing.
    # Scoring the input's entities would leak gold: the right answer is fn 1, tp 0.
    g = sample("s", ent(0, 1, "PER"))
    res = SampleResult(g, (), (Failure("refine", "timeout", "no answer"),))
    r = run([g], [res])
    assert counts(r.gmner) == (0, 0, 1)
    assert r.failed_samples == 1


# --- per-type table --------------------------------------------------------


def test_per_type_table():
    # Gold: Alice/PER, Bob/PER, Paris/LOC (no boxes). Predicted: Alice/PER, Bob/LOC, Paris/LOC.
    # PER: Alice tp, Bob missed -> tp1 fp0 fn1: P 100, R 50, F1 2/(2+0+1) = 66.67.
    # LOC: Paris tp, Bob/LOC fp -> tp1 fp1 fn0: P 50, R 100, F1 66.67.
    # Overall MNER tp2 fp1 fn1 -> 66.67 each. EEG ignores types: all 3 spans right.
    gold = [sample("s", ent(0, 1, "PER"), ent(2, 3, "PER"), ent(4, 5, "LOC"))]
    pred = [sample("s", ent(0, 1, "PER"), ent(2, 3, "LOC"), ent(4, 5, "LOC"))]
    r = run(gold, pred)
    assert set(r.per_type) == {"PER", "LOC"}
    assert counts(r.per_type["PER"].mner) == (1, 0, 1)
    assert prf(r.per_type["PER"].mner) == (100.0, 50.0, 66.67)
    assert counts(r.per_type["LOC"].mner) == (1, 1, 0)
    assert prf(r.per_type["LOC"].mner) == (50.0, 100.0, 66.67)
    assert counts(r.per_type["LOC"].gmner) == (1, 1, 0)  # regions None == None
    assert prf(r.mner) == (66.67, 66.67, 66.67)
    assert counts(r.eeg) == (3, 0, 0)
    assert r.per_type["PER"].mner.support == 2
    d = r.to_dict()
    assert d["per_type"]["PER"]["mner"] == {
        "precision": 100.0,
        "recall": 50.0,
        "f1": 66.6667,
        "tp": 1,
        "fp": 0,
        "fn": 1,
    }


def test_per_type_counts_sum_to_the_totals():
    gold = [sample("s", ent(0, 1, "PER", B0), ent(2, 3, "PER"), ent(4, 5, "LOC", B0))]
    pred = [sample("s", ent(0, 1, "PER", FAR), ent(2, 3, "ORG"), ent(4, 5, "LOC", B0))]
    r = run(gold, pred)
    for task in ("gmner", "mner"):
        rows = [getattr(row, task) for row in r.per_type.values()]
        total = r.task(task)
        assert (
            sum(s.tp for s in rows),
            sum(s.fp for s in rows),
            sum(s.fn for s in rows),
        ) == counts(total)
    # By hand: Alice box wrong, Bob type wrong, Paris right -> GMNER tp1 fp2 fn2.
    assert counts(r.gmner) == (1, 2, 2)


# --- name-based variant ----------------------------------------------------


CCKS_TOKENS = ("The", "F-35A", "flew", "past", "the", "MiG", "29", "near", "Kyiv", ".")


def test_name_based_counts_unaligned_gold_names():
    # Gold: F-35A aligned to [1,2); "MiG-29" could not be aligned (kept in meta, box B0).
    # Predicted: "f-35a" (case differs) and "MiG 29" at [5,7) with box B0.
    # By name: names are case-folded and spaces dropped, so "f-35a" == "F-35A" but
    # "MiG 29" ("mig29") != "MiG-29" ("mig-29"): GMNER tp1 fp1 fn1.
    # Same gold with the name "MiG29" unaligned: both match -> tp 2.
    def gold(unaligned_name: str) -> Sample:
        return sample(
            "c1",
            ent(1, 2, "aircraft", text="F-35A"),
            tokens=CCKS_TOKENS,
            meta={
                "unaligned": [
                    {"name": unaligned_name, "label": "aircraft", "boxes": [B0.as_list()]}
                ]
            },
        )

    pred = sample(
        "c1",
        ent(1, 2, "aircraft", text="f-35a"),
        ent(5, 7, "aircraft", B0, text="MiG 29"),
        tokens=CCKS_TOKENS,
    )
    r = run([gold("MiG-29")], [pred], by_name=True)
    assert counts(r.gmner) == (1, 1, 1)
    r = run([gold("MiG29")], [pred], by_name=True)
    assert counts(r.gmner) == counts(r.mner) == counts(r.eeg) == (2, 0, 0)
    assert r.by_name and r.gold_unaligned == 1
    # Span mode cannot score the unaligned name: F-35A tp, the MiG span is an fp, and the
    # report says one gold name was left out.
    span = run([gold("MiG29")], [pred])
    assert counts(span.gmner) == (1, 1, 0)
    assert span.gold_unaligned == 1
    assert "--by-name" in span.format_table()


def test_name_based_unaligned_region_is_scored():
    # The unaligned gold has box B0; the prediction has no box -> GMNER/EEG wrong, MNER right.
    g = sample(
        "c1",
        tokens=CCKS_TOKENS,
        meta={"unaligned": [{"name": "Kyiv", "label": "location", "boxes": [B0.as_list()]}]},
    )
    p = sample("c1", ent(8, 9, "location", text="Kyiv"), tokens=CCKS_TOKENS)
    r = run([g], [p], by_name=True)
    assert (counts(r.gmner), counts(r.mner), counts(r.eeg)) == ((0, 1, 1), (1, 0, 0), (0, 1, 1))


def test_name_based_collapses_repeated_names():
    # "Paris" is gold twice (two spans). By name it is one entity, so a prediction
    # naming it once is complete (tp 1, fn 0) and naming it three times is still one.
    toks = ("Paris", "loves", "Paris")
    paris = (Entity(0, 1, "LOC", "Paris", boxes=()), Entity(2, 3, "LOC", "Paris", boxes=()))
    gold = [sample("p", *paris, tokens=toks)]
    once = run(gold, [sample("p", Entity(2, 3, "LOC", "Paris"), tokens=toks)], by_name=True)
    assert counts(once.gmner) == (1, 0, 0)
    # By span the same prediction misses one mention: tp 1, fn 1.
    assert counts(run(gold, [sample("p", Entity(2, 3, "LOC", "Paris"), tokens=toks)]).gmner) == (
        1,
        0,
        1,
    )


def test_normalize_name():
    assert normalize_name("  F-35 A ") == normalize_name("f-35a") == "f-35a"
    assert normalize_name("ＭｉＧ") == "mig"  # full-width letters (NFKC)
    assert normalize_name("MiG-29") != normalize_name("MiG 29")


# --- hooks and rendering ---------------------------------------------------


def test_extra_metrics_from_a_hook_plugin_are_included():
    class CountPlugin:
        @hookimpl
        def refineg_extra_metrics(self, gold, predicted):
            # aligned by id: one prediction (possibly empty) per gold sample
            assert [g.id for g in gold] == [p.id for p in predicted]
            return {"n_pred_entities": np.int64(sum(len(p.entities) for p in predicted))}

    hooks = no_hooks()
    hooks.register(CountPlugin())
    gold = [sample("a", ent(0, 1, "PER")), sample("b", ent(0, 1, "PER"))]
    r = evaluate(gold, [sample("a", ent(0, 1, "PER"), ent(2, 3, "PER"))], hooks=hooks)
    assert r.extra == {"n_pred_entities": 2.0}  # 2 in "a", 0 for the missing "b"
    assert json.loads(json.dumps(r.to_dict()))["extra"] == {"n_pred_entities": 2.0}
    assert "n_pred_entities: 2" in r.format_table()
    assert evaluate(gold, gold, hooks=hooks, extra_metrics=False).extra == {}


def test_report_renders_as_table_and_json():
    r = run(
        [sample("s", ent(0, 1, "PER", B0), ent(4, 5, "LOC"))], [sample("s", ent(0, 1, "PER", B0))]
    )
    # tp 1, fp 0, fn 1 -> P 100, R 50, F1 66.67 for every task.
    table = r.format_table()
    rows = {line.split()[0]: line.split()[1:] for line in table.splitlines() if line.strip()}
    want = ["100.00", "50.00", "66.67", "1", "0", "1"]
    assert rows["GMNER"] == rows["MNER"] == rows["EEG"] == want
    d = json.loads(json.dumps(r.to_dict()))
    assert d["gmner"] == {
        "precision": 100.0,
        "recall": 50.0,
        "f1": 66.6667,
        "tp": 1,
        "fp": 0,
        "fn": 1,
    }
    assert d["protocol"]["identity"] == "span"


# --- real data --------------------------------------------------------------


def test_twitter_dev_against_itself_is_perfect(twitter_dir: Path):
    dev = load_dataset(twitter_dir / "dev.txt").samples
    n = sum(len(s.entities) for s in dev)
    for by_name in (False, True):
        r = run(dev, dev, by_name=by_name)
        for s in (r.gmner, r.mner, r.eeg):
            assert prf(s) == (100.0, 100.0, 100.0)
            assert s.fp == s.fn == 0
        if not by_name:
            assert r.gmner.tp == n


def _perturb(dev: list[Sample]) -> tuple[list[Sample], dict[str, int]]:
    """Change every entity by its running index i and count what was changed.

    i % 10 == 9: dropped; == 2: type changed; == 4 and boxed: box replaced by a
    1x1 box at the origin (IoU <= 1/area < 0.5 with any real box); == 6 and not
    boxed: a box added.
    """
    other = {"PER": "LOC", "LOC": "ORG", "ORG": "OTHER", "OTHER": "PER"}
    tiny = Box(0, 0, 1, 1)
    n = {"all": 0, "dropped": 0, "retyped": 0, "box_broken": 0, "box_added": 0}
    out = []
    i = 0
    for s in dev:
        kept = []
        for e in s.entities:
            n["all"] += 1
            k, i = i % 10, i + 1
            if k == 9:
                n["dropped"] += 1
                continue
            if k == 2:
                n["retyped"] += 1
                e = attrs.evolve(e, type=other[e.type])
            elif k == 4 and e.boxes:
                assert all(b.area > 2 for b in e.boxes)  # premise of the IoU bound
                n["box_broken"] += 1
                e = attrs.evolve(e, boxes=(tiny,))
            elif k == 6 and not e.boxes:
                n["box_added"] += 1
                e = attrs.evolve(e, boxes=(tiny,))
            kept.append(e)
        out.append(attrs.evolve(s, entities=tuple(kept)))
    return out, n


def test_twitter_dev_perturbed_gives_hand_derived_counts(
    twitter_dir: Path, tmp_path: Path, core_hooks_only
):
    dev = list(load_dataset(twitter_dir / "dev.txt").samples)
    pred, n = _perturb(dev)
    region = n["box_broken"] + n["box_added"]
    assert min(n.values()) > 0
    # dropped: fn everywhere; retyped: fp+fn in GMNER/MNER, still right in EEG;
    # broken/added box: fp+fn in GMNER/EEG, still right in MNER.
    expected = {
        "gmner": (
            n["all"] - n["dropped"] - n["retyped"] - region,
            n["retyped"] + region,
            n["dropped"] + n["retyped"] + region,
        ),
        "mner": (n["all"] - n["dropped"] - n["retyped"], n["retyped"], n["dropped"] + n["retyped"]),
        "eeg": (n["all"] - n["dropped"] - region, region, n["dropped"] + region),
    }
    r = run(dev, pred)
    for task, want in expected.items():
        assert counts(r.task(task)) == want, task
    # The same numbers through `refineg eval`, with the predictions as native JSONL.
    pred_file = tmp_path / "pred.jsonl"
    write_jsonl(pred, pred_file)
    out = tmp_path / "report.json"
    res = run_cli(
        [
            "eval",
            "--gold",
            str(twitter_dir / "dev.txt"),
            "--pred",
            str(pred_file),
            "--json",
            str(out),
        ]
    )
    assert res.code == 0, res.stderr
    report = json.loads(out.read_text())
    for task, want in expected.items():
        assert (report[task]["tp"], report[task]["fp"], report[task]["fn"]) == want
        assert task.upper() in res.stdout


@pytest.fixture
def core_hooks_only(monkeypatch):
    """The CLI uses the process-wide hooks: load none, so only core numbers are compared."""
    monkeypatch.setenv("REFINEG_HOOK_PLUGINS", "")
    get_hooks.cache_clear()
    yield
    get_hooks.cache_clear()


def test_cli_eval_twitter_dev_against_itself(twitter_dir: Path, tmp_path: Path, core_hooks_only):
    dev = str(twitter_dir / "dev.txt")
    out = tmp_path / "r.json"
    res = run_cli(["eval", "--gold", dev, "--pred", dev, "--json", str(out), "--iou", "0.7"])
    assert res.code == 0, res.stderr
    rows = {line.split()[0]: line.split()[1:4] for line in res.stdout.splitlines() if line.strip()}
    assert rows["GMNER"] == rows["MNER"] == rows["EEG"] == ["100.00", "100.00", "100.00"]
    report = json.loads(out.read_text())
    assert report["protocol"]["iou_threshold"] == 0.7
    assert report["gmner"]["f1"] == report["mner"]["f1"] == report["eeg"]["f1"] == 100.0


def test_cli_eval_unknown_prediction_id_is_one_line(tmp_path: Path, core_hooks_only):
    gold, pred = tmp_path / "gold.jsonl", tmp_path / "pred.jsonl"
    write_jsonl([sample("s1", ent(0, 1, "PER"))], gold)
    write_jsonl([sample("s1"), sample("nope-3")], pred)
    res = run_cli(["eval", "--gold", str(gold), "--pred", str(pred)])
    assert res.code == 2
    assert "'nope-3'" in res.stderr and "Traceback" not in res.stderr
    missing = run_cli(["eval", "--gold", str(tmp_path / "absent.txt"), "--pred", str(pred)])
    assert missing.code == 2 and "absent.txt" in missing.stderr
