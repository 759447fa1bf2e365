"""Config validation, plugin discovery/loading and the error messages users see."""

import textwrap

import pytest

from refineg_core import registry
from refineg_core.config import load_config, redacted_dump
from refineg_core.errors import ConfigError, PluginError
from refineg_core.interfaces import PluginOptions, UncertaintyEstimator
from refineg_core.testing import fake_distribution, register_plugin
from refineg_core.types import GateDecision

BASE = """
run_dir = "runs/x"
[labels]
PER = "a person"
LOC = "a place"
"""


def write(tmp_path, body, name="c.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(BASE + body), encoding="utf-8")
    return path


class KeepAll(UncertaintyEstimator):
    class Options(PluginOptions):
        threshold: float = 0.5

    def decide(self, samples, predictions):
        return [GateDecision(s.id, s.entities, (), 0.0, False) for s in samples]


def test_minimal_config_resolves_paths_relative_to_file(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.txt").write_text("Obama\tB-PER\n", encoding="utf-8")
    cfg = load_config(write(tmp_path, '[data.train]\npath = "d/train.txt"\n'), check_plugins=False)
    assert cfg.run_dir == tmp_path / "runs" / "x"
    assert cfg.data.train.path == tmp_path / "d" / "train.txt"
    assert cfg.label_set.types == ("PER", "LOC")


def test_missing_input_path_is_reported_at_load_with_where_it_resolved(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, '[data.dev]\npath = "../nope/dev.txt"\n'), check_plugins=False)
    assert "data.dev.path" in str(exc.value)
    assert str(tmp_path.parent / "nope" / "dev.txt") in str(exc.value)


def test_stage_settings_are_validated_at_load(tmp_path):
    with pytest.raises(ConfigError, match=r"refine.promt"):
        load_config(write(tmp_path, '[refine]\npromt = "x"\n'), check_plugins=False)
    with pytest.raises(ConfigError, match=r"ground.k"):
        load_config(write(tmp_path, '[ground]\nk = "abc"\n'), check_plugins=False)
    with pytest.raises(ConfigError, match=r"ground.kk"):
        load_config(write(tmp_path, "[ground]\nkk = 3\n"), check_plugins=False)
    with pytest.raises(ConfigError, match=r"refine.prompt"):
        load_config(
            write(tmp_path, '[refine]\nprompt = "$text $candidates $nosuch"\n'), check_plugins=False
        )


def test_unknown_key_names_its_dotted_path(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_config(
            write(tmp_path, '[data.train]\npath = "x"\nlimt = 3\n'),
            check_plugins=False,
            check_paths=False,
        )
    assert "data.train.limt" in str(exc.value)


def test_wrong_type_names_its_dotted_path(tmp_path):
    with pytest.raises(ConfigError, match=r"stages.refine"):
        load_config(write(tmp_path, '[stages]\nrefine = "often"\n'), check_plugins=False)


def test_toml_syntax_error_is_one_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[labels\nPER = 1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="TOML syntax error"):
        load_config(path)


def test_overrides_are_parsed_as_toml(tmp_path):
    cfg = load_config(
        write(tmp_path, ""),
        ["stages.refine=false", "uncertainty.options.threshold=0.3", "run_dir=elsewhere"],
        check_plugins=False,
    )
    assert cfg.stages.refine is False
    assert cfg.uncertainty.options == {"threshold": 0.3}
    assert cfg.run_dir == tmp_path / "elsewhere"


def test_unknown_plugin_lists_available_names(tmp_path):
    with pytest.raises(PluginError) as exc:
        load_config(write(tmp_path, '[uncertainty]\nplugin = "entropyy"\n'))
    msg = str(exc.value)
    assert "uncertainty.plugin" in msg and "'entropyy' is not installed" in msg
    assert "entropy" in msg.split("available:")[1]


def test_plugin_option_typo_names_dotted_path_and_valid_options(tmp_path):
    with register_plugin("uncertainty", "keep_all", KeepAll):
        with pytest.raises(PluginError) as exc:
            load_config(
                write(
                    tmp_path,
                    '[uncertainty]\nplugin = "keep_all"\n[uncertainty.options]\nthreshhold = 1\n',
                )
            )
        assert "uncertainty.options.threshhold" in str(exc.value)
        assert "valid options: threshold" in str(exc.value)
        cfg = load_config(
            write(
                tmp_path,
                '[uncertainty]\nplugin = "keep_all"\n[uncertainty.options]\nthreshold = 1\n',
            )
        )
        gate = registry.create("uncertainty", "keep_all", cfg.uncertainty.options, cfg.label_set)
        assert gate.options.threshold == 1.0


def test_secrets_are_redacted_but_env_names_kept(tmp_path):
    with register_plugin("uncertainty", "keep_all", KeepAll):
        cfg = load_config(
            write(
                tmp_path,
                '[backend]\nplugin = "x"\n[backend.options]\napi_key = "sk-123"\n'
                'api_key_env = "MY_KEY"\n',
            ),
            check_plugins=False,
        )
    dumped = redacted_dump(cfg)
    assert dumped["backend"]["options"] == {"api_key": "***", "api_key_env": "MY_KEY"}
    assert "sk-123" not in str(dumped)


def test_entry_point_from_an_installed_distribution_is_found_and_loaded(tmp_path):
    source = textwrap.dedent("""
        from refineg_core.interfaces import UncertaintyEstimator
        from refineg_core.types import GateDecision

        class Never(UncertaintyEstimator):
            def decide(self, samples, predictions):
                return [GateDecision(s.id, s.entities, (), 0.0, False) for s in samples]
    """)
    with fake_distribution(
        tmp_path / "site",
        "refineg-never",
        "1.2.3",
        {"refineg.uncertainty": {"never": "never_gate:Never"}},
        {"never_gate": source},
    ):
        rows = {
            (p.name, p.distribution, p.version) for p in registry.installed("refineg.uncertainty")
        }
        assert ("never", "refineg-never", "1.2.3") in rows
        cls = registry.load_class("uncertainty", "never")
        assert issubclass(cls, UncertaintyEstimator) and cls.__name__ == "Never"
    assert "never" not in registry.available_names("refineg.uncertainty")


def test_plugin_import_error_is_loud_and_names_the_distribution(tmp_path):
    with (
        fake_distribution(
            tmp_path / "site",
            "refineg-broken",
            "0.1",
            {"refineg.taggers": {"broken": "broken_tagger:Tagger"}},
            {"broken_tagger": "import a_module_that_does_not_exist\n"},
        ),
        pytest.raises(PluginError) as exc,
    ):
        registry.load_class("tagger", "broken")
    msg = str(exc.value)
    assert "refineg-broken 0.1" in msg and "a_module_that_does_not_exist" in msg


def test_plugin_of_wrong_kind_is_rejected(tmp_path):
    with (
        fake_distribution(
            tmp_path / "site",
            "refineg-wrong",
            "0.1",
            {"refineg.taggers": {"wrong": "wrong_kind:Thing"}},
            {"wrong_kind": "class Thing:\n    pass\n"},
        ),
        pytest.raises(PluginError, match="not a Tagger subclass"),
    ):
        registry.load_class("tagger", "wrong")


def test_every_builtin_is_registered_through_entry_points():
    rows = {(p.group, p.name): p for p in registry.installed()}
    for key in [
        ("refineg.taggers", "bert_crf"),
        ("refineg.uncertainty", "entropy"),
        ("refineg.mllm_backends", "openai"),
        ("refineg.mllm_backends", "qwen_vl"),
        ("refineg.mllm_backends", "local_text"),
        ("refineg.context_selectors", "clip_similarity"),
        ("refineg.synthesizers", "llm"),
    ]:
        assert rows[key].distribution == "refineg"
