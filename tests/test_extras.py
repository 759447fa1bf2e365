"""A tagger's extras travel in one declared mapping, checked where they are made.

``TaggerPrediction.extras`` accepts only names of ``refineg_core.extras.EXTRAS``
with the shape the table gives; a gate declares what it needs, a tagger what
its options make it report, and a run refuses a gate its tagger cannot feed
before it trains anything, naming both plugins.
"""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
from refineg_entropy.gate import EntropyGate
from refineg_gates.sampling import EnsembleMIGate, MCDropoutGate
from refineg_gates.span import SpanGate

from refineg_core.config import load_config
from refineg_core.errors import DataError, PluginError
from refineg_core.extras import EXTRAS, check_supply
from refineg_core.interfaces import PluginOptions, Tagger
from refineg_core.pipeline.context import RunContext
from refineg_core.testing import register_plugin
from refineg_core.types import TaggerPrediction

LABELS = ("O", "B-PER", "I-PER")


def pred(n: int, extras=None) -> TaggerPrediction:
    marginals = np.tile([1.0, 0.0, 0.0], (n, 1))
    return TaggerPrediction("tweet-7", ("O",) * n, LABELS, marginals, extras)


def test_every_declared_extra_round_trips_with_its_shape():
    shapes = {
        "member_marginals": (2, 4, 3),
        "dropout_marginals": (5, 4, 3),
        "transition_marginals": (3, 3, 3),
        "member_transition_marginals": (2, 3, 3, 3),
    }
    assert set(shapes) == set(EXTRAS)  # a new row in the table needs a case here
    arrays = {name: np.zeros(shape) for name, shape in shapes.items()}
    p = pred(4, arrays)
    for name in shapes:
        assert p.extra(name) is arrays[name]
    assert pred(4).extra("transition_marginals") is None
    # No tokens: no pairs, and a stack of M estimates of nothing.
    assert pred(0, {"transition_marginals": np.zeros((0, 3, 3))}).extra(
        "transition_marginals"
    ).shape == (0, 3, 3)


def test_an_unknown_extra_is_refused_naming_the_sample_and_the_key():
    with pytest.raises(DataError, match="unknown extra 'transitions'") as exc:
        pred(2, {"transitions": np.zeros((1, 3, 3))})
    assert "tweet-7" in str(exc.value)
    with pytest.raises(KeyError, match="not a declared extra"):
        pred(2).extra("member_marginal")  # a reader's typo is not "not reported"


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("transition_marginals", (2, 3, 3)),  # 2 tokens have 1 pair
        ("member_marginals", (2, 3)),  # the stack axis is missing
        ("member_marginals", (0, 2, 3)),  # a stack of no member
        ("dropout_marginals", (3, 2, 4)),  # 4 labels for a 3-label tagger
        ("member_transition_marginals", (1, 3, 3)),
    ],
)
def test_a_misshapen_extra_is_refused_naming_the_sample_the_key_and_the_shape(name, shape):
    with pytest.raises(DataError) as exc:
        pred(2, {name: np.zeros(shape)})
    message = str(exc.value)
    assert "tweet-7" in message and repr(name) in message and str(shape) in message


def test_a_list_is_not_an_array():
    with pytest.raises(DataError, match="not a numpy array"):
        pred(1, {"member_marginals": [[[1.0, 0.0, 0.0]]]})


def test_the_prediction_keeps_its_own_copy_of_the_mapping():
    extras = {"transition_marginals": np.zeros((1, 3, 3))}
    p = pred(2, extras)
    extras["member_marginals"] = np.zeros((7, 9))  # would be refused if it got in
    assert set(p.extras) == {"transition_marginals"}


def test_gates_declare_what_they_read():
    assert SpanGate.needs_extras == ("transition_marginals",)
    assert EnsembleMIGate.needs_extras == ("member_marginals",)
    assert MCDropoutGate.needs_extras == ("dropout_marginals",)
    assert EntropyGate.needs_extras == ()


def test_bert_crf_reports_extras_by_its_options():
    bert_crf = pytest.importorskip("refineg_bert_crf.tagger", reason="pip install 'refineg[bert]'")
    cls = bert_crf.BertCrfTagger
    assert cls.supplied_extras(cls.Options()) == {"transition_marginals"}
    assert cls.supplied_extras(cls.Options(ensemble_size=2, epochs=2)) == {
        "transition_marginals",
        "member_marginals",
        "member_transition_marginals",
    }
    assert "dropout_marginals" in cls.supplied_extras(cls.Options(mc_dropout_samples=3))


def test_check_supply_names_both_plugins_and_what_is_missing():
    check_supply(["transition_marginals"], {"transition_marginals"}, gate="span", tagger="t")
    with pytest.raises(PluginError) as exc:
        check_supply(
            ["member_marginals"], {"transition_marginals"}, gate="ensemble_mi", tagger="bert_crf"
        )
    message = str(exc.value)
    assert "'ensemble_mi'" in message and "'bert_crf'" in message
    assert "['member_marginals']" in message and "transition_marginals" in message
    with pytest.raises(PluginError, match="unknown extras"):
        check_supply(["member_marginal"], set(), gate="g", tagger="t")


class _Marginals(Tagger):
    """A tagger that reports marginals only (its other methods are never reached)."""

    class Options(PluginOptions):
        members: int = 1

    @classmethod
    def supplied_extras(cls, options):
        return frozenset({"member_marginals"}) if options.members > 1 else frozenset()

    def fit(self, train, dev=None):
        raise AssertionError("a refused gate must stop the run before training")

    predict = save = fit

    @classmethod
    def load(cls, directory, options=None, labels=None):
        raise AssertionError("never loaded")


def _context(tmp_path, gate: str, members: int) -> RunContext:
    path = tmp_path / "c.toml"
    path.write_text(
        textwrap.dedent(f"""
        run_dir = "run"
        [labels]
        PER = "a person"
        [tagger]
        plugin = "marginals_only"
        [tagger.options]
        members = {members}
        [uncertainty]
        plugin = "{gate}"
        """),
        encoding="utf-8",
    )
    return RunContext(load_config(path, check_plugins=False), tmp_path / "cache")


def test_the_run_refuses_a_gate_its_tagger_cannot_feed(tmp_path):
    with register_plugin("tagger", "marginals_only", _Marginals):
        with pytest.raises(PluginError) as exc:
            _context(tmp_path, "ensemble_mi", members=1).gate()
        assert "'ensemble_mi'" in str(exc.value) and "'marginals_only'" in str(exc.value)
        assert exc.value.where == "uncertainty.plugin"
        # The same gate with options that make the tagger report the extra: built.
        assert isinstance(_context(tmp_path, "ensemble_mi", members=2).gate(), EnsembleMIGate)
        assert isinstance(_context(tmp_path, "entropy", members=1).gate(), EntropyGate)


def test_a_gate_that_declares_an_unknown_extra_is_refused_when_it_loads(tmp_path):
    class Typo(EntropyGate):
        needs_extras = ("transition_marginal",)

    with (
        register_plugin("uncertainty", "typo", Typo),
        register_plugin("tagger", "marginals_only", _Marginals),
        pytest.raises(PluginError, match="unknown extras \\['transition_marginal'\\]"),
    ):
        _context(tmp_path, "typo", members=1).gate()
