"""A plugin that crashes is named: which plugin (kind and name), which distribution
and version shipped it, and where in its code it happened; and the exit code says
"a plugin failed", not "refineg has a bug"."""

from __future__ import annotations

import textwrap

from refineg_core.testing import fake_distribution, run_cli

BRITTLE = textwrap.dedent("""
    import re
    from refineg_core.interfaces import Tagger

    class BrittleTagger(Tagger):
        def fit(self, train, dev=None):
            return {"pattern": self._pattern()}

        def _pattern(self):
            return re.compile("[")  # unterminated character set

        def predict(self, samples):
            return []

        def save(self, directory):
            pass

        @classmethod
        def load(cls, directory, options=None, labels=None):
            return cls(options, labels)
""")


def _config(tmp_path, twitter_dir) -> str:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        textwrap.dedent(f'''
        run_dir = "{tmp_path / "run"}"
        [labels]
        PER = "person"
        LOC = "place"
        ORG = "org"
        OTHER = "other"
        [data.train]
        path = "{twitter_dir / "dev.txt"}"
        limit = 5
        [tagger]
        plugin = "brittle"
        '''),
        encoding="utf-8",
    )
    return str(cfg)


def test_a_crash_inside_a_third_party_plugin_names_the_plugin_and_where(tmp_path, twitter_dir):
    with fake_distribution(
        tmp_path / "site",
        "refineg-brittle",
        "1.2.3",
        {"refineg.taggers": {"brittle": "brittle_tagger:BrittleTagger"}},
        {"brittle_tagger": BRITTLE},
    ):
        result = run_cli(["train", "-c", _config(tmp_path, twitter_dir)])
    assert result.code == 4, result.stderr
    (line,) = [ln for ln in result.stderr.splitlines() if ln.startswith("refineg:")]
    assert "tagger plugin 'brittle'" in line
    assert "refineg-brittle 1.2.3" in line
    assert "brittle_tagger.py:" in line and "_pattern" in line
    assert "unterminated character set" in line and "error" in line
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()  # a failed command leaves no half-made run


def test_debug_shows_the_traceback_of_a_plugin_crash(tmp_path, twitter_dir):
    with fake_distribution(
        tmp_path / "site",
        "refineg-brittle",
        "1.2.3",
        {"refineg.taggers": {"brittle": "brittle_tagger:BrittleTagger"}},
        {"brittle_tagger": BRITTLE},
    ):
        result = run_cli(["train", "-c", _config(tmp_path, twitter_dir), "--debug"])
    assert result.code == 4
    assert "Traceback" in result.stderr and "refineg-brittle 1.2.3" in result.stderr


def test_a_crash_in_the_core_is_still_a_bug_of_refineg():
    from refineg_core.blame import blame

    try:
        int("x")  # raised here, in a test module: no plugin on the stack
    except ValueError as exc:
        assert blame(exc) is None


BRITTLE_BACKEND = textwrap.dedent("""
    from refineg_core.interfaces import MLLMBackend

    class BrittleBackend(MLLMBackend):
        def complete(self, request):
            return {}["choices"]  # KeyError inside the plugin
""")


def test_a_plugin_crash_inside_a_stage_is_a_sample_failure_naming_the_plugin(tmp_path):
    import attrs
    from refineg_stages.refine import RefineSettings, run_refine

    from refineg_core.registry import create
    from refineg_core.types import SOURCE_TAGGER, Entity, GateVerdict, Sample
    from tests.stagedata import LABELS, prediction

    sample = Sample("s1", ("Obama", "visits", "Paris"), "Obama visits Paris")
    with fake_distribution(
        tmp_path / "site",
        "refineg-brittle-backend",
        "0.9",
        {"refineg.mllm_backends": {"brittle": "brittle_backend:BrittleBackend"}},
        {"brittle_backend": BRITTLE_BACKEND},
    ):
        backend = create("backend", "brittle", {}, LABELS)
        pred = prediction(sample, uncertainty=[])
        ent = Entity(0, 1, "PER", "Obama", source=SOURCE_TAGGER, uncertainty=0.9)
        pred = attrs.evolve(
            pred, entities=(ent,), gate=GateVerdict(True, 0.0, frozenset({ent.key}))
        )
        [res], _ = run_refine([pred], backend, LABELS, RefineSettings(), tmp_path / "refine.jsonl")
    (failure,) = res.failures
    assert "backend plugin 'brittle' from refineg-brittle-backend 0.9" in failure.message
    assert "brittle_backend.py:" in failure.message and "KeyError" in failure.message
    assert res.entities == (ent,)  # the tagger's entity is kept
